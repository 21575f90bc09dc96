"""Ranking metrics for next-item recommendation, shared by every model.

Every metric here is a function of one number per evaluated user: the 1-based rank of the
held-out target item among the candidates. Two protocols produce that rank:

- full ranking (:func:`target_ranks`): the target against every item of the catalogue, minus
  the candidates marked as excluded (padding and mask ids, optionally the user's history);
- sampled ranking (:func:`sampled_ranks`): the paper protocol, the target against the K
  negatives saved with the test split.

Ties count against the target in both: its rank is 1 + the number of *other* ranked candidates
whose score is greater than *or equal to* its own. A model that outputs one constant score
therefore gets the worst rank (C in full ranking, K + 1 in sampled ranking), never rank 1;
without this rule a degenerate model would look perfect.

From the ranks (one relevant item per user, so the ideal DCG is 1):

- ``HR@k`` = mean of [rank <= k];
- ``NDCG@k`` = mean of 1 / log2(rank + 1) if rank <= k else 0;
- ``MRR`` = mean of 1 / rank.

:class:`RankAccumulator` collects ranks batch by batch (and across processes, by gathering its
ranks), and :func:`paired_significance` compares two models evaluated on the same users.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "RankAccumulator",
    "metrics_from_ranks",
    "paired_significance",
    "per_user_metrics",
    "sampled_ranks",
    "target_ranks",
]

# Upper bound on the elements of the temporary (rows, C) comparison in :func:`target_ranks`.
DEFAULT_MAX_CHUNK_ELEMENTS = 1 << 24

_PER_K_METRICS = ("HR", "NDCG")


def _check_scores(name: str, scores: torch.Tensor, ndim: int) -> None:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {scores.dtype}")


def _nan_error(name: str) -> ValueError:
    return ValueError(
        f"{name} contain NaN; refusing to rank (a NaN compares false with everything and would "
        "give the target a silently wrong rank)"
    )


def target_ranks(
    scores: torch.Tensor,
    target: torch.Tensor,
    exclude: torch.Tensor | None = None,
    *,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Rank of the target column in each row of ``scores`` (full ranking).

    Ties count against the target: ``rank = 1 + #{j != target, not excluded: s_j >= s_target}``.
    A model that outputs constant scores gets rank C (or C minus the excluded count), not 1.

    Args:
        scores: (B, C) floating point scores, higher is better.
        target: (B,) integer index in ``[0, C)`` of the target column of each row.
        exclude: optional (B, C) bool; True marks a candidate that is not ranked at all
            (padding and mask ids, or items of the user's history). The target itself is never
            excluded, even where marked.
        max_chunk_elements: rows are processed in chunks whose temporary comparison holds at
            most this many elements (at least one row), so memory beyond the inputs stays
            below one (B, C) bool tensor.

    Returns:
        (B,) long 1-based ranks, on the device of ``scores``.

    Raises:
        ValueError: on NaN anywhere in ``scores``, on a target out of range, or on mismatched
            shapes.
        TypeError: on a wrong dtype.
    """
    _check_scores("scores", scores, 2)
    b, c = scores.shape
    if not isinstance(target, torch.Tensor) or target.shape != (b,):
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"target must be a ({b},) tensor to match scores {(b, c)}, got {shape}")
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise TypeError(f"target must be an integer tensor, got {target.dtype}")
    if exclude is not None:
        if not isinstance(exclude, torch.Tensor) or exclude.shape != scores.shape:
            shape = tuple(exclude.shape) if isinstance(exclude, torch.Tensor) else exclude
            raise ValueError(f"exclude must have the shape of scores {(b, c)}, got {shape}")
        if exclude.dtype != torch.bool:
            raise TypeError(f"exclude must be a bool tensor, got {exclude.dtype}")
        exclude = exclude.to(scores.device)
    ranks = torch.empty(b, dtype=torch.long, device=scores.device)  # (B,)
    if b == 0:
        return ranks
    if c == 0:
        raise ValueError("scores has no candidate column")
    target = target.to(device=scores.device, dtype=torch.long)  # (B,)
    # One host sync for the range check, before any indexing (an out-of-range index would be a
    # device-side assert on CUDA).
    t_min, t_max = (int(v) for v in torch.stack([target.min(), target.max()]).tolist())
    if t_min < 0 or t_max >= c:
        raise ValueError(f"target indices must lie in [0, {c}), got range [{t_min}, {t_max}]")

    rows_per_chunk = max(1, max_chunk_elements // c)
    has_nan = torch.zeros((), dtype=torch.bool, device=scores.device)
    with torch.no_grad():
        for start in range(0, b, rows_per_chunk):
            stop = min(start + rows_per_chunk, b)
            chunk = scores[start:stop].detach()  # (b, C)
            tgt = target[start:stop].unsqueeze(1)  # (b, 1)
            has_nan |= torch.isnan(chunk).any()
            tgt_score = chunk.gather(1, tgt)  # (b, 1)
            at_least = chunk >= tgt_score  # (b, C) bool: ties count against the target
            if exclude is not None:
                at_least.masked_fill_(exclude[start:stop], False)  # (b, C)
            at_least.scatter_(1, tgt, False)  # (b, C): the target is not its own competitor
            ranks[start:stop] = at_least.sum(dim=1) + 1  # (b,)
    if bool(has_nan):
        raise _nan_error("scores")
    return ranks


def sampled_ranks(target_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """Rank of each target among its K sampled negatives (the paper protocol).

    Same tie rule as :func:`target_ranks`: ``rank = 1 + #{k: negative_k >= target}``, so a
    constant-score model gets rank K + 1. Equal to :func:`target_ranks` over the C = K + 1
    columns ``[target, negatives...]``.

    Args:
        target_scores: (B,) floating point score of each target.
        negative_scores: (B, K) floating point scores of the saved negatives.

    Returns:
        (B,) long 1-based ranks in ``[1, K + 1]``, on the device of ``negative_scores``.

    Raises:
        ValueError: on NaN in either input or on mismatched shapes.
        TypeError: on a non floating point input.
    """
    _check_scores("target_scores", target_scores, 1)
    _check_scores("negative_scores", negative_scores, 2)
    if negative_scores.shape[0] != target_scores.shape[0]:
        raise ValueError(
            f"target_scores {tuple(target_scores.shape)} and negative_scores "
            f"{tuple(negative_scores.shape)} disagree on the batch size"
        )
    with torch.no_grad():
        target_scores = target_scores.detach().to(negative_scores.device)  # (B,)
        negative_scores = negative_scores.detach()  # (B, K)
        if bool(torch.isnan(target_scores).any() | torch.isnan(negative_scores).any()):
            raise _nan_error("scores")
        at_least = negative_scores >= target_scores.unsqueeze(1)  # (B, K) bool
        return at_least.sum(dim=1) + 1  # (B,) long


def _normalise_ks(ks: Iterable[int]) -> tuple[int, ...]:
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"every cutoff k must be a positive integer, got {k!r}")
        if int(k) not in out:
            out.append(int(k))
    if not out:
        raise ValueError("ks must hold at least one cutoff")
    return tuple(out)


def _check_ranks(ranks: torch.Tensor) -> torch.Tensor:
    if not isinstance(ranks, torch.Tensor):
        raise TypeError(f"ranks must be a torch.Tensor, got {type(ranks).__name__}")
    if ranks.dim() != 1:
        raise ValueError(f"ranks must be one-dimensional, got shape {tuple(ranks.shape)}")
    if ranks.dtype == torch.bool or ranks.is_floating_point() or ranks.is_complex():
        raise TypeError(f"ranks must be an integer tensor, got {ranks.dtype}")
    if ranks.numel() and int(ranks.min()) < 1:
        raise ValueError(f"ranks are 1-based, got a rank of {int(ranks.min())}")
    return ranks


def per_user_metrics(ranks: torch.Tensor, ks: Sequence[int] = (5, 10)) -> dict[str, torch.Tensor]:
    """Per-user metric values, for paired significance tests and per-group breakdowns.

    Args:
        ranks: (N,) integer 1-based ranks.
        ks: the cutoffs of HR@k and NDCG@k.

    Returns:
        ``{"HR@k": ..., ..., "NDCG@k": ..., ..., "MRR": ...}``, each a (N,) float64 tensor
        on the device of ``ranks``; every ``HR@k`` first, then every ``NDCG@k``, then ``MRR``.
    """
    ks = _normalise_ks(ks)
    ranks = _check_ranks(ranks)
    r = ranks.to(torch.float64)  # (N,)
    discount = 1.0 / torch.log2(r + 1.0)  # (N,): DCG of a single relevant item; IDCG = 1
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        out[f"HR@{k}"] = (ranks <= k).to(torch.float64)  # (N,)
    for k in ks:
        out[f"NDCG@{k}"] = torch.where(ranks <= k, discount, torch.zeros_like(discount))  # (N,)
    out["MRR"] = 1.0 / r  # (N,)
    return out


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int] = (5, 10)) -> dict[str, float]:
    """Mean HR@k, NDCG@k and MRR over users.

    Args:
        ranks: (N,) integer 1-based ranks, N >= 1.
        ks: the cutoffs; the default gives the keys "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR".

    Returns:
        A dict of Python floats in [0, 1], keys ordered as in :func:`per_user_metrics`.

    Raises:
        ValueError: on no ranks at all (the means would be undefined).
    """
    if isinstance(ranks, torch.Tensor) and ranks.numel() == 0:
        raise ValueError("no ranks to compute metrics from (empty evaluation set)")
    per_user = per_user_metrics(ranks, ks)
    return {name: float(values.mean()) for name, values in per_user.items()}


