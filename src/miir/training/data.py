"""From an artifact to tensors: training windows and evaluation histories.

This is the one path from files to tensors. Everything is built once, as whole tensors, when a
run starts; a batch is an index slice (no per-step Python work beyond the index list).

Padding costs compute: amazon-beauty's training windows hold 6.5 items on average out of 20.
``miir train`` packs each batch's windows into shared rows by default
(:func:`miir.models.miir.pack_windows`); with ``batching='buckets'``, :class:`LengthBuckets`
orders each epoch so that a batch holds windows of similar length and
:func:`miir.models.miir.trim_left_padding` drops the columns that are padding in every row.
Rows are right-aligned and the model counts positions from the right, so neither changes the
loss of a window.

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
from torch.utils.data import Dataset, Sampler

from miir.data.artifact import Artifact


def _right_aligned(seqs: list[np.ndarray], width: int, dtype: type = np.int64) -> np.ndarray:
    out = np.zeros((len(seqs), width), dtype=dtype)  # (R, width), 0 = padding
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


def row_lengths(items: Tensor) -> Tensor:
    """(R, n) right-aligned rows -> (R,) number of non-padding items."""
    return (items != 0).sum(1)


class LengthBuckets(Sampler[int]):
    """An epoch's order of the rows in which every run of ``batch_size`` consecutive rows has
    similar lengths, for :func:`~miir.models.miir.trim_left_padding` to cut.

    Each epoch (seeded by ``seed`` and the epoch): shuffle the rows, cut them into pools of
    ``pool_batches`` batches, sort each pool by length, cut it into batches, and shuffle the
    order of the batches. Every row is seen once per epoch, and a batch is a random draw among
    rows of similar length. The one short batch (when ``batch_size`` does not divide the rows)
    comes last, so that a ``DataLoader`` with the same ``batch_size`` cuts exactly these
    batches. Under DDP, Lightning wraps this sampler and deals its order out to the ranks (rank
    r takes every W-th row), so each rank's batches are still of similar length."""

    def __init__(self, lengths: Tensor, batch_size: int, seed: int, pool_batches: int = 50) -> None:
        if batch_size < 1 or pool_batches < 1:
            raise ValueError("batch_size and pool_batches must be positive")
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.pool = batch_size * pool_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[Tensor]:
        """This epoch's batches of row indices, in order."""
        seed = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]
        gen = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(len(self.lengths), generator=gen)
        full: list[Tensor] = []
        short: list[Tensor] = []
        for start in range(0, len(perm), self.pool):
            pool = perm[start : start + self.pool]
            pool = pool[torch.argsort(self.lengths[pool], stable=True)]
            for b in pool.split(self.batch_size):
                (full if len(b) == self.batch_size else short).append(b)
        order = torch.randperm(len(full), generator=gen).tolist()
        return [full[i] for i in order] + short

    def __iter__(self):
        return iter(torch.cat(self.batches()).tolist())


#: dtype of :class:`EvalRows`' wide id tables (an item id fits: catalogues stay below 2**31)
WIDE_ID_DTYPE = np.int32


@dataclass
class EvalRows:
    """Evaluation inputs of one stage: (U, max_len - 1) histories, (U,) targets, (U, K)
    negatives, and (U, S) every earlier item of each user, 0-padded (the ``full_masked``
    protocol removes them from the ranking).

    The two wide tables, ``negatives`` and ``seen``, hold item ids as int32
    (:data:`WIDE_ID_DTYPE`): on amazon-beauty they are 50 MiB of int64 per split (``seen`` is
    as wide as the longest history, 202 items), resident through every validation epoch of a
    training run (issue 9: memory); evaluation widens them per chunk where they index
    (:class:`miir.evaluation.evaluate.ProtocolRanks`)."""

    history: Tensor
    target: Tensor
    negatives: Tensor
    users: Tensor
    seen: Tensor

    def __len__(self) -> int:
        return len(self.target)


def eval_rows(artifact: Artifact, stage: str, max_len: int) -> EvalRows:
    targets, negatives = artifact.split(stage)
    cut = 2 if stage == "valid" else 1
    hist = [artifact.sequence(u)[:-cut] for u in range(artifact.n_users)]
    longest = max((len(h) for h in hist), default=0)
    return EvalRows(
        history=torch.from_numpy(_right_aligned(hist, max_len - 1)),
        target=torch.from_numpy(targets.astype(np.int64)),
        negatives=torch.from_numpy(negatives.astype(WIDE_ID_DTYPE)),
        users=torch.arange(artifact.n_users),
        seen=torch.from_numpy(_right_aligned(hist, max(longest, 1), WIDE_ID_DTYPE)),
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
