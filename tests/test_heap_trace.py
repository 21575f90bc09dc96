"""bench/heap_trace.py: glibc's heap accounting, read through ``mallinfo2``, sees an allocation
come and go; the summary reads training from the second epoch on."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from helpers import load_bench


def load():
    return load_bench("heap_trace")


def test_heap_accounting_sees_an_allocation_and_its_release() -> None:
    ht = load()
    if not sys.platform.startswith("linux") or ht.heap_mib() is None:
        pytest.skip("needs glibc's mallinfo2 (Linux, glibc 2.33 or later)")
    before = ht.heap_mib()
    block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, written
    held = ht.heap_mib()
    # in the heap or mapped beside it, depending on malloc's settings
    grown = (held["in_use"] + held["mapped"]) - (before["in_use"] + before["mapped"])
    assert 63 <= grown <= 80
    del block
    after = ht.heap_mib()
    assert (after["in_use"] + after["mapped"]) - (before["in_use"] + before["mapped"]) < 8
    assert ht.proc_mib()["peak"] >= ht.proc_mib()["rss"] > 0


def _sample(tag: str, in_use: float, peak: float = 500.0) -> dict:
    return {
        "tag": tag,
        "t": 0.0,
        "rss": in_use + 300,
        "peak": peak,
        "in_use": in_use,
        "free": 10.0,
        "heap": in_use + 10,
        "mapped": 5.0,
    }


def test_summary_reads_training_from_the_second_epoch_and_the_peak_of_all() -> None:
    ht = load()
    samples = [
        _sample("imports", 100, 300),
        _sample("epoch 0 step 0", 200),
        _sample("epoch 0 step 20", 250),
        _sample("epoch 0 validation start", 900, 900),  # not a step: only its peak counts
        _sample("epoch 1 step 0", 280),
        _sample("epoch 1 step 20", 290),
        _sample("epoch 1 step 40", 300),
        _sample("end", 120),
    ]
    s = ht.summarise(samples)
    assert s["peak_mib"] == 900
    assert s["imports_in_use_mib"] == 100 and s["first_step_in_use_mib"] == 200
    assert s["train_in_use_mib"] == 290  # median of epoch 1's steps, not epoch 0's
    record = {"summary": s, "epochs": 2, "threads": 1, "reps": 2, "peaks": [880, 920]}
    row = ht.table({"x": {**record, "commit": "abc", "command": "c"}}).splitlines()[-1]
    assert row.startswith("| x | 2 | 1 | 2 | 900 (880-920) | 400 / 100 | 200 | ")
