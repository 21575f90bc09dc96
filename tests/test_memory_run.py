"""bench/memory_run.py: the sampler that records whole-run peak memory (issue 9) sees a
process's peak and when it rose."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helpers import load_bench

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc (Linux only)"
)


def load():
    return load_bench("memory_run")


def test_trace_sees_the_peak_of_a_process_and_when_it_rose(tmp_path: Path) -> None:
    mr = load()
    # 0.6 s small, then 300 MiB touched and held for 0.6 s, then freed
    code = (
        "import time; time.sleep(0.6); b = bytearray(300 << 20); "
        "b[::4096] = b'x' * len(b[::4096]); time.sleep(0.6); del b; time.sleep(0.3)"
    )
    got = mr.trace([sys.executable, "-c", code], {}, 0.05, tmp_path / "log.txt")
    assert got["peak_mib"] >= 300
    # the kernel's peak is at least every sampled one
    assert got["peak_mib"] >= max(m for _, m in got["peak_rises"])
    assert got["seconds"] >= 1.4
    # the peak rose by 300 MiB after the first 0.6 s, not at the start
    big = [t for t, mib in got["peak_rises"] if mib >= 300]
    assert big and big[0] >= 0.5
    assert got["trace_10s"][0][0] == 0


def test_a_peak_between_two_samples_is_not_missed(tmp_path: Path) -> None:
    """200 MiB held for 0.05 s, sampled every 2 s: only the kernel's peak sees it."""
    mr = load()
    code = (
        "import time; b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096]); "
        "time.sleep(0.05); del b; time.sleep(0.3)"
    )
    got = mr.trace([sys.executable, "-c", code], {}, 2.0, tmp_path / "log.txt")
    assert got["peak_mib"] >= 200


def test_a_failing_command_names_its_log(tmp_path: Path) -> None:
    mr = load()
    with pytest.raises(SystemExit, match=r"log\.txt"):
        mr.trace([sys.executable, "-c", "raise SystemExit(3)"], {}, 0.05, tmp_path / "log.txt")


def test_the_record_says_what_the_run_trained_to(tmp_path: Path) -> None:
    """Each traced run's record carries its epochs, best epoch, training time and test
    NDCG@10 under each protocol, so that two arms are seen to have trained alike."""
    import json

    mr = load()
    run = tmp_path / "run"
    assert mr.run_summary(run) == {}  # a run that wrote no results
    (run / "logs" / "main").mkdir(parents=True)
    (run / "logs" / "main" / "metrics.csv").write_text(
        "epoch,step,train/loss\n0,49,3.0\n0,99,2.5\n1,149,2.0\n2,199,1.9\n", encoding="utf-8"
    )
    metrics = {"full": {"NDCG@10": 0.045812}, "sampled": {"NDCG@10": 0.37}}
    (run / "results.json").write_text(
        json.dumps({"stages": {"main": {"epoch": 1}}, "train_seconds": 12.34, "test": metrics}),
        encoding="utf-8",
    )
    assert mr.run_summary(run) == {
        "best_epoch": {"main": 1},
        "train_seconds": 12.3,
        "test_ndcg10": {"full": 0.0458, "sampled": 0.37},
        "epochs": {"main": 3},
    }
