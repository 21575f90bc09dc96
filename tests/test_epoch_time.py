"""bench/epoch_time.py: epochs timed from a Lightning callback's stamps."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

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


def test_a_revision_of_src_is_exported_and_imported_first(tmp_path) -> None:
    """``--revs``: a revision's ``src/`` extracted, and a child with it first on PYTHONPATH
    imports that ``miir``, not the installed checkout's."""
    bench = load_bench("epoch_time")
    root = Path(bench.ROOT)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        pytest.skip("not a git checkout: no revision to export")
    src, commit = bench.export_src("HEAD", tmp_path)
    assert commit == head.stdout.strip()
    assert (src / "miir" / "__init__.py").is_file() and src.is_relative_to(tmp_path)
    child = bench.run_child(
        "import json, miir; print('RESULT ' + json.dumps({'f': miir.__file__}))",
        env={"PYTHONPATH": str(src)},
    )
    assert Path(child["f"]).is_relative_to(src)
    assert bench.export_src("worktree", tmp_path)[0] == root / "src"
    with pytest.raises(subprocess.CalledProcessError):
        bench.export_src("no-such-revision-anywhere", tmp_path)
