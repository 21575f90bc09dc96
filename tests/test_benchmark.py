"""`miir benchmark`: grid validation, run keys, records, skipping and resuming, tables, figures."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from miir.benchmark import (
    CaseTable,
    Cell,
    ClaimSpec,
    RecordStore,
    _dry_run,
    ensure_artifact,
    grid_cases,
    judge_claim,
    load_grid,
    parse_only,
    plan,
    run_benchmark,
)
from miir.cli import app
from miir.errors import ConfigError
from miir.evaluation.evaluate import PROTOCOL_LABELS

runner = CliRunner()
TINY = {"embedding_size": 16, "n_layers": 1, "n_heads": 2, "max_len": 8, "dropout": 0.0}
TRAIN = {
    "max_epochs": 1,
    "min_epochs": 0,
    "limit_train_batches": 2,
    "batch_size": 16,
    "threads": 1,
    "progress": False,
}


def write_grid(path: Path, grid: dict) -> Path:
    path.write_text(yaml.safe_dump(grid, sort_keys=False), encoding="utf-8")
    return path


def planted_grid(given: Path, discard: Path, **changes: object) -> dict:
    """sasrec and miir, two seeds each, on the planted artifact as given and with discard."""
    grid = {
        "name": "planted",
        "settings": {"given": {"discard": 0.0}, "D": {"discard": 0.5}},
        "data": {"planted": {"artifacts": {"given": str(given), "D": str(discard)}}},
        "seeds": [1, 2],
        "train": dict(TRAIN),
        "model": dict(TINY),
        "models": ["sasrec", "miir"],
    }
    grid.update(changes)
    return grid


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {"out": tmp_path / "tables", "records": tmp_path / "records", "runs": tmp_path / "runs"}


def bench(grid: Path, dirs: dict[str, Path], **kwargs: object):
    return run_benchmark(
        grid,
        out=dirs["out"],
        records=dirs["records"],
        runs_root=dirs["runs"],
        echo=lambda _: None,
        **kwargs,
    )


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"modls": []}, "unknown key 'modls'; allowed: cache, claims, data, model, models"),
        ({"models": [{"name": "sasrec", "trian": {}}]}, "unknown key 'models[0].trian'"),
        ({"settings": {"given": {"discrad": 0.5}}}, "unknown key 'settings.given.discrad'"),
        ({"data": {"p": {"source": "x", "artifacts": {"given": "y"}}}}, "either 'source'"),
        ({"data": {"p": {"artifacts": {"E": "y"}}}}, "unknown setting(s) ['E']"),
        ({"train": {"seed": 3}}, "set seeds with 'seeds'"),
        ({"target": "nova"}, "target 'nova' is not one of the grid's models"),
        ({"data": {"p": {"source": "x", "prepare": {"negatives": 5}}}}, "unknown option"),
        ({"data": {"p": {"source": "x", "prepare": {"discard": 0.5}}}}, "comes from the settings"),
        ({"models": [{"name": "sasrec", "settings": ["D"]}]}, "models[0] names unknown setting"),
        (
            {"claims": [{"text": "x", "better": "sasrec", "worse": "FDSA"}]},
            "claims[0].worse: 'FDSA' is not a model of the grid (SASRec)",
        ),
        ({"claims": [{"text": "x", "better": "a", "worse": "b", "metric": "AUC"}]}, "'AUC'"),
    ],
)
def test_grid_errors_name_the_key_and_file(tmp_path, change, expected) -> None:
    grid = {"data": {"p": {"artifacts": {"given": "a"}}}, "models": ["sasrec"], **change}
    path = write_grid(tmp_path / "grid.yaml", grid)
    with pytest.raises(ConfigError) as err:
        load_grid(path)
    assert expected in str(err.value) and str(path) in str(err.value)


def test_unregistered_models_are_listed_when_planned(tmp_path, planted_artifact) -> None:
    grid = {
        "data": {"p": {"artifacts": {"given": str(planted_artifact)}}},
        "models": ["sasrec", "caser", "s3rec"],
    }
    path = write_grid(tmp_path / "grid.yaml", grid)
    loaded = load_grid(path)  # the file is valid: names are checked against the registry later
    with pytest.raises(
        ConfigError, match=r"unknown model\(s\) 'caser', 's3rec'; registered models"
    ):
        plan(loaded)
    res = runner.invoke(app, ["benchmark", str(path), "--dry-run"])
    assert res.exit_code == 2 and "'caser'" in res.output


def test_bad_yaml_and_bad_only(tmp_path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("models: [sasrec\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_grid(path)
    with pytest.raises(ConfigError, match="KEY one of model, label, data, setting, seed"):
        parse_only(["modle=sasrec"])
    assert parse_only(["model=sasrec,MIIR", "seed=1"]) == {
        "model": {"sasrec", "miir"},
        "seed": {"1"},
    }


def test_dry_run_without_the_artifact_does_not_call_a_record_shared(
    tmp_path, planted_artifact
) -> None:
    """Where a case's artifact is absent the run has no key and its record is found by its
    configs; the dry run says so instead of calling the run shared with another setting."""
    grid = {"data": {"p": {"artifacts": {"given": str(planted_artifact)}}}, "models": ["sasrec"]}
    runs = plan(load_grid(write_grid(tmp_path / "grid.yaml", grid)))
    run = runs[0]
    store = RecordStore(tmp_path / "records")
    record = _record_of(run, ("cases-a", "identity-a"))
    store.by_key[record["key"]] = record
    run.key = None  # as plan() leaves it when the artifact is absent
    lines: list[str] = []
    _dry_run(runs, [run], store, tmp_path / "runs", lines.append)
    assert "found by its configs" in lines[0] and "shared" not in lines[0]
    assert "1 recorded, 0 to run" in lines[-1]


def _record_of(run, sums: tuple[str, str], setting: str | None = None) -> dict:
    """A minimal record of ``run`` trained on an artifact with checksums ``sums``."""
    from miir.benchmark import run_key

    return {
        "key": run_key(run.model, run.model_config, run.train_config, *sums),
        "config_sha256": "written-under-older-keying-rules",
        "data": run.data,
        "setting": setting or run.setting,
        "imputed_by": None,
        "artifact": {"cases_sha256": sums[0], "identity_sha256": sums[1]},
        "date": "2026-12-06",
    }


def test_a_record_is_found_by_its_own_checksums_when_the_artifact_is_absent(
    tmp_path, planted_artifact
) -> None:
    """Without the artifact a run has no key; its record is the one whose key is the run's key
    over the record's own artifact checksums, even where the record's stored config hash came
    from older keying rules (a neutral option added since), and never a record of another seed."""
    grid = {"data": {"p": {"artifacts": {"given": str(planted_artifact)}}}, "models": ["sasrec"]}
    grid["seeds"] = [1, 2]
    runs = plan(load_grid(write_grid(tmp_path / "grid.yaml", grid)))
    store = RecordStore(tmp_path / "records")
    record = _record_of(runs[0], ("cases-a", "identity-a"))
    store.by_key[record["key"]] = record
    for run in runs:
        run.key = None  # as plan() leaves it when the artifact is absent
    assert store.find(runs[0]) is record
    assert store.find(runs[1]) is None  # seed 2: another key over the same checksums


def test_an_id_only_run_shares_a_record_of_the_same_cases_when_its_twin_is_absent(
    tmp_path, planted_artifact, planted_discard_artifact
) -> None:
    """An ID-only model's run on the discard setting is its given run (same cases); with the
    given artifact absent there is no twin, and the record is found by the cases checksum. A
    side-aware model never shares, and other cases are not the same computation."""
    from miir.benchmark import artifact_checksums

    grid = {
        "data": {
            "p": {"artifacts": {"given": str(planted_artifact), "D": str(planted_discard_artifact)}}
        },
        "settings": {"given": {"discard": 0.0}, "D": {"discard": 0.5}},
        "models": ["sasrec", {"name": "fdsa", "model": {"fields": ["color"]}}],
    }
    runs = plan(load_grid(write_grid(tmp_path / "grid.yaml", grid)))
    by = {(r.model, r.setting): r for r in runs}
    sums = artifact_checksums(planted_artifact)
    assert sums is not None and sums[0] == artifact_checksums(planted_discard_artifact)[0]
    store = RecordStore(tmp_path / "records")
    for model in ("sasrec", "fdsa"):
        record = _record_of(by[(model, "given")], sums)
        store.by_key[record["key"]] = record
    d_sasrec, d_fdsa = by[("sasrec", "D")], by[("fdsa", "D")]
    d_sasrec.twin = None  # as plan() leaves it when the given artifact is absent
    assert d_sasrec.key is not None and store.find(d_sasrec)["setting"] == "given"
    assert store.find(d_fdsa) is None
    d_sasrec.cases_sha256 = "other-cases"
    assert store.find(d_sasrec) is None
    lines: list[str] = []
    d_sasrec.cases_sha256 = sums[0]
    _dry_run(runs, [d_sasrec], store, tmp_path / "runs", lines.append)
    assert "recorded (shared: the same run on p (given))" in lines[0]


def test_only_label_picks_one_column_where_model_picks_its_kin() -> None:
    """``model=`` matches a registry name or a label: ``model=MIIR`` selects every column
    built from ``miir``; ``label=`` matches the column label alone."""
    from miir.benchmark import grid_labels, selected

    grid = load_grid(Path(__file__).resolve().parents[1] / "bench" / "grids" / "beauty.yaml")
    assert ("MIIR (bidirectional)", "miir") in grid_labels(grid)  # no artifact needed

    class Run:
        def __init__(self, label: str, model: str) -> None:
            self.label, self.model, self.data, self.setting, self.seed = label, model, "b", "D", 1

    columns = [Run(label, model) for label, model in grid_labels(grid)]
    by_model = [r.label for r in columns if selected(r, parse_only(["model=MIIR"]))]
    by_label = [r.label for r in columns if selected(r, parse_only(["label=MIIR"]))]
    assert by_model == [
        "MIIR",
        "MIIR (mean multi loss)",
        "MIIR (mask 0.5)",
        "MIIR (sequence mean)",
        "MIIR (bidirectional)",
        "MIIR (clean next-item)",
        "MIIR (previous recipe)",
    ]
    assert by_label == ["MIIR"]
    nova = [r.label for r in columns if selected(r, parse_only(["label=nova"]))]
    assert nova == ["NOVA"]  # not NOVA+LRMM, which model=nova also selects


# ------------------------------------------------------------------------------ keys


def test_key_follows_configs_not_grid_order(
    tmp_path, planted_artifact, planted_discard_artifact
) -> None:
    def keys(**changes: object) -> dict[tuple, str]:
        grid = planted_grid(planted_artifact, planted_discard_artifact, **changes)
        runs = plan(load_grid(write_grid(tmp_path / "g.yaml", grid)))
        return {(r.model, r.setting, r.seed): r.key for r in runs}

    base = keys()
    assert len(set(base.values())) == 8 and all(base.values())
    # order of models, seeds and settings, labels and display-only options: same runs
    reordered = keys(
        models=[{"name": "miir", "label": "Ours"}, "sasrec"],
        seeds=[2, 1],
        settings={"D": {"discard": 0.5}, "given": {"discard": 0.0}},
        train={**TRAIN, "progress": True},
    )
    assert reordered == base
    # a config value changes the key of that model only
    changed = keys(models=["sasrec", {"name": "miir", "model": {"mask_prob": 0.4}}])
    assert all(changed[k] == base[k] for k in base if k[0] == "sasrec")
    assert all(changed[k] != base[k] for k in base if k[0] == "miir")
    lr = keys(train={**TRAIN, "lr": 0.01})
    assert not set(lr.values()) & set(base.values())
    # an option added later, at its neutral value, leaves recorded runs' keys alone
    neutral = keys(
        models=["sasrec", {"name": "miir", "model": {"last_item_prob": 0.0}}],
        train={**TRAIN, "copies": 1, "weight_decay": 0.0},
    )
    assert neutral == base
    used = keys(train={**TRAIN, "copies": 2})
    assert not set(used.values()) & set(base.values())
    # a model limited to some settings runs only under them
    limited = keys(models=["sasrec", {"name": "miir", "settings": ["given"]}])
    assert {k for k in limited if k[0] == "miir"} == {k for k in base if k[:2] == ("miir", "given")}
    assert all(limited[k] == base[k] for k in limited)


def test_a_field_the_artifact_lacks_is_an_error_at_planning(
    tmp_path, planted_artifact, planted_discard_artifact
) -> None:
    """A model that names a side field the artifact does not have fails the plan (and so
    ``--dry-run``), naming the model, the field and the fields there are."""
    grid = planted_grid(
        planted_artifact,
        planted_discard_artifact,
        models=["sasrec", {"name": "miir", "label": "Ours", "model": {"fields": ["title"]}}],
    )
    with pytest.raises(ConfigError, match=r"Ours reads field\(s\) 'title', which planted") as err:
        plan(load_grid(write_grid(tmp_path / "g.yaml", grid)))
    assert "its fields are [" in str(err.value) and "g.yaml" in str(err.value)
    # the fields the artifact has plan fine
    have = json.loads((planted_artifact / "manifest.json").read_text())["schema"]["fields"]
    grid["models"][1]["model"]["fields"] = [have[0]["name"]]
    assert plan(load_grid(write_grid(tmp_path / "g.yaml", grid)))


def _side_files(manifest: dict) -> list[str]:
    text = {f["name"] for f in manifest["schema"]["fields"] if f["kind"] == "text"}
    return [
        k
        for k in manifest["files"]
        if k.startswith("items/") and k.split("/")[1].split(".")[0] not in text
    ]


def test_the_same_data_prepared_on_another_machine_keeps_its_keys(
    tmp_path, planted_artifact, planted_discard_artifact
) -> None:
    """Records survive a re-prepare elsewhere: other library versions in the manifest leave
    the keys alone; a changed data file does not."""
    given, discard = tmp_path / "given", tmp_path / "discard"
    shutil.copytree(planted_artifact, given)
    shutil.copytree(planted_discard_artifact, discard)
    grid = write_grid(tmp_path / "g.yaml", planted_grid(given, discard))

    def keys() -> list[str | None]:
        return [r.key for r in plan(load_grid(grid))]

    def edit(path: Path, change: Callable[[dict], None]) -> None:
        manifest = json.loads((path / "manifest.json").read_text())
        change(manifest)
        (path / "manifest.json").write_text(json.dumps(manifest, indent=2))

    base = keys()
    edit(given, lambda m: m["versions"].update(torch="9.9.9", numpy="0.0.1"))
    assert keys() == base
    # a side field's values (not a case file: the cases checksum alone would not see it)
    edit(discard, lambda m: m["files"].update({next(iter(_side_files(m))): "0" * 64}))
    moved = keys()
    assert moved[: len(base) // 2] == base[: len(base) // 2]  # the given runs: same
    assert not set(moved[len(base) // 2 :]) & set(base)  # the discard runs: new keys


# ------------------------------------------------------------------------------ running


def test_grid_runs_records_skips_and_rebuilds_tables(
    tmp_path, dirs, planted_artifact, planted_discard_artifact, monkeypatch
) -> None:
    grid = write_grid(
        tmp_path / "grid.yaml", planted_grid(planted_artifact, planted_discard_artifact)
    )
    lines: list[str] = []
    summary = run_benchmark(
        grid,
        out=dirs["out"],
        records=dirs["records"],
        runs_root=dirs["runs"],
        echo=lines.append,
        command="miir benchmark grid.yaml",
    )
    # SASRec reads item ids only: on the discard setting (same users, sequences, split and
    # negatives) its runs are the given ones, shared rather than trained again
    assert summary.trained == 6 and summary.recorded == 8
    assert any(
        line.startswith("[1/8] sasrec · planted (given) · seed 1 · est. left ?") for line in lines
    )
    assert any(line.startswith("[8/8] miir · planted (D) · seed 2 · est. left ") for line in lines)
    assert any(
        line.startswith("[5/8] sasrec · planted (D) · seed 1 · the same run as on planted (given)")
        for line in lines
    )
    assert not any("est. left ?" in line for line in lines[2:])  # estimated from finished runs

    records = sorted(dirs["records"].glob("*.json"))
    assert len(records) == 6
    rec = json.loads(records[0].read_text())
    assert rec["key"] == records[0].stem
    assert {"model", "data", "setting", "seed", "model_config", "train_config", "command",
            "commit", "machine", "wall_seconds", "epochs_run", "best_epochs"} <= set(rec)  # fmt: skip
    for stage in ("valid", "test"):
        assert set(rec[stage]) == {"sampled", "full", "full_masked"}
        assert set(rec[stage]["full"]) == {"HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR"}
    assert rec["epochs_run"] == 1 and rec["curve"]
    with np.load(dirs["records"] / f"{rec['key']}.ranks.npz") as ranks:
        assert set(ranks.files) == {"sampled", "full", "full_masked"}
        assert ranks["full"].dtype == np.int32 and len(ranks["full"]) == 240

    md = (dirs["out"] / "results.md").read_text()
    for label in PROTOCOL_LABELS.values():
        assert f"**{label}**" in md
    assert "## planted (given)" in md and "## planted (D)" in md
    assert "| SASRec (2 seeds) | MIIR (2 seeds) | Impr. (%) | p |" in md
    assert " ± " in md and "target MIIR" in md and "## Runs" in md
    assert "miir benchmark grid.yaml" in md
    with (dirs["out"] / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 3 * 5
    assert {"SASRec", "SASRec std", "MIIR n", "Impr. (%)", "p", "best baseline"} <= set(rows[0])
    assert all(r["best baseline"] == "SASRec" and r["Impr. (%)"] != "" for r in rows)
    for row in rows:
        mean_s, mean_m = float(row["SASRec"]), float(row["MIIR"])
        expected = (mean_m - mean_s) / mean_s * 100  # the table rounds to 4 decimals
        assert float(row["Impr. (%)"]) == pytest.approx(expected, rel=1e-4, abs=1e-4)
    with (dirs["out"] / "runs.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 8
    for png in ("metrics.png", "curves.png"):
        assert (dirs["out"] / png).read_bytes()[:4] == b"\x89PNG"

    # a second invocation trains nothing: every run is recorded
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr("miir.training.train.train", no_training)
    again = bench(grid, dirs)
    assert again.trained == 0 and again.recorded == 8

    # the tables come from the records alone: no run folders needed
    import shutil

    shutil.rmtree(dirs["runs"])
    (dirs["out"] / "results.md").unlink()
    res = runner.invoke(
        app,
        ["benchmark", str(grid), "--tables-only", "--out", str(dirs["out"]),
         "--records", str(dirs["records"]), "--runs-root", str(dirs["runs"])],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (dirs["out"] / "results.md").read_text().count(" ± ") >= 30
    assert (dirs["out"] / "curves.png").is_file()

    dry = runner.invoke(
        app, ["benchmark", str(grid), "--dry-run", "--records", str(dirs["records"])]
    )
    assert dry.exit_code == 0, dry.output
    assert dry.output.count("· recorded") == 8 and "0 to run" in dry.output


def test_only_filters_resume_and_finished_folders(
    tmp_path, dirs, planted_artifact, planted_discard_artifact, monkeypatch
) -> None:
    import miir.training.train as training

    grid_dict = planted_grid(planted_artifact, planted_discard_artifact, target="sasrec")
    grid = write_grid(tmp_path / "grid.yaml", grid_dict)
    calls: list[dict] = []
    real_train = training.train

    def spy(*args, **kwargs):
        calls.append({"model": args[2], "seed": args[4].seed, "resume": kwargs["resume"]})
        return real_train(*args, **kwargs)

    monkeypatch.setattr("miir.training.train.train", spy)
    runs = plan(load_grid(grid))
    by = {(r.model, r.setting, r.seed): r for r in runs}
    # a run killed in its first epoch left a folder: it is resumed, not refused
    killed = dirs["runs"] / by[("sasrec", "given", 1)].key
    killed.mkdir(parents=True)
    (killed / "run.json").write_text("{}", encoding="utf-8")
    summary = bench(grid, dirs, only=["model=sasrec", "seed=1"])
    # the given run resumes; its discard-setting twin (an ID-only model) shares its record
    assert summary.trained == 1 and summary.selected == 2 and summary.recorded == 2
    assert calls == [{"model": "sasrec", "seed": 1, "resume": True}]
    # a run whose folder holds finished results (killed before it was recorded) is recorded as is
    done = by[("miir", "D", 2)]
    real_train(
        done.case.path, dirs["runs"] / done.key, "miir", done.model_config, done.train_config
    )
    calls.clear()
    bench(grid, dirs, only=["data=planted", "setting=D", "model=MIIR"])
    assert calls == [{"model": "miir", "seed": 1, "resume": False}]
    assert (dirs["records"] / f"{done.key}.json").is_file()
    md = (dirs["out"] / "results.md").read_text()
    assert "target SASRec (named in the grid)" in md and "Not run yet (4)" in md
    assert "MIIR (0 of 2 seeds)" in md and "baselines: MIIR." in md
    with (dirs["out"] / "results.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["setting"] == "D"]
    assert all(r["target"] == "SASRec" and r["best baseline"] == "MIIR" for r in rows)
    assert all(r["MIIR n"] == "2" and r["SASRec n"] == "1" and r["p"] != "" for r in rows)
    with pytest.raises(ConfigError, match="selects none"):
        bench(grid, dirs, only=["seed=7"])


def test_a_finished_folder_of_another_config_is_refused(
    tmp_path, dirs, planted_artifact, planted_discard_artifact
) -> None:
    """A finished run folder is recorded only if it trained the planned run."""
    import miir.training.train as training

    grid = write_grid(
        tmp_path / "grid.yaml", planted_grid(planted_artifact, planted_discard_artifact)
    )
    run = next(r for r in plan(load_grid(grid)) if r.model == "sasrec" and r.setting == "given")
    other = run.model_config.model_copy(update={"dropout": 0.3})
    training.train(run.case.path, dirs["runs"] / run.key, "sasrec", other, run.train_config)
    with pytest.raises(ConfigError, match="not sasrec"):
        bench(grid, dirs, only=["model=sasrec", "setting=given", "seed=1"])
    assert not (dirs["records"] / f"{run.key}.json").exists()


def test_source_is_prepared_once_and_checked(tmp_path) -> None:
    from conftest import planted_raw

    raw = planted_raw(n_users=40)
    src = tmp_path / "src"
    src.mkdir()
    seqs = raw.interactions.group_by("user", maintain_order=True).agg("item")
    (src / "sequences.txt").write_text(
        "".join(f"{u} {' '.join(items)}\n" for u, items in seqs.iter_rows()), encoding="utf-8"
    )
    items = raw.items.select("item_id", "color").to_dicts()
    (src / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    grid_dict = {
        "cache": str(tmp_path / "cache"),
        "settings": {"given": {"discard": 0.0}, "D": {"discard": 0.5}},
        "data": {"toy": {"source": str(src), "prepare": {"n_negatives": 10, "max_len": 8}}},
        "models": ["sasrec"],
    }
    grid = load_grid(write_grid(tmp_path / "grid.yaml", grid_dict))
    cases = grid_cases(grid)
    assert [c.path.name for c in cases] == ["toy", "toy-D"]
    assert all(r.key is None for r in plan(grid, cases))  # not prepared yet: no key
    for case in cases:
        ensure_artifact(case, echo=lambda _: None)
    manifest = cases[1].path / "manifest.json"
    assert json.loads(manifest.read_text())["config"]["discard"] == 0.5
    before = manifest.stat().st_mtime_ns
    ensure_artifact(cases[1], echo=lambda _: None)  # reused, not prepared again
    assert manifest.stat().st_mtime_ns == before
    assert all(r.key for r in plan(grid, cases))
    # an artifact prepared with other options is refused, never silently reused
    grid_dict["data"]["toy"]["prepare"]["n_negatives"] = 20
    other = load_grid(write_grid(tmp_path / "grid.yaml", grid_dict))
    with pytest.raises(ConfigError, match="n_negatives=10 \\(grid: 20\\)"):
        plan(other)


def test_shipped_grids_are_valid() -> None:
    root = Path(__file__).resolve().parents[1] / "bench" / "grids"
    beauty = load_grid(root / "beauty.yaml")
    names = [m.name for m in beauty.spec.models]
    assert names[:13] == ["gru4rec", "sasrec", "bert4rec", "prnn", "fdsa", "nova"] + ["miir"] * 7
    # the default MIIR and, for reference, the same recipe with Eq. 11's multi loss (the default
    # before the per-value loss), with the paper's MII mask ratio 0.5 (the default before the
    # mask ratio 0.3), with Eq. 13's sequence mean (the default before the item mean), its
    # bidirectional form (also on the discard data: Table 11 compares how the two attentions
    # impute), with the clean next-item pass (issue 9's lever, given data only) and the recipe
    # before issue 9 (given data only), the bidirectional and the last pinned to the paper's
    # attention; every reference row keeps Eq. 11's multi loss, every row after it the mask
    # ratio 0.5 it ran with, and every row after the item-mean one the sequence mean
    miirs = beauty.spec.models[6:13]
    default, mean_multi, mask05, sequence_mean, bidirectional, clean, previous = miirs
    assert set(default.model) == {"fields"}  # the class defaults, nothing pinned
    assert mean_multi.model == {**default.model, "multi_loss": "mean"}
    assert mean_multi.label == "MIIR (mean multi loss)" and mean_multi.seeds == [1, 2, 3]
    assert mask05.model == {**mean_multi.model, "mask_prob": 0.5}
    assert mask05.label == "MIIR (mask 0.5)"
    refs = (mask05, sequence_mean, bidirectional, clean, previous)
    assert all(m.model["multi_loss"] == "mean" for m in refs)
    # MIIR's variants keep Eq. 11's multi loss too: they were run with it
    kinds = ("miir-r", "miir-f", "miir-m", "miir-r-m", "sparse-miir", "sparse-miir-r")
    variants = [m for m in beauty.spec.models if m.name in kinds]
    assert len(variants) == 6 and all(m.model["multi_loss"] == "mean" for m in variants)
    assert all(m.model["mask_prob"] == 0.5 for m in refs)
    assert all(m.model["loss_mean"] == "sequence" for m in refs[1:])
    assert sequence_mean.settings is None and sequence_mean.seeds == [1, 2, 3]
    assert bidirectional.settings == ["given", "D"] and previous.settings == ["given"]
    assert bidirectional.model["causal"] is False and previous.model["causal"] is False
    assert clean.settings == ["given"] and clean.model["next_item_clean"] is True
    # issue 10: RFS, LRMM, the two +LRMM models and the six MIIR variants, every one planned
    assert {"fdsa-rfs", "nova-rfs", "lrmm", "miir-r", "miir-f", "miir-m", "miir-r-m",
            "sparse-miir", "sparse-miir-r"} <= set(names)  # fmt: skip
    assert [m.name for m in beauty.spec.models if m.imputed_by == "lrmm"] == ["fdsa", "nova"]
    labels = {r.label for r in plan(beauty)}
    assert {"FDSA+LRMM", "NOVA+LRMM", "FDSA+RFS", "Sparse-MIIR-R", "MIIR-R-M"} <= labels
    assert [c.path.name for c in grid_cases(beauty)] == ["beauty", "beauty-d"]
    sports = load_grid(root / "sports.yaml")
    # the same recipe, unchanged (the clean next-item lever was measured on Beauty only)
    # issue 9's diagnostics of SASRec's factors, on Beauty only
    diagnostics = [m for m in beauty.spec.models if (m.label or "").startswith("SASRec (")]
    assert [m.settings for m in diagnostics] == [["given"], ["given"]]
    lever = [m for m in beauty.spec.models if m.label == "MIIR (clean next-item)"]
    lever += diagnostics
    # the recipe's reference rows that test a change on a second data set, one seed, as given
    dropped = {"MIIR (mask 0.5)", "MIIR (previous recipe)"}
    assert [m.label or m.name for m in sports.spec.models] == [
        m.label or m.name for m in beauty.spec.models if m not in lever and m.label not in dropped
    ]
    refs = [m for m in sports.spec.models if (m.label or "").startswith("MIIR (")]
    assert [(m.seeds, m.settings) for m in refs] == [([1, 2, 3], None)] + [([1], ["given"])] * 2
    assert [c.path.name for c in grid_cases(sports)] == ["sports", "sports-d"]
    smoke = load_grid(root / "smoke.yaml")
    assert smoke.spec.train["max_epochs"] == 1


@pytest.mark.parametrize("data", ["beauty", "sports"])
def test_table11_grids_retrain_the_grid_runs_they_name(data: str) -> None:
    """bench/grids/table11-*.yaml retrain the main grid's default MIIR and LRMM on the discard
    setting with seeds 1-3 (Table 11 needs their checkpoints): every run the main grid has is
    the same computation (same config digest), so its key and record agree."""
    root = Path(__file__).resolve().parents[1] / "bench" / "grids"
    table11 = plan(load_grid(root / f"table11-{data}.yaml"))
    main = {
        (r.model, r.seed): r.config_sha
        for r in plan(load_grid(root / f"{data}.yaml"))
        if r.setting == "D" and r.label in ("MIIR", "LRMM")
    }
    assert sorted((r.model, r.setting, r.seed) for r in table11) == [
        (m, "D", s) for m in ("lrmm", "miir") for s in (1, 2, 3)
    ]
    shared = [r for r in table11 if (r.model, r.seed) in main]
    assert len(shared) == 4  # the main grids hold MIIR seeds 1-3 and LRMM seed 1 on D
    assert all(r.config_sha == main[r.model, r.seed] for r in shared)


def test_a_model_trains_on_data_another_run_imputed(
    tmp_path, dirs, planted_discard_artifact
) -> None:
    """``imputed_by``: the imputer's run is trained first (even outside --only), its
    imputations become a derived artifact beside the case's, and the model trains on it."""
    import shutil

    from miir.data.artifact import Artifact

    art = tmp_path / "art" / "planted-d"
    shutil.copytree(planted_discard_artifact, art)
    grid = {
        "name": "imputed",
        "settings": {"D": {"discard": 0.5}},
        "data": {"planted": {"artifacts": {"D": str(art)}}},
        "train": dict(TRAIN),
        "models": [
            {"name": "lrmm", "model": {"embedding_size": 16, "hidden_size": 16}},
            {"name": "fdsa", "model": {"embedding_size": 16, "max_len": 8}},
            {"name": "fdsa", "imputed_by": "lrmm", "model": {"embedding_size": 16, "max_len": 8}},
        ],
    }
    path = write_grid(tmp_path / "grid.yaml", grid)
    runs = plan(load_grid(path))
    assert [r.label for r in runs] == ["LRMM", "FDSA", "FDSA+LRMM"]
    plain, imputed = runs[1], runs[2]
    assert imputed.imputer is runs[0] and imputed.key is None  # its data does not exist yet
    assert plain.config_sha != imputed.config_sha  # never taken for the plain model's record
    lines: list[str] = []

    def imputed_only() -> int:
        """Run the grid for FDSA+LRMM alone; the number of runs trained (echo in ``lines``)."""
        lines.clear()
        return run_benchmark(
            path,
            out=dirs["out"],
            records=dirs["records"],
            runs_root=dirs["runs"],
            only=["model=FDSA+LRMM"],
            echo=lines.append,
        ).trained

    assert imputed_only() == 2  # the imputer, then the model on its data
    assert any(line.startswith("[imputer] lrmm") for line in lines)
    derived = art.parent / f"planted-d.imputed-{runs[0].key}"
    assert Artifact(derived).manifest["derived"]["parent"]["name"] == Artifact(art).manifest["name"]
    records = {json.loads(p.read_text())["label"]: json.loads(p.read_text())
               for p in dirs["records"].glob("*.json")}  # fmt: skip
    assert set(records) == {"LRMM", "FDSA+LRMM"}
    assert records["FDSA+LRMM"]["imputed_by"] == runs[0].key
    assert str(derived) in records["FDSA+LRMM"]["artifact"]["path"]
    # planned again, the run finds its derived artifact and its record
    again = plan(load_grid(path))
    assert again[2].key == records["FDSA+LRMM"]["key"]
    assert bench(path, dirs).trained == 1  # only the plain FDSA was left
    # on another machine the records come with the repository, the run folders do not:
    # the imputer is trained again to impute with, and its committed record is kept
    imputer_record = next(
        p for p in dirs["records"].glob("*.json") if json.loads(p.read_text())["label"] == "LRMM"
    )
    kept = imputer_record.read_bytes()
    shutil.rmtree(dirs["runs"])
    shutil.rmtree(derived)
    for p in dirs["records"].glob(f"{records['FDSA+LRMM']['key']}.*"):
        p.unlink()
    assert imputed_only() == 2
    assert any("holds no checkpoint; training it again" in line for line in lines)
    assert imputer_record.read_bytes() == kept
    assert (dirs["runs"] / runs[0].key / "best" / "model.json").is_file()
    assert (derived / "manifest.json").is_file()
    with pytest.raises(ConfigError, match="not an earlier model"):
        load_grid(write_grid(tmp_path / "bad.yaml", {**grid, "models": grid["models"][::-1]}))


