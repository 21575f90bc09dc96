"""bench/same_keys.py: the same run keys recorded by two versions of the code, paired."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import load_bench

PROTOCOLS = ("full", "full_masked", "sampled")


def write(folder: Path, key: str, seed: int, ranks: np.ndarray, valid: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {p: {"NDCG@10": valid, "HR@10": 2 * valid} for p in PROTOCOLS}
    hit = ranks <= 10
    test = {
        p: {
            "NDCG@10": float(np.where(hit, 1 / np.log2(ranks + 1.0), 0).mean()),
            "HR@10": float(hit.mean()),
        }
        for p in PROTOCOLS
    }
    record = {
        "key": key,
        "seed": seed,
        "commit": "abc",
        "machine": {"cpu": "test"},
        "epochs_run": 10,
        "best_epochs": {"main": 7},
        "train_seconds": 250.0,
        "valid": metrics,
        "test": test,
    }
    (folder / f"{key}.json").write_text(json.dumps(record), encoding="utf-8")
    np.savez(folder / f"{key}.ranks.npz", **{p: ranks.astype(np.int32) for p in PROTOCOLS})


def test_two_folders_are_paired_by_key_and_a_planted_gain_is_found(tmp_path: Path) -> None:
    bench = load_bench("same_keys")
    rng = np.random.default_rng(0)
    a, b = tmp_path / "a", tmp_path / "b"
    for seed, key in enumerate(("k1", "k2"), start=1):
        base = rng.integers(1, 200, size=4000)
        write(a, key, seed, base, 0.05)
        write(b, key, seed, np.maximum(1, base // 2), 0.06)  # every target ranked higher
    write(a, "only-a", 3, rng.integers(1, 200, size=4000), 0.05)  # not in B: not paired
    assert bench.shared_keys(a, b) == ["k1", "k2"]
    got = bench.compare(a, b, bench.shared_keys(a, b))
    full = got["protocols"]["full"]["NDCG@10"]
    assert full["valid"]["diff"] == pytest.approx(0.01)
    assert full["test"]["diff"] > 0.01 and full["test"]["p_paired"] < 1e-6
    # the records' own test metric and the one recomputed from the ranks agree
    assert full["test"]["diff_from_ranks"] == pytest.approx(full["test"]["diff"])
    assert [r["seconds_per_epoch"] for r in got["runs"]["a"]] == [25.0, 25.0]
    lines = bench.table(got, "before", "after")
    assert any(line.startswith("| full | NDCG@10 |") for line in lines)


def test_no_shared_key_or_different_users_are_refused(tmp_path: Path) -> None:
    bench = load_bench("same_keys")
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, "k1", 1, np.arange(1, 101), 0.05)
    write(b, "k2", 1, np.arange(1, 101), 0.05)
    with pytest.raises(SystemExit, match="no run key"):
        bench.compare(a, b, bench.shared_keys(a, b))
    write(b, "k1", 1, np.arange(1, 91), 0.05)
    with pytest.raises(SystemExit, match="different numbers of test users"):
        bench.compare(a, b, ["k1"])
