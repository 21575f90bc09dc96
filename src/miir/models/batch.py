"""One batch type for every model, and the one place for batch transforms.

Training rows are right-aligned windows of item ids (padding 0 on the left; positions count
from the right). Two transforms give the same loss on fewer tokens:

- :func:`trim_left_padding` cuts the columns that are padding in every row;
- :func:`pack_windows` packs the windows of a batch into shared rows (first-fit decreasing);
  each window keeps its positions, and a model that supports packing lets a slot attend only
  to its own window (:meth:`Batch.same_window`) and normalises its loss per window.

:func:`make_batch` applies the one a model supports. Masks are drawn by the model from the
pure functions of :mod:`miir.models.masking`, with the generator the trainer passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from miir.data.schema import MISSING_ID

BatchMode = Literal["packed", "trim", "none"]


#: trimmed batches keep a multiple of this many columns (:func:`trim_left_padding`): evaluation
#: scores histories sorted by length, and a width for every length gave oneDNN a set of
#: primitives per width (their JIT-compiled kernels stay cached: bench/results/memory.md); 1: off
TRIM_BLOCK = 4


def trim_left_padding(items: Tensor, block: int | None = None) -> Tensor:
    """(B, n) right-aligned rows -> (B, m): without the leading columns that are padding (0) in
    every row, keeping a multiple of ``block`` columns (default :data:`TRIM_BLOCK`; at most n),
    so that the widths of trimmed batches take a few sizes. Positions count from the right, so
    the model computes the same thing on fewer tokens. A batch of only padding keeps no column."""
    block = TRIM_BLOCK if block is None else block
    n = items.shape[1]
    if n == 0:
        return items
    filled = (items != 0).any(0)  # (n,)
    if bool(filled[0]):
        return items
    first = int(filled.to(torch.int8).argmax()) if bool(filled.any()) else n
    keep = min(n, -(-(n - first) // block) * block)
    return items[:, n - keep :]


@dataclass
class Packing:
    """Where the windows of a batch sit once :func:`pack_windows` has packed them into shared
    rows: each slot's position id and window, and where it came from."""

    positions: Tensor  # (R, n) position id of each slot (0 in empty slots)
    windows: Tensor  # (R, n) index of the window a slot holds, -1 in empty slots
    source: Tensor  # (R, n) flat index into the (B, n) input of the slot's item, -1 if empty
    n_windows: int

    def move(self, values: Tensor) -> Tensor:
        """Per-position values of the unpacked (B, n, ...) batch (masks, for instance) moved
        to their packed slots: (R, n, ...), zero (False) in empty slots."""
        out = values.new_zeros((*self.source.shape, *values.shape[2:]))
        filled = self.source >= 0
        out[filled] = values.reshape(-1, *values.shape[2:])[self.source[filled]]
        return out


