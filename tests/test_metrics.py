"""Ranking metrics: hand-computed values, the tie rule, exclusion, and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from miir.evaluation.evaluate import evaluate_scores
from miir.evaluation.metrics import (
    RankAccumulator,
    metrics_from_ranks,
    paired_significance,
    per_user_metrics,
    sampled_ranks,
    target_ranks,
)

FAST = settings(max_examples=60, deadline=None)


def _ranks(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


# ---------------------------------------------------------------- hand-computed metrics


def test_metrics_from_ranks_hand_computed() -> None:
    m = metrics_from_ranks(_ranks(1, 3, 12))
    assert list(m) == ["HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR"]
    # HR@5: ranks 1 and 3 are <= 5, 12 is not -> 2/3; same for HR@10 (12 > 10).
    assert m["HR@5"] == pytest.approx(2 / 3)
    assert m["HR@10"] == pytest.approx(2 / 3)
    # NDCG: rank 1 -> 1/log2(2) = 1; rank 3 -> 1/log2(4) = 1/2; rank 12 -> 0 (beyond both k).
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(4)) / 3)  # = 0.5
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    # MRR = (1/1 + 1/3 + 1/12) / 3 = (12 + 4 + 1) / 36 = 17/36.
    assert m["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 12) / 3)
    assert m["MRR"] == pytest.approx(17 / 36)


def test_metrics_between_cutoffs() -> None:
    # Ranks 6 and 10: outside k=5, inside k=10.
    m = metrics_from_ranks(_ranks(6, 10))
    assert m["HR@5"] == 0.0
    assert m["NDCG@5"] == 0.0
    assert m["HR@10"] == 1.0
    # NDCG@10 = (1/log2(7) + 1/log2(11)) / 2 ≈ (0.3562 + 0.2891) / 2.
    assert m["NDCG@10"] == pytest.approx((1 / math.log2(7) + 1 / math.log2(11)) / 2)
    # MRR = (1/6 + 1/10) / 2 = (5 + 3) / 30 / 2 = 4/30.
    assert m["MRR"] == pytest.approx(4 / 30)


def test_metrics_generic_over_ks() -> None:
    m = metrics_from_ranks(_ranks(1, 2, 20), ks=(1, 20))
    assert list(m) == ["HR@1", "HR@20", "NDCG@1", "NDCG@20", "MRR"]
    assert m["HR@1"] == pytest.approx(1 / 3)  # only rank 1
    assert m["HR@20"] == pytest.approx(1.0)  # rank 20 <= 20
    # NDCG@20 = (1 + 1/log2(3) + 1/log2(21)) / 3.
    assert m["NDCG@20"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(21)) / 3)


def test_per_user_metrics_rows() -> None:
    per = per_user_metrics(_ranks(1, 3, 12))
    assert per["HR@5"].tolist() == [1.0, 1.0, 0.0]
    assert per["NDCG@10"].tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert per["MRR"].tolist() == pytest.approx([1.0, 1 / 3, 1 / 12])
    assert all(v.shape == (3,) for v in per.values())


@pytest.mark.parametrize(
    "ranks, error",
    [
        (torch.tensor([], dtype=torch.long), ValueError),
        (_ranks(0, 1), ValueError),
        (torch.tensor([1.0, 2.0]), TypeError),
        (torch.ones(2, 2, dtype=torch.long), ValueError),
    ],
)
def test_metrics_reject_bad_ranks(ranks: torch.Tensor, error: type[Exception]) -> None:
    with pytest.raises(error):
        metrics_from_ranks(ranks)


def test_metrics_reject_bad_ks() -> None:
    with pytest.raises(ValueError):
        metrics_from_ranks(_ranks(1), ks=(0,))
    with pytest.raises(ValueError):
        metrics_from_ranks(_ranks(1), ks=())


# ---------------------------------------------------------------- full ranking


def test_target_ranks_basic() -> None:
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.5, 0.3],  # target 0 is the best -> rank 1
            [0.9, 0.1, 0.5, 0.3],  # target 3 (0.3): 0.9 and 0.5 above -> rank 3
            [0.9, 0.1, 0.5, 0.3],  # target 1 is the worst -> rank 4
        ]
    )
    assert target_ranks(scores, _ranks(0, 3, 1)).tolist() == [1, 3, 4]


def test_ties_count_against_the_target() -> None:
    # Constant scores: all C - 1 = 4 others tie the target -> rank 1 + 4 = C = 5, never 1.
    constant = torch.zeros(2, 5)
    assert target_ranks(constant, _ranks(0, 4)).tolist() == [5, 5]
    # Target (column 1, 0.7) tied with exactly one other (column 2) and above the rest -> rank 2.
    scores = torch.tensor([[0.1, 0.7, 0.7, 0.2]])
    assert target_ranks(scores, _ranks(1)).tolist() == [2]


def test_exclude_mask() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    target = _ranks(3)  # score 2.0: three higher items -> rank 4 without exclusion
    assert target_ranks(scores, target).tolist() == [4]
    # Excluding two of the higher-scoring items (columns 0 and 2): only 4.0 is left above -> 2.
    exclude = torch.tensor([[True, False, True, False, False]])
    assert target_ranks(scores, target, exclude).tolist() == [2]
    # Excluding a lower-scoring item changes nothing.
    exclude = torch.tensor([[False, False, False, False, True]])
    assert target_ranks(scores, target, exclude).tolist() == [4]


def test_target_is_never_excluded() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    # The target (column 2) is marked, together with column 0: the target is still ranked, and
    # only 4.0 is above it -> rank 2.
    exclude = torch.tensor([[True, False, True, False]])
    assert target_ranks(scores, _ranks(2), exclude).tolist() == [2]
    # Everything excluded: the target competes with nobody -> rank 1.
    assert target_ranks(scores, _ranks(3), torch.ones(1, 4, dtype=torch.bool)).tolist() == [1]


def test_chunking_gives_the_same_ranks() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (37, 11), generator=gen).float()  # (B, C) with many ties
    target = torch.randint(0, 11, (37,), generator=gen)
    exclude = torch.rand(37, 11, generator=gen) < 0.3
    whole = target_ranks(scores, target, exclude)
    for max_elements in (1, 11, 30, 10_000):
        chunked = target_ranks(scores, target, exclude, max_chunk_elements=max_elements)
        assert torch.equal(chunked, whole)


def test_nan_raises() -> None:
    scores = torch.tensor([[0.1, float("nan"), 0.3]])
    with pytest.raises(ValueError, match="NaN"):
        target_ranks(scores, _ranks(0))
    # A NaN in a later chunk is caught too.
    scores = torch.zeros(4, 3)
    scores[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        target_ranks(scores, _ranks(0, 0, 0, 0), max_chunk_elements=3)
    with pytest.raises(ValueError, match="NaN"):
        sampled_ranks(torch.tensor([float("nan")]), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="NaN"):
        sampled_ranks(torch.zeros(1), torch.tensor([[0.0, float("nan")]]))


def test_infinite_scores_rank_sensibly() -> None:
    inf = float("inf")
    scores = torch.tensor([[inf, 1.0, -inf], [inf, inf, 0.0], [-inf, 1.0, 2.0]])
    assert target_ranks(scores, _ranks(0, 0, 0)).tolist() == [1, 2, 3]


def test_target_ranks_input_checks() -> None:
    scores = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        target_ranks(scores, _ranks(0, 3))  # out of range
    with pytest.raises(ValueError):
        target_ranks(scores, _ranks(0, -1))
    with pytest.raises(ValueError):
        target_ranks(scores, _ranks(0))  # wrong batch size
    with pytest.raises(ValueError):
        target_ranks(scores, _ranks(0, 1), torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(TypeError):
        target_ranks(scores, _ranks(0, 1), torch.zeros(2, 3))  # exclude not bool
    with pytest.raises(TypeError):
        target_ranks(scores.long(), _ranks(0, 1))
    with pytest.raises(TypeError):
        target_ranks(scores, torch.tensor([0.0, 1.0]))
    assert target_ranks(torch.zeros(0, 3), _ranks()).shape == (0,)


def test_target_ranks_does_not_track_gradients() -> None:
    scores = torch.randn(3, 4, requires_grad=True)
    ranks = target_ranks(scores, _ranks(0, 1, 2))
    assert ranks.dtype == torch.long
    assert not ranks.requires_grad


# ---------------------------------------------------------------- sampled protocol


def test_sampled_ranks_hand_computed() -> None:
    target = torch.tensor([0.5, 0.5, 0.5])
    negatives = torch.tensor(
        [
            [0.1, 0.2, 0.3],  # none >= 0.5 -> rank 1
            [0.6, 0.5, 0.3],  # 0.6 above and 0.5 tied -> rank 3
            [0.5, 0.5, 0.5],  # all tied -> rank K + 1 = 4
        ]
    )
    assert sampled_ranks(target, negatives).tolist() == [1, 3, 4]


def test_sampled_ranks_shape_check() -> None:
    with pytest.raises(ValueError):
        sampled_ranks(torch.zeros(2), torch.zeros(3, 4))


@FAST
@given(
    st.integers(1, 6).flatmap(
        lambda k: st.lists(
            st.lists(st.integers(-3, 3), min_size=k + 1, max_size=k + 1), min_size=1, max_size=5
        )
    )
)
def test_sampled_matches_full_ranking(rows: list[list[int]]) -> None:
    full = torch.tensor(rows, dtype=torch.float32)  # (B, 1 + K): column 0 is the target
    expected = target_ranks(full, torch.zeros(len(rows), dtype=torch.long))
    assert torch.equal(sampled_ranks(full[:, 0], full[:, 1:]), expected)


# ---------------------------------------------------------------- properties

# Small integer scores so that ties are frequent.
score_rows = st.integers(1, 12).flatmap(
    lambda c: st.tuples(
        st.lists(st.lists(st.integers(-4, 4), min_size=c, max_size=c), min_size=1, max_size=6),
        st.data(),
    )
)


def _brute_force_rank(row: list[float], target: int, excluded: list[bool]) -> int:
    return 1 + sum(
        1 for j, s in enumerate(row) if j != target and not excluded[j] and s >= row[target]
    )


@FAST
@given(score_rows)
def test_rank_properties(case: tuple[list[list[int]], st.DataObject]) -> None:
    rows, data = case
    b, c = len(rows), len(rows[0])
    scores = torch.tensor(rows, dtype=torch.float32)  # (B, C)
    target = torch.tensor(data.draw(st.lists(st.integers(0, c - 1), min_size=b, max_size=b)))
    excl = data.draw(
        st.lists(st.lists(st.booleans(), min_size=c, max_size=c), min_size=b, max_size=b)
    )
    exclude = torch.tensor(excl)  # (B, C)

    ranks = target_ranks(scores, target)
    assert ranks.dtype == torch.long
    assert bool(((ranks >= 1) & (ranks <= c)).all())

    excluded_ranks = target_ranks(scores, target, exclude)
    expected = [_brute_force_rank(rows[i], int(target[i]), excl[i]) for i in range(b)]
    assert excluded_ranks.tolist() == expected
    # Excluding candidates never worsens the target's rank.
    assert bool((excluded_ranks <= ranks).all())

    # Adding a candidate never improves the target's rank (and worsens it by at most one).
    extra = torch.tensor(data.draw(st.lists(st.integers(-5, 5), min_size=b, max_size=b)))
    wider = torch.cat([scores, extra.float().unsqueeze(1)], dim=1)  # (B, C + 1)
    wider_ranks = target_ranks(wider, target)
    assert bool((wider_ranks >= ranks).all())
    assert bool((wider_ranks <= ranks + 1).all())


@FAST
@given(st.lists(st.integers(1, 50), min_size=1, max_size=40))
def test_metric_properties(values: list[int]) -> None:
    ranks = torch.tensor(values, dtype=torch.long)
    m = metrics_from_ranks(ranks)
    assert all(0.0 <= v <= 1.0 for v in m.values())
    assert m["HR@5"] <= m["HR@10"]
    assert m["NDCG@5"] <= m["NDCG@10"]
    assert m["NDCG@5"] <= m["HR@5"] + 1e-12
    assert m["NDCG@10"] <= m["HR@10"] + 1e-12
    assert m["MRR"] <= 1.0
    per = per_user_metrics(ranks)
    for name, value in m.items():
        assert value == pytest.approx(float(per[name].mean()))


# ---------------------------------------------------------------- accumulator


def test_accumulator_matches_one_shot() -> None:
    acc = RankAccumulator()
    assert len(acc) == 0
    assert acc.ranks().shape == (0,)
    acc.update(_ranks(1, 3))
    acc.update(_ranks(12))
    assert len(acc) == 3
    assert acc.ranks().tolist() == [1, 3, 12]
    assert acc.compute() == metrics_from_ranks(_ranks(1, 3, 12))
    assert acc.state()["ranks"].tolist() == [1, 3, 12]


def test_accumulator_merge_and_from_ranks() -> None:
    a = RankAccumulator.from_ranks(_ranks(1, 2))
    b = RankAccumulator.from_ranks(_ranks(3), _ranks(4, 5))
    assert a.merge(b) is a
    assert a.ranks().tolist() == [1, 2, 3, 4, 5]
    assert len(b) == 3  # merge leaves the other accumulator alone
    with pytest.raises(ValueError):
        a.merge(a)
    a.reset()
    assert len(a) == 0
    with pytest.raises(ValueError):
        a.compute()  # no ranks: the means are undefined


@pytest.mark.parametrize("capacity", [0, 2, 5, 6, 50])
def test_accumulator_with_a_buffer_keeps_the_same_ranks(capacity: int) -> None:
    """Ranks copied into a buffer allocated up front (and beyond it, kept batch by batch)
    come back in update order, whatever the capacity; later updates and reset still work."""
    batches = [_ranks(1, 3), _ranks(12), _ranks(2, 7, 4)]
    acc = RankAccumulator(capacity)
    for b in batches:
        acc.update(b)
    if capacity >= 2:  # the first batch went into the buffer: a copy, not the caller's tensor
        batches[0][0] = 99
    want = [1, 3, 12, 2, 7, 4]
    assert len(acc) == 6
    assert acc.ranks().tolist() == want
    acc.update(_ranks(5))
    assert acc.ranks().tolist() == [*want, 5]
    assert acc.compute() == metrics_from_ranks(torch.tensor([*want, 5]))
    acc.reset()
    acc.update(_ranks(8, 9))
    assert len(acc) == 2 and acc.ranks().tolist() == [8, 9]


def test_accumulator_rejects_bad_ranks() -> None:
    with pytest.raises(ValueError):
        RankAccumulator().update(_ranks(0))


# ---------------------------------------------------------------- significance


def test_significance_identical_inputs() -> None:
    ranks = _ranks(1, 3, 12, 2, 7)
    result = paired_significance(ranks, ranks)
    assert result["n"] == 5
    assert result["mean_a"] == result["mean_b"]
    # No difference at all: no evidence against the null (scipy alone would give NaN).
    assert result["t"] == 0.0
    assert result["p"] == 1.0


def test_significance_clearly_different() -> None:
    gen = torch.Generator().manual_seed(1)
    good = torch.randint(1, 4, (200,), generator=gen)  # ranks 1..3
    bad = torch.randint(5, 50, (200,), generator=gen)  # ranks 5..49
    result = paired_significance(good, bad, metric="MRR")
    assert result["mean_a"] > result["mean_b"]
    assert result["t"] > 0
    assert result["p"] < 0.05
    by_name = paired_significance(good, bad, metric="NDCG@10")
    assert by_name == paired_significance(good, bad, metric="NDCG", k=10)
    assert by_name["p"] < 0.05


def test_significance_constant_difference() -> None:
    # HR@5 is 1 for every user of A and 0 for every user of B: a constant difference of 1.
    result = paired_significance(_ranks(1, 2, 3), _ranks(6, 7, 8), metric="HR", k=5)
    assert result["mean_a"] == 1.0
    assert result["mean_b"] == 0.0
    assert result["t"] == math.inf
    assert result["p"] == 0.0


def test_significance_errors() -> None:
    with pytest.raises(ValueError, match="same users"):
        paired_significance(_ranks(1, 2, 3), _ranks(1, 2))
    with pytest.raises(ValueError):
        paired_significance(_ranks(1), _ranks(2))
    with pytest.raises(ValueError):
        paired_significance(_ranks(1, 2), _ranks(2, 1), metric="HR")  # needs k
    with pytest.raises(ValueError):
        paired_significance(_ranks(1, 2), _ranks(2, 1), metric="MRR", k=5)
    with pytest.raises(ValueError):
        paired_significance(_ranks(1, 2), _ranks(2, 1), metric="recall@5")


@pytest.mark.parametrize("wide", [torch.int64, torch.int32])
def test_evaluate_scores_returns_ranks_in_row_order(wide: torch.dtype) -> None:
    """Rows are scored in order of history length; the ranks come back in the rows' order.
    ``negatives`` and ``seen`` as int32 (as ``EvalRows`` keeps them) rank the same."""
    g = torch.Generator().manual_seed(0)
    U, n, N = 37, 6, 25
    history = torch.randint(2, N + 2, (U, n), generator=g)
    for u in range(U):
        history[u, : int(torch.randint(0, n, (1,), generator=g))] = 0  # left padding
    target = torch.randint(2, N + 2, (U,), generator=g)
    negatives = torch.randint(2, N + 2, (U, 5), generator=g)
    table = torch.randn(N + 2, generator=g)

    def score_fn(h: torch.Tensor) -> torch.Tensor:  # depends on the history, row by row
        return table[None, :] * (h != 0).sum(1, keepdim=True) + table[h].sum(1, keepdim=True)

    seen = history.clone()  # the earlier items (here: the history itself), 0-padded
    _, ranks = evaluate_scores(
        score_fn, history, target, negatives.to(wide), seen.to(wide), batch_size=4
    )
    scores = score_fn(history)
    assert torch.equal(ranks["full"], target_ranks(scores, target))
    cand = scores.gather(1, torch.cat([target[:, None], negatives], 1))
    assert torch.equal(ranks["sampled"], sampled_ranks(cand[:, 0], cand[:, 1:]))
    exclude = torch.zeros(U, N + 2, dtype=torch.bool)
    for u in range(U):
        exclude[u, history[u][history[u] != 0]] = True
        exclude[u, target[u]] = False
    assert torch.equal(ranks["full_masked"], target_ranks(scores, target, exclude))


def test_full_masked_protocol_removes_the_history_only() -> None:
    """Masking the history lifts the target exactly by the history items that outscored it,
    never the target itself (even when it appears in ``seen``), and never other items."""
    scores = torch.tensor([[-math.inf, -math.inf, 5.0, 4.0, 3.0, 2.0, 1.0]])
    target = torch.tensor([5])  # score 2.0: items 2, 3, 4 (5, 4, 3) outscore it
    seen = torch.tensor([[0, 2, 4, 5]])  # history: items 2 and 4, plus the target (ignored)
    negatives = torch.tensor([[6]])
    metrics, ranks = evaluate_scores(lambda h: scores, seen, target, negatives, seen)
    assert ranks["full"].tolist() == [4]
    assert ranks["full_masked"].tolist() == [2]  # only item 3 is left above it
    assert ranks["sampled"].tolist() == [1]
    assert set(metrics) == {"sampled", "full", "full_masked"}
