"""bench/imputation.py: the paper's Table 11 reading (MIIR against LRMM) names each claim held
or not from the paired comparisons, with the data set's text field standing for the paper's
title where there is none (amazon-sports: keywords)."""

from __future__ import annotations

import pytest

from helpers import load_bench


def cell(diff: float, p: float) -> dict:
    return {"diff": diff, "p": p, "floor": 0.0}  # a known floor (seeds) of zero


def test_the_table_11_reading_judges_each_claim_and_reads_the_text_field() -> None:
    bench = load_bench("imputation")
    art = {"path": "artifacts/sports-d"}
    pair = {
        "a": "MIIR (run)",
        "b": "LRMM (run)",
        "artifact": art,
        "fields": {
            "categories": {"precision": cell(0.09, 1e-9), "recall": cell(-0.15, 1e-9)},
            "brand": {"accuracy": cell(0.02, 1e-4)},  # the paper: MIIR worse
            "keywords": {"mse": cell(-1e-4, 1e-3), "nearest_hit": cell(0.0, 0.9)},
        },
    }
    lines = bench.pairs_markdown({"pairs": [pair]}, "artifacts/sports-d")
    rows = {line.split(" | ")[2]: line for line in lines if line.startswith("| MIIR (run) | LRMM")}
    assert rows["categories precision"].endswith("| held |")
    assert rows["categories recall"].endswith("| held |")
    assert rows["brand accuracy"].endswith("| not held |")
    assert rows["keywords mse"].endswith("| held |")  # lower MSE: MIIR better, as the paper's
    assert "title mse" not in rows
    # a text-free comparison states no text claim
    del pair["fields"]["keywords"]
    lines = bench.pairs_markdown({"pairs": [pair]}, "artifacts/sports-d")
    assert not any("mse" in line for line in lines if line.startswith("| MIIR (run) | LRMM"))


def test_the_reading_does_not_depend_on_the_order_the_runs_are_given() -> None:
    """LRMM listed before MIIR: the same claims, the differences turned round; the
    informative precision is judged beside the plain one."""
    bench = load_bench("imputation")
    art = {"path": "artifacts/sports-d"}
    fields = {
        "categories": {
            "precision": {"a": 0.88, "b": 1.0, **cell(-0.12, 1e-9)},
            "inf_precision": {"a": 0.30, "b": 0.0, **cell(0.30, 1e-9)},
        }
    }
    pair = {"a": "LRMM (run)", "b": "MIIR (run)", "artifact": art, "fields": fields}
    lines = bench.pairs_markdown({"pairs": [pair]}, "artifacts/sports-d")
    rows = {line.split(" | ")[2]: line for line in lines if line.startswith("| MIIR (run) | LRMM")}
    assert "(+0.1200, p 1.0e-09) | 0.0000 | held |" in rows["categories precision"]
    assert "(-0.3000, p 1.0e-09) | 0.0000 | not held |" in rows["categories inf_precision"]


def _row(label: str, kind: str, group: str | None, seed: int | None, acc) -> dict:
    """A scored run (or reference) of one field, brand accuracy per cell ``acc`` over 300
    cells of 30 items (each in 10 users' windows)."""
    import numpy as np

    from miir.evaluation.imputation import Cells

    acc = np.asarray(acc, dtype=np.float64)
    n = len(acc)
    cells = Cells(
        np.arange(n), np.ones(n, dtype=np.int64), np.arange(n) % 30 + 2, {"accuracy": acc}
    )
    scope = {"cells": n, "accuracy": float(acc.mean())}
    fields = {"brand": {"kind": "categorical", "metrics": ["accuracy"], "all": scope,
                        "history": scope, "target": {"cells": 0, "accuracy": None}}}  # fmt: skip
    return {"label": label, "imputer": label.split(" ")[0], "kind": kind, "group": group,
            "seed": seed, "artifact": {"path": "art", "name": "toy", "discard": 0.5},
            "fields": fields, "cells": {"brand": cells}}  # fmt: skip