class _ClaimTable:
    """What :func:`judge_claim` reads of a case table: cells (in %) and per-user metrics."""

    def __init__(self, cells: dict[str, list[float]], users: dict[str, np.ndarray]) -> None:
        self.cells, self.users = cells, users
        self.labels = list(cells)

    seed_spread = CaseTable.seed_spread

    def cell(self, label: str, protocol: str, metric: str) -> Cell:
        return Cell(self.cells.get(label, []))

    def per_user(self, label: str, protocol: str, metric: str) -> np.ndarray | None:
        return self.users.get(label)


def test_claims_are_held_only_beyond_the_noise_and_the_seed_spread() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(4000)
    claim = ClaimSpec(text="A beats B", better="A", worse="B")

    def judge(cells: dict[str, list[float]], shift: float) -> dict:
        users = {"A": base + shift + rng.normal(0, 0.01, 4000), "B": base}
        return judge_claim(_ClaimTable(cells, users), claim, "full", noise=0.0021)

    # one seed a side: ahead by 0.01, significant -> held; behind -> not held
    held = judge({"A": [5.0], "B": [4.0]}, 0.01)
    assert held["verdict"] == "held" and held["diff"] == pytest.approx(0.01)
    assert held["p"] < 1e-6 and held["floor"] == 0.0021 and held["seeds"] == (1, 1)
    assert judge({"A": [4.0], "B": [5.0]}, -0.01)["verdict"] == "not held"
    # significant over users, but inside the one-seed noise band (0.1 points < 0.21)
    assert judge({"A": [4.1], "B": [4.0]}, 0.001)["verdict"] == "inside the noise"
    # three seeds a side: the floor is the larger spread (0.6 points), 0.4 ahead is noise
    spread = judge({"A": [4.4, 4.0, 4.8], "B": [4.0, 3.4, 4.6]}, 0.004)
    assert spread["floor"] == pytest.approx(0.006) and spread["verdict"] == "inside the noise"
    # ahead beyond the band, but the per-user test is not significant
    flat = judge_claim(
        _ClaimTable({"A": [5.0], "B": [4.0]}, {"A": rng.random(50), "B": rng.random(50)}),
        claim, "full", noise=0.0021,
    )  # fmt: skip
    assert flat["p"] > 0.05 and flat["verdict"] == "inside the noise"
    assert judge({"A": [5.0]}, 0.01)["verdict"] == "not run"
    # one run a side, but another model's two seeds landed 1.5 points apart in this table
    # (sampled metrics spread wider than full-ranking ones): 1 point ahead is noise there
    wide = judge({"A": [5.0], "B": [4.0], "C": [30.0, 31.5]}, 0.01)
    assert wide["floor"] == pytest.approx(0.015) and wide["verdict"] == "inside the noise"
    assert judge({"A": [6.6], "B": [4.0], "C": [30.0, 31.5]}, 0.026)["verdict"] == "held"


