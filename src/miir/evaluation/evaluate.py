"""Evaluate a next-item model under three protocols, always together (named the same way in
every table, log and file):

- ``sampled`` (the MIIR and S3-Rec papers'): the target ranked among its 99 negatives saved
  with the split;
- ``full``: the target ranked among all items, the user's earlier items included (RecBole's
  and DIF-SR's default);
- ``full_masked``: the target ranked among all items except the user's earlier items (the
  S3-Rec, FMLP-Rec and BSARec code bases). Our data has no repeated items, so masking can
  only help, and it is a legitimate protocol, not a trick.

Sampled metrics can reverse model rankings (Krichene and Rendle, KDD 2020), so all three are
always reported. Ties count against the target (see :mod:`miir.evaluation.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from miir.evaluation.metrics import RankAccumulator, metrics_from_ranks, sampled_ranks, target_ranks
from miir.runtime import release_freed_memory

PROTOCOLS = ("sampled", "full", "full_masked")
#: most histories per forward pass when scoring an evaluation batch: a batch of 512 is scored and
#: ranked in four passes of 128, whose activations, scores and masks need about a quarter of the
#: memory (issue 9: 250-275 MiB of transient memory for the default MIIR at 512 on
#: amazon-beauty, 66-94 at 128); the batch size stays what it was, so no recorded run's key
#: changes
SCORE_CHUNK = 128
PROTOCOL_LABELS = {
    "sampled": "sampled (99 negatives)",
    "full": "full ranking",
    "full_masked": "full ranking, history masked",
}


def history_exclusion(scores: Tensor, seen: Tensor, target: Tensor) -> Tensor:
    """(B, N + 2) bool: the items of each user's earlier history (``seen`` (B, S), 0-padded,
    any integer dtype), never the target."""
    exclude = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    exclude.scatter_(1, seen.to(scores.device, torch.long), True)
    exclude[:, 0] = False  # the padding id (its score is -inf anyway)
    exclude[torch.arange(len(target), device=scores.device), target] = False
    return exclude


class ProtocolRanks:
    """Accumulates the rank of each target under every protocol from full-catalogue scores."""

    def __init__(self, capacity: int = 0, device: torch.device | str | None = None) -> None:
        """``capacity``: the number of users expected (their ranks go into buffers allocated
        now, see :class:`RankAccumulator`); 0 if unknown."""
        self.full = RankAccumulator(capacity, device)
        self.full_masked = RankAccumulator(capacity, device)
        self.sampled = RankAccumulator(capacity, device)

    def update(self, scores: Tensor, target: Tensor, negatives: Tensor, seen: Tensor) -> None:
        """scores (B, N + 2) over item ids; target (B,); negatives (B, K); seen (B, S) the
        user's earlier items (0-padded). ``negatives`` and ``seen`` may hold int32 ids (as
        :class:`miir.training.data.EvalRows` keeps them); they are widened here, one chunk
        at a time."""
        self.full.update(target_ranks(scores, target))
        self.full_masked.update(
            target_ranks(scores, target, history_exclusion(scores, seen, target))
        )
        cand = scores.gather(1, torch.cat([target[:, None], negatives.long()], dim=1))  # (B, 1 + K)
        self.sampled.update(sampled_ranks(cand[:, 0], cand[:, 1:]))

    def ranks(self) -> dict[str, Tensor]:
        return {p: getattr(self, p).ranks() for p in PROTOCOLS}

    def compute(self, ks: tuple[int, ...] = (5, 10)) -> dict[str, dict[str, float]]:
        return {p: getattr(self, p).compute(ks) for p in PROTOCOLS}


def rank_in_chunks(
    ranks: ProtocolRanks,
    score_fn: Callable[[Tensor], Tensor],
    history: Tensor,
    target: Tensor,
    negatives: Tensor,
    seen: Tensor,
) -> None:
    """Score the rows ``history`` (B, n) :data:`SCORE_CHUNK` at a time and add each chunk's
    target ranks to ``ranks`` (rows are independent, so the ranks are those of one pass): the
    model's activations, the (B, N + 2) scores and the masks and comparisons derived from them
    exist for one chunk at a time (issue 9: memory)."""
    for start in range(0, len(history), SCORE_CHUNK):
        rows = slice(start, start + SCORE_CHUNK)
        scores = score_fn(history[rows]).float()  # (chunk, N + 2)
        ranks.update(scores, target[rows], negatives[rows], seen[rows])


@torch.no_grad()
def evaluate_scores(
    score_fn: Callable[[Tensor], Tensor],
    history: Tensor,
    target: Tensor,
    negatives: Tensor,
    seen: Tensor,
    *,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    ks: tuple[int, ...] = (5, 10),
) -> tuple[dict[str, dict[str, float]], dict[str, Tensor]]:
    """Run ``score_fn`` (history (B, n) -> scores (B, N + 2)) over all rows; return the metrics of
    every protocol and the per-user ranks (for significance tests), in the order of the rows.
    ``seen`` (U, S): each user's earlier items, 0-padded (for ``full_masked``).

    Rows are scored in order of history length (right-aligned, 0 = padding), so that a batch
    holds histories of similar length and a model that cuts shared padding
    (:func:`miir.models.batch.trim_left_padding`) does less work; rows are independent, so the
    order changes no score. Each batch is scored and ranked in passes of at most
    :data:`SCORE_CHUNK` rows (:func:`rank_in_chunks`), the memory that malloc keeps is handed
    back before and after the pass (:func:`miir.runtime.release_freed_memory`), and the ranks
    go into buffers allocated before the first batch, which bounds evaluation's memory
    (issue 9)."""
    release_freed_memory()
    acc = ProtocolRanks(len(target), device)
    order = torch.argsort((history != 0).sum(1), stable=True)  # (U,)
    for start in range(0, len(target), batch_size):
        idx = order[start : start + batch_size]
        rank_in_chunks(
            acc,
            score_fn,
            history[idx].to(device),
            target[idx].to(device),
            negatives[idx].to(device),
            seen[idx].to(device),
        )
    release_freed_memory()
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order))  # position of each row in the scoring order
    ranks = {k: v.cpu()[back] for k, v in acc.ranks().items()}
    return {k: metrics_from_ranks(v, ks) for k, v in ranks.items()}, ranks
