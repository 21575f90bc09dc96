"""bench/recipe.py: a run's record carries the header every bench record has."""

from __future__ import annotations

import json

from helpers import load_bench

METRICS = {"full": {"NDCG@10": 0.1}, "full_masked": {"NDCG@10": 0.1}, "sampled": {"NDCG@10": 0.3}}


def test_a_run_record_names_the_commit_read_before_training_and_the_machine(
    tmp_path, monkeypatch
) -> None:
    recipe = load_bench("recipe")
    monkeypatch.setattr(recipe, "RECORDS", tmp_path / "records")
    monkeypatch.setattr(recipe, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(recipe, "_curve", lambda out: [{"stage": "main", "epoch": 0}])
    monkeypatch.setattr(recipe, "_keep_ranks", lambda *args: None)
    head = {"commit": "a" * 40}
    monkeypatch.setattr("miir.provenance.git_commit", lambda: {**head, "dirty": False})

    def fake_train(data, out, *args, **kwargs):
        head["commit"] = "b" * 40  # a commit lands while the run trains
        return {
            "run": {"model_config": {}, "train_config": {}},
            "train_seconds": 3.0,
            "checkpoint_epoch": 1,
            "valid": METRICS,
        }

    monkeypatch.setattr("miir.training.train.train", fake_train)
    arm = next(iter(recipe.ARMS))
    record = recipe.run_arm(arm, 1, 2, False, tmp_path / "data")
    saved = json.loads((tmp_path / "records" / f"{arm}-s1-screen2.json").read_text())
    assert saved == record
    assert saved["commit"] == "a" * 40 and saved["dirty"] is False
    assert saved["machine"]["cpu"] and saved["machine"]["native_bf16"] in (True, False)
    assert saved["arm"] == arm and saved["kind"] == "screen2" and saved["seconds_per_epoch"] == 3.0


def test_time_to_quality_counts_epochs_to_the_target_and_names_each_rows_machines() -> None:
    """bench/time_to_quality.py: the first epoch (from 1) at or above the target, None when the
    curve never gets there; a row names the CPUs its runs trained on, since two machines run
    one step at different speeds."""
    ttq = load_bench("time_to_quality")
    assert ttq.epochs_to([0.01, 0.049, 0.05, 0.06], 0.05) == 3
    assert ttq.epochs_to([0.01, 0.02], 0.05) is None
    record = {
        "curve": [{"valid/full/NDCG@10": 0.02}, {"train/loss": 1.0}, {"valid/full/NDCG@10": 0.03}]
    }
    assert ttq.curve(record) == [0.02, 0.03]
    rows = [
        {"cpu": "Intel(R) Xeon(R) Processor"},
        {"cpu": "AMD EPYC"},
        {"cpu": "Intel(R) Xeon(R) Processor"},
        {},
    ]
    assert ttq.machines(rows) == "Xeon 2, AMD EPYC 1, unknown 1"