class RankAccumulator:
    """Collects target ranks batch by batch; computes the metrics at the end.

    Ranks stay on the device they arrive on (no host sync per batch). For distributed
    evaluation, gather :meth:`ranks` (or :meth:`state`) from every process, then build the
    global accumulator with :meth:`from_ranks` or :meth:`merge`.

    With ``capacity`` (the number of ranks expected, on ``device``), the ranks are copied into
    one buffer allocated up front instead of being kept batch by batch: on a CPU, each kept
    batch is a small long-lived block that malloc may carve out of the hole a freed score
    matrix left, so that the next batch's scores no longer fit there and the heap grows by
    their size, batch after batch (issue 9: an evaluation pass grew by ~47 MiB every other
    batch in some runs). Ranks beyond the capacity, or on another device, are kept batch by
    batch as without it.
    """

    def __init__(self, capacity: int = 0, device: torch.device | str | None = None) -> None:
        self._chunks: list[torch.Tensor] = []
        self._buffer = (
            torch.empty(capacity, dtype=torch.long, device=device) if capacity > 0 else None
        )
        self._filled = 0

    def update(self, ranks: torch.Tensor) -> None:
        """Add a batch of (b,) integer 1-based ranks."""
        ranks = _check_ranks(ranks).detach()
        buf, n = self._buffer, len(ranks)
        if (
            buf is not None
            and not self._chunks
            and self._filled + n <= len(buf)
            and ranks.device == buf.device
        ):
            buf[self._filled : self._filled + n] = ranks
            self._filled += n
        else:
            self._chunks.append(ranks.to(torch.long))

    def ranks(self) -> torch.Tensor:
        """All ranks so far, (N,) long, in update order (empty if none)."""
        parts = self._chunks
        if self._filled:
            parts = [self._buffer[: self._filled], *self._chunks]  # type: ignore[index]
        if not parts:
            return torch.empty(0, dtype=torch.long)
        if len(parts) > 1:
            device = parts[0].device
            self._chunks = [torch.cat([c.to(device) for c in parts])]
            self._buffer, self._filled = None, 0
            return self._chunks[0]
        return parts[0]

    def compute(self, ks: Sequence[int] = (5, 10)) -> dict[str, float]:
        """The metrics over every rank so far (see :func:`metrics_from_ranks`)."""
        return metrics_from_ranks(self.ranks(), ks)

    def state(self) -> dict[str, torch.Tensor]:
        """A picklable / all-gatherable snapshot: ``{"ranks": (N,) long}``."""
        return {"ranks": self.ranks()}

    @classmethod
    def from_ranks(cls, *ranks: torch.Tensor) -> RankAccumulator:
        """An accumulator holding the given rank tensors (e.g. one per process)."""
        acc = cls()
        for r in ranks:
            acc.update(r)
        return acc

    def merge(self, other: RankAccumulator) -> RankAccumulator:
        """Append the ranks of ``other`` to this accumulator; returns ``self``."""
        if other is self:
            raise ValueError("cannot merge an accumulator into itself")
        if len(other):
            self.update(other.ranks())
        return self

    def reset(self) -> None:
        """Forget every rank (the buffer, if any, is kept for reuse)."""
        self._chunks.clear()
        self._filled = 0

    def __len__(self) -> int:
        return self._filled + sum(int(c.numel()) for c in self._chunks)