def test_seed_groups_are_read_as_one_model_with_their_spread_as_the_floor() -> None:
    """Two MIIR runs that differ only in the seed form one group (cell means over the seeds);
    LRMM, one run, is compared with the group; a gap smaller than the two seeds' gap is inside
    the noise however small its p, and a wider one is judged."""
    import numpy as np

    bench = load_bench("imputation")
    rng = np.random.default_rng(0)
    base = (rng.random(300) < 0.5).astype(float)
    flip = rng.random(300)
    s1 = np.where(flip < 0.05, 1.0, base)  # seed 1: 5% of the cells more right
    s2 = np.where(flip > 0.95, 0.0, base)  # seed 2: 5% fewer: the seeds are ~0.05 apart
    lrmm_close = np.where(flip < 0.02, 0.0, base)  # LRMM just below the group's mean
    rows = [
        _row("MIIR (s1)", "model", "g", 1, s1),
        _row("MIIR (s2)", "model", "g", 2, s2),
        _row("LRMM (run)", "model", "h", 1, lrmm_close),
        _row("most-frequent", "reference", None, None, np.zeros(300)),
    ]
    groups = bench.seed_groups(rows)
    assert len(groups) == 1 and groups[0]["members"] == ["MIIR (s1)", "MIIR (s2)"]
    # the runs given in another order (stored files sort by run key): the same group, seeds in order
    assert bench.seed_groups([rows[1], rows[0]])[0]["label"] == "MIIR (seeds 1, 2: mean)"
    gap = groups[0]["spread"]["brand"]["accuracy"]
    assert gap == pytest.approx(abs(s1.mean() - s2.mean()))
    mean = groups[0]["fields"]["brand"]["all"]["accuracy"]
    assert mean == pytest.approx((s1.mean() + s2.mean()) / 2)
    pairs = bench.pair_results(rows, groups)
    # the group against LRMM and the reference; LRMM against the reference; no seed alone
    assert [(p["a"], p["b"]) for p in pairs] == [
        ("MIIR (seeds 1, 2: mean)", "LRMM (run)"),
        ("MIIR (seeds 1, 2: mean)", "most-frequent"),
        ("LRMM (run)", "most-frequent"),
    ]
    close = pairs[0]["fields"]["brand"]["accuracy"]
    assert close["floor"] == pytest.approx(gap) and 0 < close["diff"] < gap
    assert bench._verdict("accuracy", close["diff"], 1e-9, close["floor"]) == "inside the noise"
    far = pairs[1]["fields"]["brand"]["accuracy"]
    assert bench._verdict("accuracy", far["diff"], far["p"], far["floor"]) == "better"
    lines = bench.pairs_markdown({"pairs": pairs}, "art")
    brand = next(line for line in lines if line.startswith("| MIIR") and "brand accuracy" in line)
    assert "| inside the noise |" in brand  # the paper's "MIIR worse on brands": not settled
    # with no seeds anywhere a verdict says it rests on one run each
    lone = [_row("MIIR (s1)", "model", "g", 1, s1), _row("LRMM (run)", "model", "h", 1, lrmm_close)]
    lone = bench.pair_results(lone, bench.seed_groups(lone))
    lines = bench.pairs_markdown({"pairs": lone}, "art")
    brand = next(line for line in lines if line.startswith("| MIIR") and "brand accuracy" in line)
    assert "(one run each: not established)" in brand and "| – |" in brand


def test_a_second_seed_group_sets_the_floor_by_the_larger_seed_sd() -> None:
    """Two groups against each other: the floor is the larger of their seed standard
    deviations (not the widest gap of one group)."""
    import numpy as np

    bench = load_bench("imputation")
    rng = np.random.default_rng(1)
    base = (rng.random(300) < 0.5).astype(float)
    flip = rng.random(300)
    rows = [
        _row("MIIR (s1)", "model", "g", 1, np.where(flip < 0.10, 1.0, base)),
        _row("MIIR (s2)", "model", "g", 2, np.where(flip > 0.90, 0.0, base)),
        _row("LRMM (s1)", "model", "h", 1, np.where(flip < 0.02, 1.0, base)),
        _row("LRMM (s2)", "model", "h", 2, base),
    ]
    groups = bench.seed_groups(rows)
    assert [len(g["members"]) for g in groups] == [2, 2]
    sds = [g["sd"]["brand"]["accuracy"] for g in groups]
    assert sds[0] > sds[1] > 0
    (pair,) = bench.pair_results(rows, groups)
    assert pair["fields"]["brand"]["accuracy"]["floor"] == pytest.approx(max(sds))


