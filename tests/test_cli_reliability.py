"""What a user sees when something is wrong: a damaged artifact or checkpoint, a run folder
that already holds a run, a bad option; and what they do not see: our dependencies' noise."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import SHORT_RUN
from miir.cli import app

runner = CliRunner()
SMALL = [
    *("--set", "embedding_size=16", "--set", "n_layers=1"),
    *("--set", "n_heads=2", "--set", "max_len=8"),
    *SHORT_RUN,
]


@pytest.fixture(scope="module")
def finished_run(planted_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    res = runner.invoke(app, ["train", "--data", str(planted_artifact), "--out", str(out), *SMALL])
    assert res.exit_code == 0, res.output
    return out


def test_train_refuses_an_existing_run_folder(planted_artifact, finished_run) -> None:
    before = (finished_run / "results.json").read_bytes()
    args = ["train", "--data", str(planted_artifact), "--out", str(finished_run), *SMALL]
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert "not empty" in res.output and "--resume" in res.output and "--overwrite" in res.output
    assert (finished_run / "results.json").read_bytes() == before  # nothing was touched
    res = runner.invoke(app, [*args, "--resume", "--overwrite"])
    assert res.exit_code == 2 and "exclude each other" in res.output


def test_train_overwrite_replaces_the_run(planted_artifact, finished_run, tmp_path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    (out / "stale.txt").write_text("old", encoding="utf-8")
    args = ["train", "--data", str(planted_artifact), "--out", str(out), *SMALL]
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert not (out / "stale.txt").exists() and (out / "results.json").is_file()


def test_a_truncated_checkpoint_is_one_clear_line(finished_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    weights = run / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5])
    res = runner.invoke(app, ["evaluate", "--run", str(run)])
    assert res.exit_code == 2
    assert "model.safetensors" in res.output and "re-run `miir train`" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    (run / "best" / "model.json").write_text("{not json", encoding="utf-8")
    res = runner.invoke(app, ["evaluate", "--run", str(run)])
    assert res.exit_code == 2 and "model.json" in res.output and "damaged" in res.output
    shutil.rmtree(run / "best")
    res = runner.invoke(app, ["evaluate", "--run", str(run)])
    assert res.exit_code == 2 and "not a checkpoint folder" in res.output


def test_a_changed_artifact_file_is_named(planted_artifact, tmp_path) -> None:
    art = tmp_path / "art"
    shutil.copytree(planted_artifact, art)
    path = art / "split" / "valid_target.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    res = runner.invoke(app, ["train", "--data", str(art), "--out", str(tmp_path / "r"), *SMALL])
    assert res.exit_code == 2
    assert "valid_target.npy" in res.output and "checksum mismatch" in res.output
    assert not (tmp_path / "r" / "best").exists()


def test_config_errors_name_the_key_file_and_range(planted_artifact, tmp_path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text("[model]\ndropout = 1.5\n[train]\nlr = 0.01\n", encoding="utf-8")
    base = ["train", "--data", str(planted_artifact), "--out", str(tmp_path / "r")]
    res = runner.invoke(app, [*base, "--config", str(cfg)])
    assert res.exit_code == 2
    assert "run.toml [model]" in res.output and "'dropout'" in res.output
    assert "< 1.0" in res.output and "pydantic" not in res.output
    cfg.write_text("[train]\nlearning_rate = 0.01\n", encoding="utf-8")
    res = runner.invoke(app, [*base, "--config", str(cfg)])
    assert res.exit_code == 2
    assert "unknown option 'learning_rate'" in res.output and "lr" in res.output
    assert "errors.pydantic.dev" not in res.output
    res = runner.invoke(app, [*base, "--set", "n_layrs=2"])
    assert res.exit_code == 2 and "unknown option 'n_layrs'" in res.output
    assert "n_layers" in res.output  # the allowed keys are listed
    res = runner.invoke(app, [*base, "--set", "novalue"])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output
    res = runner.invoke(app, [*base, "--precision", "fp8"])
    assert res.exit_code == 2 and "precision" in res.output and "auto" in res.output


def test_help_keeps_the_section_names() -> None:
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "[model]" in res.output and "[train]" in res.output


def test_lightning_noise_stays_off_the_terminal(planted_artifact, tmp_path) -> None:
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "miir.cli", "train", "--data", str(planted_artifact)]
    proc = subprocess.run(
        [*cmd, "--out", str(out), *SMALL], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    for noise in (
        "GPU available",
        "TPU available",
        "Tip:",
        "LeafSpec",
        "does not have many workers",
    ):
        assert noise not in text, noise
    assert "test/full_masked" in text  # our own table is there
    ranks = np.load(out / "ranks_test.npz")
    assert set(ranks.files) == {"sampled", "full", "full_masked"}
    run = json.loads((out / "run.json").read_text())
    assert run["precision"] in ("bf16", "32-true")  # 'auto' resolved and recorded