def _metric_key(metric: str, k: int | None) -> str:
    name = metric.strip()
    if "@" in name:
        if k is not None:
            raise ValueError(f"metric {metric!r} already names its cutoff; leave k as None")
        base, _, k_text = name.partition("@")
        if base.upper() not in _PER_K_METRICS or not k_text.isdigit() or int(k_text) < 1:
            raise ValueError(f"unknown metric {metric!r}; expected MRR, HR@k or NDCG@k")
        return f"{base.upper()}@{int(k_text)}"
    if name.upper() == "MRR":
        if k is not None:
            raise ValueError("MRR takes no cutoff; leave k as None")
        return "MRR"
    if name.upper() in _PER_K_METRICS:
        if k is None:
            raise ValueError(f"metric {name.upper()} needs a cutoff k")
        _normalise_ks([k])
        return f"{name.upper()}@{int(k)}"
    raise ValueError(f"unknown metric {metric!r}; expected MRR, HR, NDCG (with k) or HR@k, NDCG@k")


def paired_significance(
    ranks_a: torch.Tensor,
    ranks_b: torch.Tensor,
    metric: str = "MRR",
    k: int | None = None,
) -> dict[str, float]:
    """Two-sided paired t-test (``scipy.stats.ttest_rel``) of one metric between two models.

    Row i of ``ranks_a`` and of ``ranks_b`` must be the same user (the same test case).

    Args:
        ranks_a: (N,) ranks of model A.
        ranks_b: (N,) ranks of model B, same users in the same order.
        metric: "MRR", or "HR" / "NDCG" with ``k``, or "HR@10" / "NDCG@10" with ``k=None``.
        k: the cutoff of HR or NDCG.

    Returns:
        ``{"mean_a", "mean_b", "t", "p", "n"}``: the two metric means, the t statistic (positive
        when A is better), the two-sided p-value and the number of pairs ``n`` (an int).
        Degenerate cases are decided without scipy: identical per-user values give
        ``t = 0, p = 1`` (no evidence of a difference; scipy would return NaN), and a constant
        non-zero difference gives ``t = ±inf, p = 0``.

    Raises:
        ValueError: when the two rank tensors differ in length, hold fewer than 2 users, or the
            metric is unknown.
    """
    key = _metric_key(metric, k)
    ranks_a, ranks_b = _check_ranks(ranks_a), _check_ranks(ranks_b)
    if ranks_a.numel() != ranks_b.numel():
        raise ValueError(
            f"paired test needs the same users in both: ranks_a has {ranks_a.numel()} rows, "
            f"ranks_b has {ranks_b.numel()}"
        )
    n = ranks_a.numel()
    if n < 2:
        raise ValueError(f"paired test needs at least 2 users, got {n}")
    ks = (int(key.partition("@")[2]),) if "@" in key else (1,)
    a = per_user_metrics(ranks_a.cpu(), ks)[key].numpy()  # (N,)
    b = per_user_metrics(ranks_b.cpu(), ks)[key].numpy()  # (N,)
    t, p = paired_t(a, b)
    return {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "t": t, "p": p, "n": n}


