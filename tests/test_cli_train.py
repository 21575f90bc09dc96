"""`miir train` and `miir evaluate` through the CLI: configs, precedence, errors, outputs."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from helpers import SHORT_RUN
from miir.cli import app

runner = CliRunner()
SMALL = SHORT_RUN


def test_train_with_config_file_and_cli_precedence(
    planted_artifact, planted_discard_artifact, tmp_path
) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        "[model]\nembedding_size = 16\nn_heads = 2\nn_layers = 1\ndropout = 0.0\nmax_len = 8\n"
        "[train]\nlr = 0.01\nbatch_size = 999\n",
        encoding="utf-8",
    )
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        ["train", "--data", str(planted_artifact), "--out", str(out), "--config", str(cfg), *SMALL],
    )
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["model_config"]["embedding_size"] == 16 and run["model_config"]["n_layers"] == 1
    assert run["train_config"]["lr"] == 0.01  # from the file
    assert run["train_config"]["batch_size"] == 16  # the CLI wins over the file
    assert run["train_config"]["batching"] == "packed"  # the default
    assert run["command"].startswith("miir ")
    assert "test/full" in res.output and "valid/sampled" in res.output

    ev = runner.invoke(app, ["evaluate", "--run", str(out), "--stage", "test"])
    assert ev.exit_code == 0, ev.output
    saved = json.loads((out / "evaluation.json").read_text())
    assert set(saved) >= {"test"} and "valid" not in saved
    assert saved["test"] == json.loads((out / "results.json").read_text())["test"]

    # a run on the discard version of the artifact has the same evaluation cases: comparable
    other = tmp_path / "run-d"
    args = ["train", "--data", str(planted_discard_artifact), "--out", str(other)]
    res = runner.invoke(
        app, [*args, "--config", str(cfg), "--variant", "miir-r", "--batching", "buckets", *SMALL]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((other / "run.json").read_text())["train_config"]["batching"] == "buckets"
    assert (
        run["artifact"]["cases_sha256"]
        == json.loads((other / "run.json").read_text())["artifact"]["cases_sha256"]
    )
    cmp = runner.invoke(app, ["compare", str(out), str(other), "--stage", "valid"])
    assert cmp.exit_code == 0, cmp.output
    assert "full/NDCG@10" in cmp.output and "MIIR-R" in cmp.output


def test_config_errors_are_reported(planted_artifact, tmp_path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[model]\nembeding_size = 16\n", encoding="utf-8")
    res = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(planted_artifact),
            "--out",
            str(tmp_path / "r"),
            "--config",
            str(cfg),
        ],
    )
    assert res.exit_code == 2 and "embeding_size" in res.output
    res = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(planted_artifact),
            "--out",
            str(tmp_path / "r"),
            "--variant",
            "miir-x",
        ],
    )
    assert res.exit_code == 2 and "miir-r" in res.output  # lists the valid variants
    res = runner.invoke(
        app,
        ["train", "--data", str(planted_artifact), "--out", str(tmp_path / "r"), "--model", "gru"],
    )
    assert res.exit_code == 2 and "registered models: miir" in res.output
    res = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(planted_artifact),
            "--out",
            str(tmp_path / "r"),
            "--fields",
            "colour",
            *SMALL,
        ],
    )
    assert res.exit_code == 2 and "colour" in res.output
    res = runner.invoke(
        app, ["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"), *SMALL]
    )
    assert res.exit_code == 2 and "manifest.json" in res.output
    res = runner.invoke(app, ["evaluate", "--run", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "model.json" in res.output


def test_paper_preset_sits_under_the_users_options(planted_artifact, tmp_path) -> None:
    """`--preset paper` gives the paper's settings; a config file and the command line still
    win over it; an unknown preset is named."""
    from miir.presets import preset_overrides

    model, train = preset_overrides("paper", "miir-r")
    assert model["dropout"] == 0.5 and model["item_mask_prob"] == 0.0 and train["lr"] == 1e-4
    assert preset_overrides("paper", "sasrec")[0] == {}  # baselines keep their own options
    assert preset_overrides("default", "miir") == ({}, {})
    out = tmp_path / "paper"
    small = ["--set", "embedding_size=16", "--set", "n_heads=2", "--set", "n_layers=1"]
    args = ["train", "--data", str(planted_artifact), "--out", str(out), *small, *SMALL]
    res = runner.invoke(app, [*args, "--preset", "paper", "--set", "mask_prob=0.3"])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["model_config"]["dropout"] == 0.5  # the paper's
    assert run["model_config"]["mask_prob"] == 0.3  # the user's, over the preset
    assert run["model_config"]["item_mask_prob"] == 0.0
    assert run["train_config"]["lr"] == 1e-4
    assert run["train_config"]["max_epochs"] == 1  # --epochs 1 over the paper's 100
    res = runner.invoke(app, [*args, "--overwrite", "--preset", "fast"])
    assert res.exit_code == 2 and "unknown preset 'fast'" in res.output and "paper" in res.output


def test_models_options_lists_each_option_in_aligned_columns() -> None:
    """`miir models --options miir`: one line per option, the defaults in one column however
    long an option's name or default is (next_item_exclude_history, field_weights)."""
    from miir.models import get_entry

    result = runner.invoke(app, ["models", "--options", "miir"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    keys = list(get_entry("miir").cls.Config.model_fields)
    assert [line.split()[0] for line in lines] == keys
    starts = set()
    for line, key in zip(lines, keys, strict=True):
        rest = line[len(key) :]
        assert rest[:2] == "  ", line  # at least two spaces after the name
        starts.add(len(line) - len(rest.lstrip()))
    assert len(starts) == 1  # every default begins in the same column
    weights = next(line for line in lines if line.startswith("field_weights"))
    assert "{'item_id': 3.0}  " in weights
