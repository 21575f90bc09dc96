"""Masking functions: pure, seeded by the generator the trainer passes, shared by every model.

- :func:`mii_mask`: the MII objective (Eq. 11-13 of the MIIR paper): hide present fields;
- :func:`hide_last_items`: the inference query (a whole last item hidden) added to a mask;
- :func:`rec_mask`: Eq. 14: hide whole items, supervise only their IDs (MIIR-R);
- :func:`cloze_mask`: BERT4Rec's cloze task over item positions, with its extra examples that
  mask only the last item of a sequence;
- :func:`rfs_drop`: random feature sampling (RFS): drop present side values in training;
- :func:`sample_items`, :func:`sample_negatives`: the share of a step's rows and of the catalogue
  that the item-ID losses read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Masked:
    """What a model may not see, and what it must predict."""

    hidden: Tensor  # (B, n, F) bool: fields replaced by their missing value
    targets: Tensor  # (B, n, F) bool: fields supervised (hidden and present in the data)
    #: (B, n) bool: the items whose next-item loss this step computes (None: every item);
    #: see :func:`sample_items`
    next_items: Tensor | None = None
    #: (k,) catalogue items (0-based) drawn for a sampled ID softmax (None: the whole
    #: catalogue); see :func:`sample_negatives`
    negatives: Tensor | None = None


def sample_items(
    items: Tensor, fraction: float, generator: torch.Generator | None = None
) -> Tensor | None:
    """(B, n) bool: each position kept with probability ``fraction`` (``None`` at 1: every
    position, and no random number drawn, so that other masks draw what they drew before)."""
    if fraction >= 1.0:
        return None
    u = torch.rand(items.shape, generator=generator, device=items.device)
    return u < fraction


def sample_negatives(
    n_items: int,
    k: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor | None:
    """(k,) distinct catalogue items (0-based), each of the ``n_items`` equally likely (``None``
    at 0, or with k >= n_items: the whole catalogue, and no random number drawn)."""
    if k <= 0 or k >= n_items:
        return None
    return torch.randperm(n_items, generator=generator, device=device)[:k]


def mii_mask(
    present: Tensor,
    mask_prob: float,
    item_mask_prob: float = 0.0,
    generator: torch.Generator | None = None,
) -> Masked:
    """Eq. 11-13 masking: hide each present field independently with probability ``mask_prob``;
    with ``item_mask_prob``, also hide every field of a position. Only present fields are
    supervised. ``present``: (B, n, F) bool, the ID field first."""
    u = torch.rand(present.shape, generator=generator, device=present.device)  # (B, n, F)
    hidden = (u < mask_prob) & present
    if item_mask_prob > 0:
        whole = (
            torch.rand(present.shape[:2], generator=generator, device=present.device)
            < item_mask_prob
        )  # (B, n)
        hidden = hidden | (whole[..., None] & present[..., :1])
    return Masked(hidden=hidden, targets=hidden & present)


def hide_last_items(
    masked: Masked,
    present: Tensor,
    last: Tensor,
    owner: Tensor,
    n_seqs: int,
    prob: float,
    clean: bool = False,
    generator: torch.Generator | None = None,
) -> Masked:
    """The inference query in training: with probability ``prob`` per sequence, hide every
    field of its last item (``last`` (R, n), see :func:`last_of_sequence`) and supervise its
    present fields. With ``clean``, such a sequence hides nothing else (BERT4Rec's extra
    "last item only" example: the context is as complete as at inference); otherwise the
    last item is hidden on top of ``masked``. ``owner`` (R, n) maps slots to sequences
    0 .. n_seqs - 1; ``present``: (R, n, F) bool."""
    if prob <= 0:
        return masked
    pick = (torch.rand(n_seqs, generator=generator, device=present.device) < prob)[owner]
    chosen = pick & last  # (R, n)
    hidden = masked.hidden
    if clean:
        hidden = torch.where(pick[..., None], torch.zeros_like(hidden), hidden)
    hidden = hidden | (chosen[..., None] & present[..., :1])
    return Masked(hidden=hidden, targets=hidden & present)


def rec_mask(present: Tensor, mask_prob: float, generator: torch.Generator | None = None) -> Masked:
    """Eq. 14 masking: hide every field of an item with probability ``mask_prob``; only the
    item IDs of the hidden items are supervised."""
    real = present[..., 0]  # (B, n)
    whole = (
        torch.rand(real.shape, generator=generator, device=present.device) < mask_prob
    ) & real  # (B, n)
    hidden = whole[..., None].expand_as(present).clone()
    targets = torch.zeros_like(present)
    targets[..., 0] = whole
    return Masked(hidden=hidden, targets=targets)


def last_of_sequence(items: Tensor, windows: Tensor | None = None) -> Tensor:
    """(R, n) bool: the last real item of each sequence (the last column of right-aligned
    rows; with packed rows, ``windows`` (R, n), the last slot of each window)."""
    real = items >= 2
    if windows is None:
        last = torch.zeros_like(real)
        last[:, -1] = real[:, -1]
        return last
    nxt = torch.full_like(windows, -1)
    nxt[:, :-1] = windows[:, 1:]
    return real & (windows != nxt)


def cloze_mask(
    items: Tensor,
    owner: Tensor,
    n_seqs: int,
    last: Tensor,
    mask_prob: float,
    last_prob: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """BERT4Rec's cloze task: (R, n) bool of the item positions to hide (and predict).

    Each real item is hidden with probability ``mask_prob``; a sequence (``owner`` (R, n) maps
    slots to sequences 0 .. n_seqs - 1) becomes, with probability ``last_prob``, an example
    with only its last item hidden (``last`` (R, n), see :func:`last_of_sequence`): the
    inference query, which the original BERT4Rec data generator adds to every sequence. A
    sequence with nothing hidden gets its last item hidden."""
    real = items >= 2
    hidden = (torch.rand(items.shape, generator=generator, device=items.device) < mask_prob) & real
    if last_prob > 0:
        only_last = torch.rand(n_seqs, generator=generator, device=items.device) < last_prob
        pick = only_last[owner]  # (R, n)
        hidden = torch.where(pick, last, hidden)
    count = torch.zeros(n_seqs, device=items.device).index_add(
        0, owner[hidden], torch.ones(int(hidden.sum()), device=items.device)
    )
    empty = (count == 0)[owner]  # (R, n)
    return hidden | (empty & last)


#: The drop rate of the ``fdsa-rfs`` and ``nova-rfs`` presets. Neither the MIIR paper nor the
#: part of the RFS paper (Shi et al., CIKM 2019) available to us gives a rate for its random
#: baseline; 0.5 is the MIIR paper's own rate of artificial missingness (its MII mask
#: probability p and its discard probability for the "D" data sets, Section 4), so that
#: FDSA+RFS and NOVA+RFS meet as many extra missing values in training as MIIR does.
RFS_DEFAULT_PROB = 0.5


def rfs_drop(present: Tensor, prob: float, generator: torch.Generator | None = None) -> Tensor:
    """Random feature sampling (RFS, Shi et al., CIKM 2019, the MIIR paper's reference 18):
    (..., F) bool side values present in the data -> (..., F) bool side values a training
    step sees, each present value dropped (to be entered as the field's missing value)
    independently with probability ``prob``. Nothing is drawn when ``prob`` is 0, so a model
    with RFS off consumes the generator exactly as before."""
    if not 0.0 <= prob < 1.0:
        raise ValueError(f"rfs prob must be in [0, 1), got {prob}")
    if prob == 0.0:
        return present
    u = torch.rand(present.shape, generator=generator, device=present.device)  # (..., F)
    return present & (u >= prob)