def test_groups_of_one_imputer_are_named_by_the_options_they_differ_in() -> None:
    """The default MIIR and MIIR with another loss weight, three seeds each, on one artifact:
    each group's label names the model option that tells it from the other (the options they
    share are left out); without their configs, the group id."""
    import numpy as np

    bench = load_bench("imputation")
    common = {"mask_prob": 0.3, "dropout": 0.1}

    def rows(with_config: bool) -> list[dict]:
        rng = np.random.default_rng(2)
        out = []
        for group, weights in (("g0", {"item_id": 3}), ("g1", {"item_id": 3, "categories": 30})):
            for seed in (3, 1, 2):
                row = _row(f"MIIR ({group}{seed})", "model", group, seed, rng.random(300) < 0.5)
                if with_config:
                    row["config"] = {**common, "field_weights": weights}
                out.append(row)
        return [*out, _row("LRMM (run)", "model", "h", 1, rng.random(300) < 0.5)]

    named = rows(with_config=True)
    groups = bench.seed_groups(named)
    labels = [g["label"] for g in groups]
    assert labels == [
        'MIIR (field_weights={"item_id": 3}; seeds 1, 2, 3: mean)',
        'MIIR (field_weights={"categories": 30, "item_id": 3}; seeds 1, 2, 3: mean)',
    ]
    pairs = bench.pair_results(named, groups)
    assert (pairs[0]["a"], pairs[0]["b"]) == (labels[0], labels[1])
    labels = [g["label"] for g in bench.seed_groups(rows(with_config=False))]
    assert labels == [
        "MIIR (group g0; seeds 1, 2, 3: mean)",
        "MIIR (group g1; seeds 1, 2, 3: mean)",
    ]


def test_an_option_a_group_was_recorded_without_reads_as_its_neutral_value() -> None:
    """Runs recorded before ``multi_loss`` existed lack it in their configs: beside a group
    trained with ``multi_loss=per_value`` they are named by its neutral value, not null."""
    import numpy as np

    bench = load_bench("imputation")
    rng = np.random.default_rng(3)
    rows = []
    for group, extra in (("old", {}), ("new", {"multi_loss": "per_value"})):
        for seed in (1, 2):
            row = _row(f"MIIR ({group}{seed})", "model", group, seed, rng.random(200) < 0.5)
            row["config"] = {"dropout": 0.1, **extra}
            rows.append(row)
    labels = [g["label"] for g in bench.seed_groups(rows)]
    assert labels == [
        'MIIR (multi_loss="mean"; seeds 1, 2: mean)',
        'MIIR (multi_loss="per_value"; seeds 1, 2: mean)',
    ]


def test_run_identity_ignores_the_seed_machine_options_and_options_at_their_neutral_value(
    tmp_path,
) -> None:
    """Runs that differ in the seed, the threads or an option added later at its neutral
    value share an identity; a changed learning rate does not."""
    import json

    bench = load_bench("imputation")

    def run(name: str, config: dict, train: dict):
        folder = tmp_path / name / "best"
        folder.mkdir(parents=True)
        meta = {"model": "miir", "config": config, "train_config": train}
        (folder / "model.json").write_text(json.dumps(meta), encoding="utf-8")
        return bench.run_identity(tmp_path / name)

    old = run("old", {"mask_prob": 0.3}, {"lr": 1e-3, "seed": 1, "threads": 2})
    new = run(
        "new",
        {"mask_prob": 0.3, "rfs_prob": 0.0},  # rfs_prob: added later, neutral at 0
        {"lr": 1e-3, "seed": 2, "threads": 1, "copies": 1},
    )
    other = run("other", {"mask_prob": 0.3}, {"lr": 2e-3, "seed": 3, "threads": 2})
    assert old[0] == new[0] != other[0]
    assert (old[1], new[1]) == (1, 2)