def paired_t(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided paired t-test (t, p) of two (N,) arrays of per-case values, N >= 2.
    Degenerate cases without scipy: identical values give ``t = 0, p = 1``, a constant
    non-zero difference ``t = ±inf, p = 0``."""
    from scipy import stats

    diff = a - b  # (N,)
    if np.all(diff == diff[0]):
        if diff[0] == 0:
            return 0.0, 1.0
        return math.copysign(math.inf, float(diff[0])), 0.0
    result = stats.ttest_rel(a, b, alternative="two-sided")
    return float(result.statistic), float(result.pvalue)


def clustered_mean_test(diff: np.ndarray, *clusters: np.ndarray) -> tuple[float, float]:
    """Two-sided test (t, p) that the mean of ``diff`` (N,) is zero when the cases are grouped
    into clusters (one (N,) label array per grouping: say items and users) whose members are
    not independent. The variance of the mean is clustered (Liang-Zeger, with the small-sample
    factor G / (G - 1)); with two groupings it is Cameron, Gelbach and Miller's two-way form,
    V_A + V_B - V_AB (the intersection's, floored at the larger one-way variance); the t has
    G - 1 degrees of freedom, G the smallest number of clusters. With one label per case it
    is the one-sample t-test of ``diff``. Identical values: ``t = 0, p = 1`` where they are
    zero, ``t = ±inf, p = 0`` otherwise."""
    from scipy import stats

    diff = np.asarray(diff, dtype=np.float64)
    n = len(diff)
    mean = float(diff.mean())
    if np.all(diff == diff[0]):
        return (0.0, 1.0) if diff[0] == 0 else (math.copysign(math.inf, mean), 0.0)
    resid = diff - mean

    def variance(labels: np.ndarray) -> tuple[float, int]:
        _, group = np.unique(labels, return_inverse=True, axis=0)
        sums = np.bincount(group.ravel(), weights=resid)  # (G,)
        g = len(sums)
        return (g / (g - 1)) * float((sums**2).sum()) / n**2 if g > 1 else math.inf, g

    one_way = [variance(np.asarray(c)) for c in clusters]
    v = one_way[0][0]
    if len(clusters) == 2:
        both = np.stack([np.asarray(c) for c in clusters], axis=1)  # (N, 2)
        v = max(one_way[0][0] + one_way[1][0] - variance(both)[0], one_way[0][0], one_way[1][0])
    elif len(clusters) > 2:
        raise ValueError("at most two groupings")
    g = min(k for _, k in one_way)
    if not math.isfinite(v) or v <= 0:
        return 0.0, 1.0
    t = mean / math.sqrt(v)
    return float(t), float(2 * stats.t.sf(abs(t), df=max(g - 1, 1)))
