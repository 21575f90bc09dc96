"""bench/by_popularity.py: buckets of equal counts and training counts without the held-out
targets (the numbers of bench/results/by_popularity/ rest on these two)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from helpers import BENCH, load_bench


def load():
    return load_bench("by_popularity")


def test_training_counts_leave_out_the_validation_and_test_targets() -> None:
    bp = load()
    # users: [2 3 4 5] and [3 6 7]: training parts [2 3] and [3]
    artifact = SimpleNamespace(
        offsets=np.array([0, 4, 7]), flat_items=np.array([2, 3, 4, 5, 3, 6, 7])
    )
    counts = bp.training_counts(artifact)
    assert counts.tolist() == [0, 0, 1, 2, 0, 0, 0, 0]


def test_buckets_split_at_quantiles_and_keep_every_value() -> None:
    bp = load()
    values = np.arange(100, dtype=float)
    index, labels = bp.buckets(values, 4)
    assert len(labels) == 4 and np.bincount(index).tolist() == [25, 25, 25, 25]
    assert labels[0] == "0-<24.75" and labels[-1].endswith("99")
    ties = np.array([1.0] * 60 + [5.0] * 40)  # ties collapse the quantile edges
    index, labels = bp.buckets(ties, 4)
    assert index.min() == 0 and index.max() == len(labels) - 1
    assert labels == ["1-<5", "5-5"] and set(index[:60]) == {0} and set(index[60:]) == {1}


def test_breakdown_reads_one_based_ranks_per_bucket() -> None:
    import sys

    sys.path.insert(0, str(BENCH.parent / "src"))
    bp = load()
    ranks = np.array([1, 3, 10, 11])
    runs = {"a": {p: ranks for p in bp.PROTOCOLS}, "b": {p: ranks[::-1] for p in bp.PROTOCOLS}}
    rows = bp.breakdown(runs, np.array([0, 0, 1, 1]), ["low", "high"])
    full = {r["bucket"]: r["models"] for r in rows if r["protocol"] == "full"}
    assert np.isclose(full["low"]["a"]["NDCG@10"], (1.0 + 0.5) / 2)
    assert np.isclose(full["high"]["a"]["NDCG@10"], (1 / np.log2(11) + 0.0) / 2)
    assert full["low"]["a"]["HR@10"] == 1.0 and full["high"]["a"]["HR@10"] == 0.5
    assert np.isclose(full["low"]["b"]["diff_vs_first"], 1 / np.log2(11) / 2 - 0.75)


def test_history_items_count_the_earlier_items_above_the_target() -> None:
    """Full minus history-masked rank counts the user's earlier items above the target; a full
    rank better than the masked one is impossible and an error."""
    bp = load()
    full, masked = np.array([1, 4, 12, 30]), np.array([1, 2, 9, 30])
    h = bp.history_items({"a": {"full": full, "full_masked": masked}})["a"]
    assert np.isclose(h["history_above_target_mean"], (0 + 2 + 3 + 0) / 4)
    assert h["users_with_history_above_target"] == 0.5
    assert np.isclose(h["history_above_target_masked_top10"], (0 + 2 + 3) / 3)
    assert h["full_HR@1"] == h["masked_HR@1"] == 0.25
    assert h["full_HR@10"] == 0.5 and h["masked_HR@10"] == 0.75
    with pytest.raises(ValueError, match="a full rank above"):
        bp.history_items({"b": {"full": masked, "full_masked": full}})