def test_a_stored_scoring_stands_in_for_its_run_and_is_refused_on_another_artifact(
    planted_discard_artifact, tmp_path
) -> None:
    """Two seeds scored from their run folders, and again with one of them read from the file
    ``--keep`` wrote: the same table, groups and paired comparisons. A stored scoring is refused
    beside an artifact prepared otherwise, and a run given twice is refused."""
    import json
    import shutil

    import numpy as np
    from typer.testing import CliRunner

    from conftest import planted_raw
    from helpers import SHORT_RUN
    from miir.cli import app
    from miir.data.artifact import Artifact
    from miir.data.prepare import PrepareConfig, prepare
    from miir.errors import ConfigError

    bench = load_bench("imputation")
    runs = []
    for seed in (1, 2):
        out = tmp_path / f"miir-s{seed}"
        args = ["train", "--data", str(planted_discard_artifact), "--out", str(out), *SHORT_RUN]
        args += ["--set", "max_len=8", "--set", "embedding_size=16", "--seed", str(seed)]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        runs.append(str(out))
    common = ["--imputers", "most-frequent", "--batch-size", "64"]
    kept = tmp_path / "scores"
    bench.main([*runs, *common, "--name", "fresh", "--out", str(tmp_path), "--keep", str(kept)])
    stored = sorted(kept.rglob("*.npz"))
    assert [p.name for p in stored] == ["miir-s1.npz", "miir-s2.npz"]
    with np.load(stored[0], allow_pickle=False) as z:  # no pickled objects in it
        meta = json.loads(str(z["meta"]))
    assert meta["model_json"]["train_config"]["seed"] == 1 and "catalogue" not in meta["model_json"]
    assert meta["run_json"]["command"]  # how the run was trained
    assert set(meta["results_json"]["test"]) >= {"full", "full_masked", "sampled"}
    bench.main([str(stored[0]), runs[1], *common, "--name", "mixed", "--out", str(tmp_path)])
    fresh, mixed = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("fresh", "mixed"))

    def summary(record: dict) -> list:
        return [(r["label"], r["fields"]) for r in record["results"]]

    assert summary(mixed) == summary(fresh)
    assert [g["fields"] for g in mixed["groups"]] == [g["fields"] for g in fresh["groups"]]
    assert len(fresh["groups"]) == 1  # the two seeds form a group, stored or not
    assert mixed["pairs"] == fresh["pairs"]
    table = (tmp_path / "mixed.md").read_text()
    assert "| stored miir-s1.npz |" in table and "| scored |" in table
    # the run's best epoch and test NDCG@10 travel with the stored scoring
    assert [r["trained"] for r in mixed["results"][:1]] == [fresh["results"][0]["trained"]]
    assert fresh["results"][0]["trained"]["best_epoch"] == 1
    # the same run twice, once stored and once from its folder
    with pytest.raises(SystemExit, match="given twice"):
        bench.main([str(stored[0]), runs[0], *common, "--name", "twice", "--out", str(tmp_path)])
    # beside an artifact with another discard the cells are not the same: refused
    other = tmp_path / "planted-d3"
    config = PrepareConfig(n_negatives=20, max_len=8, encode_text=False, discard=0.3)
    prepare(planted_raw(), other, config, progress=False)
    with pytest.raises(ConfigError, match=r"another artifact.*another preparation"):
        bench.load_scores(stored[0], Artifact(other))
    # and where the artifact it names is gone, the message says what to do
    with pytest.raises(ConfigError, match="prepare it"):
        moved = tmp_path / "moved.npz"
        moved.write_bytes(stored[0].read_bytes())
        shutil.move(planted_discard_artifact, tmp_path / "elsewhere")
        try:
            bench.load_scores(moved)
        finally:
            shutil.move(tmp_path / "elsewhere", planted_discard_artifact)


def test_text_vectors_may_round_differently_but_not_differ() -> None:
    bench = load_bench("imputation")
    stored = {"files": "abc", "text": {"title": [12.5, 300.0]}}
    assert (
        bench.identity_mismatch(stored, {"files": "abc", "text": {"title": [12.5, 300.0]}}) is None
    )
    rounded = {"files": "abc", "text": {"title": [12.5 + 1e-6, 300.0 * (1 + 1e-7)]}}
    assert bench.identity_mismatch(stored, rounded) is None
    moved = {"files": "abc", "text": {"title": [13.0, 310.0]}}
    assert "true vectors of 'title'" in bench.identity_mismatch(stored, moved)
    assert "another preparation" in bench.identity_mismatch(stored, {**stored, "files": "abd"})
