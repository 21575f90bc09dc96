"""bench/by_popularity.py: buckets of equal counts and training counts without the held-out
targets (the numbers of bench/results/by_popularity/ rest on these two)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "by_popularity.py"


def load():
    spec = importlib.util.spec_from_file_location("by_popularity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_ndcg_at_10_from_one_based_ranks() -> None:
    bp = load()
    assert np.allclose(bp.ndcg10(np.array([1, 3, 10, 11])), [1.0, 0.5, 1 / np.log2(11), 0.0])
