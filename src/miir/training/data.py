"""From an artifact to tensors: training windows and evaluation histories.

This is the one path from files to tensors. Everything is built once, as whole tensors, when a
run starts; a batch is an index slice (no per-step Python work beyond the index list).

- Training rows: each user's training part (the sequence without its last two items) cut into
  windows of ``max_len`` items, the newest window first, stepping back ``stride`` items
  (``stride = max_len``: non-overlapping windows, as in the authors' code; ``stride = 1``:
  every suffix). Windows are right-aligned: padding (id 0) on the left.
- Evaluation rows: the last ``max_len - 1`` items before the target (the model appends the
  query item itself), the target, and its saved negatives. Validation targets the
  second-to-last item, test the last item, whose history includes the validation item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from miir.data.artifact import Artifact


def _right_aligned(seqs: list[np.ndarray], width: int) -> np.ndarray:
    out = np.zeros((len(seqs), width), dtype=np.int64)  # (R, width), 0 = padding
    for r, s in enumerate(seqs):
        s = s[-width:]
        if len(s):
            out[r, width - len(s) :] = s
    return out


def training_windows(
    artifact: Artifact, max_len: int, stride: int | None = None, min_items: int = 2
) -> Tensor:
    """(R, max_len) item ids of the training windows, right-aligned."""
    stride = stride or max_len
    windows: list[np.ndarray] = []
    for u in range(artifact.n_users):
        train = artifact.sequence(u)[:-2]
        end = len(train)
        while end >= min_items:
            windows.append(train[max(0, end - max_len) : end])
            if end - max_len <= 0:
                break
            end -= stride
    return torch.from_numpy(_right_aligned(windows, max_len))


@dataclass
class EvalRows:
    """Evaluation inputs of one stage: (U, max_len - 1) histories, (U,) targets, (U, K) negatives."""

    history: Tensor
    target: Tensor
    negatives: Tensor
    users: Tensor

    def __len__(self) -> int:
        return len(self.target)


def eval_rows(artifact: Artifact, stage: str, max_len: int) -> EvalRows:
    targets, negatives = artifact.split(stage)
    cut = 2 if stage == "valid" else 1
    hist = [artifact.sequence(u)[:-cut] for u in range(artifact.n_users)]
    return EvalRows(
        history=torch.from_numpy(_right_aligned(hist, max_len - 1)),
        target=torch.from_numpy(targets.astype(np.int64)),
        negatives=torch.from_numpy(negatives.astype(np.int64)),
        users=torch.arange(artifact.n_users),
    )


class TensorRows(Dataset):
    """Rows of a tensor; ``__getitems__`` returns a whole batch with one indexing operation."""

    def __init__(self, *tensors: Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        return tuple(t[i] for t in self.tensors)

    def __getitems__(self, idx: list[int]) -> tuple[Tensor, ...]:
        index = torch.as_tensor(idx)
        return tuple(t[index] for t in self.tensors)


def collate_rows(batch: tuple[Tensor, ...] | list) -> tuple[Tensor, ...]:
    """Collate for :class:`TensorRows`: batches arrive already stacked from ``__getitems__``."""
    if isinstance(batch, tuple):
        return batch
    return tuple(torch.stack(col) for col in zip(*batch, strict=True))


def item_tables(
    artifact: Artifact, names: list[str]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The observed side-information tables of ``names`` as tensors (rows = item ids)."""
    present, values = {}, {}
    for name in names:
        fd = artifact.fields[name]
        present[name] = torch.from_numpy(np.array(fd.present, dtype=bool))
        v = np.asarray(fd.values)
        values[name] = torch.from_numpy(v.astype(np.float32 if v.dtype.kind == "f" else np.int64))
    return present, values