def test_recorded_runs_keep_their_keys() -> None:
    """Every committed record's key recomputes from its own configs: an option added to a
    config must enter ``miir.options.NEUTRAL_OPTIONS`` at the value that reproduces the old
    behaviour, or every recorded run of that model silently turns into "to run". (Options a
    record lacks predate it and were at their neutral value.)"""
    from miir.benchmark import run_key
    from miir.models import get_entry
    from miir.training.checkpoint import saved_config
    from miir.training.train import TrainConfig

    def parse(cls: type, values: dict) -> object:
        return cls(**saved_config(cls, values))  # as a checkpoint's config is read

    records = sorted((Path(__file__).resolve().parents[1] / "bench/results/runs").glob("*.json"))
    assert records, "no committed benchmark records"
    for path in records:
        r = json.loads(path.read_text())
        model = parse(get_entry(r["model"]).cls.Config, r["model_config"])
        train = parse(TrainConfig, r["train_config"])
        sums = r["artifact"]["cases_sha256"], r["artifact"]["identity_sha256"]
        assert run_key(r["model"], model, train, *sums) == r["key"], path.name


def test_records_are_read_from_several_folders_and_written_to_the_first(tmp_path) -> None:
    """A store over several folders reads every record (the first folder wins a key held
    twice) and finds each record's ranks in its own folder; new records go to the first."""
    shared, own = tmp_path / "shared", tmp_path / "own"
    RecordStore(shared).write({"key": "k1", "v": "shared"}, {"full": np.array([3, 1])})
    RecordStore(own).write({"key": "k2", "v": "own"}, {"full": np.array([7])})
    (own / "k1.json").write_text(json.dumps({"key": "k1", "v": "copy"}), encoding="utf-8")
    store = RecordStore([own, shared])
    assert store.by_key["k1"]["v"] == "copy" and store.by_key["k2"]["v"] == "own"
    assert store.ranks("k2")["full"].tolist() == [7]
    assert RecordStore([shared, own]).by_key["k1"]["v"] == "shared"
    assert RecordStore([shared, own]).ranks("k1")["full"].tolist() == [3, 1]
    store.write({"key": "k3"}, {"full": np.array([2])})
    assert (own / "k3.json").is_file() and not (shared / "k3.json").exists()
    third = tmp_path / "third"  # a key recorded in a later folder is rewritten in the first
    RecordStore([third, shared]).write({"key": "k1", "v": "new"}, {"full": np.array([5])})
    assert RecordStore(third).ranks("k1")["full"].tolist() == [5]
    assert RecordStore(shared).ranks("k1")["full"].tolist() == [3, 1]  # left as it was
    assert "`" + str(own) + "`, `" + str(shared) + "`" == store.describe()
    with pytest.raises(ConfigError, match="no records folder"):
        RecordStore([])