def padded_rows(m: int) -> int:
    """``m`` rounded up to one of a few sizes: a multiple of 2^(b - 3), b the bit length of
    ``m`` (of 8 below 64), so at most a quarter more rows and four sizes per doubling.
    Inference's compact pass pads its token rows to it: oneDNN keeps a primitive (and its
    JIT-compiled kernel) per matmul shape, and a row count per evaluation chunk filled its
    cache (bench/results/memory.md)."""
    step = max(8, 1 << max(0, m.bit_length() - 3))
    return -(-m // step) * step


#: packed batches have a multiple of this many rows (the last ones empty), so that a step's
#: matrix shapes take one of a few sizes (see :data:`SELECT_BLOCK`); 1: off
ROW_BLOCK = 4


#: training losses gather their supervised positions in blocks of this many (the last block
#: filled with repeats weighted 0), so a step's loss matmuls take one of a few shapes: oneDNN
#: keeps a primitive per shape, and a new size at every step grew training memory by about
#: 10 MB a step, to 2.6 GB (bench/results/shapes.md); 1 turns the blocks off
SELECT_BLOCK = 64


def append_query(history: Tensor, n_fields: int) -> tuple[Tensor, Tensor]:
    """``[history, query]``: (B, L) right-aligned item ids -> (B, L + 1) ids with the
    all-missing query item appended (id 1: nothing about the target is looked up) and
    (B, L + 1, ``n_fields``) hidden flags, every field of the query hidden, nothing else."""
    B, L = history.shape
    query = torch.full((B, 1), MISSING_ID, dtype=history.dtype, device=history.device)
    items = torch.cat([history, query], dim=1)
    hidden = torch.zeros(B, L + 1, n_fields, dtype=torch.bool, device=history.device)
    hidden[:, -1] = True
    return items, hidden


def gather_positions(sel: Tensor, block: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(B, n) bool -> row and column of each True entry, repeated up to a multiple of
    ``block`` (default :data:`SELECT_BLOCK`), and a weight per entry (1, or 0 for a repeat)."""
    block = SELECT_BLOCK if block is None else block
    idx = sel.reshape(-1).nonzero().squeeze(1)
    M = idx.numel()
    pad = (-M) % block if M else 0
    weight = torch.ones(M + pad, device=sel.device)
    if pad:
        weight[M:] = 0.0
        idx = torch.cat([idx, idx[:1].expand(pad)])
    n = sel.shape[-1]
    return idx // n, idx % n, weight


def pack_windows(items: Tensor, max_len: int | None = None) -> tuple[Tensor, Packing]:
    """Pack the right-aligned windows of a batch into as few rows of the same width as
    first-fit decreasing finds: (B, n) item ids -> (R, n) item ids and their :class:`Packing`.

    A window keeps its items in order and their position ids (counted from the right, as in
    the unpacked batch, over ``max_len`` positions, default n); a model lets a slot attend
    only to slots of its own window and normalises its loss per window, so a packed batch
    has the loss of the unpacked one on about a third of the tokens
    (amazon-beauty's windows hold 6.5 items out of 20)."""
    B, n = items.shape
    max_len = max_len or n
    lengths = (items != 0).sum(1).tolist()
    free: list[int] = []  # free slots left in each row
    row_of, col_of = [0] * B, [0] * B
    for w in sorted(range(B), key=lambda i: -lengths[i]):
        length = lengths[w]
        r = next((r for r, f in enumerate(free) if f >= length), len(free))
        if r == len(free):
            free.append(n)
        row_of[w], col_of[w] = r, n - free[r]
        free[r] -= length
    R = -(-max(len(free), 1) // ROW_BLOCK) * ROW_BLOCK  # empty rows up to a block
    lens = torch.tensor(lengths, dtype=torch.long)
    w_of_item = torch.repeat_interleave(torch.arange(B), lens)  # (I,) window of each item
    starts = torch.cumsum(lens, 0) - lens
    i_in_w = torch.arange(len(w_of_item)) - starts[w_of_item]  # (I,) index within its window
    rows = torch.tensor(row_of, dtype=torch.long)[w_of_item]
    cols = torch.tensor(col_of, dtype=torch.long)[w_of_item] + i_in_w
    L = lens[w_of_item]
    slot = rows * n + cols  # (I,) flat slot in the (R, n) output
    source = torch.full((R * n,), -1, dtype=torch.long)
    source[slot] = w_of_item * n + (n - L + i_in_w)
    positions = torch.zeros(R * n, dtype=torch.long)
    positions[slot] = max_len - L + i_in_w
    windows = torch.full((R * n,), -1, dtype=torch.long)
    windows[slot] = w_of_item
    packed = torch.zeros(R * n, dtype=items.dtype)
    packed[slot] = items.reshape(-1)[source[slot]].cpu()
    dev = items.device
    return packed.view(R, n).to(dev), Packing(
        positions=positions.view(R, n).to(dev),
        windows=windows.view(R, n).to(dev),
        source=source.view(R, n).to(dev),
        n_windows=B,
    )


@dataclass
class Batch:
    """Training rows of a model: ``items`` (R, n) right-aligned item ids, and ``packing`` when
    the rows hold packed windows (then R rows carry ``packing.n_windows`` sequences).
    ``max_len``: the model's window length, over which positions count from the right; build
    batches with :func:`make_batch`, which sets it (without it, the row width is used)."""

    items: Tensor
    packing: Packing | None = None
    max_len: int | None = None

    @property
    def n_seqs(self) -> int:
        return len(self.items) if self.packing is None else self.packing.n_windows

    def owner(self) -> Tensor:
        """(R, n) the sequence (0 .. n_seqs - 1) each slot belongs to (0 in empty slots)."""
        if self.packing is not None:
            return self.packing.windows.clamp(min=0)
        R, n = self.items.shape
        return torch.arange(R, device=self.items.device)[:, None].expand(R, n)

    def positions(self) -> Tensor:
        """(R, n) position ids counted from the right over ``max_len`` positions (as in an
        unpacked right-aligned row of width ``max_len``)."""
        if self.packing is not None:
            return self.packing.positions
        R, n = self.items.shape
        max_len = self.max_len or n
        pos = torch.arange(max_len - n, max_len, device=self.items.device)
        return pos[None].expand(R, n)

    def same_window(self) -> Tensor | None:
        """(R, n, n) bool: slot i may attend to slot j (same window), or None when unpacked."""
        if self.packing is None:
            return None
        w = self.packing.windows
        return w[:, :, None] == w[:, None, :]

    def per_sequence(self, values: Tensor, where: Tensor) -> Tensor:
        """Sum (M,) values, one per True slot of ``where`` (R, n), into (n_seqs,) totals."""
        owner = self.owner()[where]
        return torch.zeros(self.n_seqs, device=values.device, dtype=values.dtype).index_add(
            0, owner, values
        )

    def items_per_sequence(self) -> Tensor:
        """(n_seqs,) number of real items in each sequence (at least 1)."""
        real = self.items >= 2
        ones = torch.ones(int(real.sum()), device=self.items.device)
        return self.per_sequence(ones, real).clamp(min=1)


def make_batch(items: Tensor, mode: BatchMode, max_len: int | None = None) -> Batch:
    """Right-aligned windows (B, n) -> the :class:`Batch` a model trains on: packed into shared
    rows (``'packed'``), with the shared padding cut (``'trim'``), or as given (``'none'``)."""
    if mode == "packed":
        packed, packing = pack_windows(items, max_len)
        return Batch(packed, packing, max_len or items.shape[1])
    if mode == "trim":
        return Batch(trim_left_padding(items), None, max_len or items.shape[1])
    return Batch(items, None, max_len or items.shape[1])
