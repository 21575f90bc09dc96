"""bench/epoch_time.py: epochs timed from a Lightning callback's stamps."""

from __future__ import annotations

import math

import pytest

from helpers import load_bench


def test_epoch_times_from_stamps() -> None:
    bench = load_bench("epoch_time")
    stamps = [
        ("valid_start", 0, 0.0),  # Lightning's sanity pass before training: not an epoch
        ("valid_end", 0, 1.0),
        ("train_start", 0, 2.0),
        ("valid_start", 0, 10.0),
        ("valid_end", 0, 12.0),
        ("train_end", 0, 12.5),
        ("train_start", 1, 13.0),
        ("valid_start", 1, 19.0),
        ("valid_end", 1, 20.5),
        ("train_end", 1, 21.0),
        ("end", 1, 21.5),
    ]
    got = bench.epoch_times(stamps)
    assert got == [
        {"epoch": 0, "train": 10.5, "valid": 2.0, "epoch_s": 11.0},
        {"epoch": 1, "train": 8.0, "valid": 1.5, "epoch_s": 8.5},
    ]
    # the medians leave the first epoch out
    assert bench.summary([got, got]) == {
        "epoch_s": 8.5,
        "train": 8.0,
        "valid": 1.5,
        "train_without_valid": 6.5,
    }
    # a run cut short: the last epoch without an end has no epoch time
    cut = bench.epoch_times(stamps[:8])
    assert math.isnan(cut[-1]["epoch_s"]) and math.isnan(cut[-1]["train"])
    with pytest.raises(ValueError, match="no epoch after the first"):
        bench.summary([[]])  # no epoch after the first: nothing to report
