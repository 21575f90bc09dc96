"""Evaluate a next-item model under both protocols, always together:

- **sampled** (the paper's): the target ranked among its 99 negatives saved with the split;
- **full**: the target ranked among all items (padding and mask ids excluded). Sampled metrics
  can reverse model rankings (Krichene and Rendle, KDD 2020), so both are always reported.

Ties count against the target (see :mod:`miir.evaluation.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from miir.evaluation.metrics import RankAccumulator, metrics_from_ranks, sampled_ranks, target_ranks


class TwoProtocolRanks:
    """Accumulates the ranks of each target under both protocols from full-catalogue scores."""

    def __init__(self) -> None:
        self.full = RankAccumulator()
        self.sampled = RankAccumulator()

    def update(
        self, scores: Tensor, target: Tensor, negatives: Tensor, exclude: Tensor | None = None
    ) -> None:
        """scores (B, N + 2) over item ids; target (B,); negatives (B, K)."""
        self.full.update(target_ranks(scores, target, exclude))
        cand = scores.gather(1, torch.cat([target[:, None], negatives], dim=1))  # (B, 1 + K)
        self.sampled.update(sampled_ranks(cand[:, 0], cand[:, 1:]))

    def compute(self, ks: tuple[int, ...] = (5, 10)) -> dict[str, dict[str, float]]:
        return {"sampled": self.sampled.compute(ks), "full": self.full.compute(ks)}


@torch.no_grad()
def evaluate_scores(
    score_fn: Callable[[Tensor], Tensor],
    history: Tensor,
    target: Tensor,
    negatives: Tensor,
    *,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    ks: tuple[int, ...] = (5, 10),
) -> tuple[dict[str, dict[str, float]], dict[str, Tensor]]:
    """Run ``score_fn`` (history (B, n) -> scores (B, N + 2)) over all rows; return the metrics of
    both protocols and the per-user ranks (for significance tests), in the order of the rows.

    Rows are scored in order of history length (right-aligned, 0 = padding), so that a batch
    holds histories of similar length and a model that cuts shared padding
    (:func:`miir.models.miir.trim_left_padding`) does less work; rows are independent, so the
    order changes no score."""
    acc = TwoProtocolRanks()
    order = torch.argsort((history != 0).sum(1), stable=True)  # (U,)
    for start in range(0, len(target), batch_size):
        idx = order[start : start + batch_size]
        scores = score_fn(history[idx].to(device))
        acc.update(scores, target[idx].to(device), negatives[idx].to(device))
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order))  # position of each row in the scoring order
    ranks = {"sampled": acc.sampled.ranks().cpu()[back], "full": acc.full.ranks().cpu()[back]}
    return {k: metrics_from_ranks(v, ks) for k, v in ranks.items()}, ranks
