"""`miir demo` end to end on a tiny raw folder (the planted data of conftest, written in the
sequences layout with a title, brand and categories), and its message when no data is found."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import miir.data.encode_text as encode_text
from conftest import N_GROUPS, planted_raw
from miir.cli import app
from miir.data.artifact import Artifact
from miir.demo import DemoOptions, find_data, matches, prepare_data, run_demo
from miir.evaluation.compare import cases_checksum

runner = CliRunner()


def fake_encoder(texts: list[str], **_: object) -> tuple[np.ndarray, str]:
    """Stands in for the sentence model: unit vectors seeded by the text, plus the colour axis
    named in ``"colour g ..."`` (planted structure the title can carry)."""
    out = np.zeros((len(texts), 8), dtype=np.float32)
    for r, text in enumerate(texts):
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        out[r] = np.random.default_rng(seed).normal(size=8) * 0.3
        out[r, int(text.split()[1])] += 1.0
    return out / np.linalg.norm(out, axis=1, keepdims=True), "fake"


def write_raw(folder: Path) -> Path:
    """The planted data as ``sequences.txt`` + ``items.jsonl`` (brand = colour group,
    categories = the group's tags, title naming the colour; brand missing for every 7th item)."""
    raw = planted_raw()
    folder.mkdir(parents=True)
    seqs: dict[str, list[str]] = {}
    for user, item in zip(raw.interactions["user"], raw.interactions["item"], strict=True):
        seqs.setdefault(user, []).append(item)
    lines = [" ".join([u, *items]) for u, items in seqs.items()]
    (folder / "sequences.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = []
    for i in range(N_GROUPS * 10):
        g = i % N_GROUPS
        records.append(
            {
                "item_id": f"i{i:03d}",
                "title": f"colour {g} thing number {i}",
                "brand": None if i % 7 == 0 else f"brand{g}",
                "categories": ["Beauty", f"cat{g}"],
            }
        )
    (folder / "items.jsonl").write_text(
        "\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8"
    )
    return folder


def record(artifact: Artifact, label: str, discard: float, value: float) -> dict:
    """A benchmark run record as `miir benchmark` writes it (the fields the demo reads)."""
    metrics = {"HR@5": value, "HR@10": value, "NDCG@5": value, "NDCG@10": value, "MRR": value}
    return {
        "artifact": {"cases_sha256": cases_checksum(artifact.manifest), "manifest_sha256": "x"},
        "label": label,
        "discard": discard,
        "epochs_run": 30,
        "test": {p: metrics for p in ("sampled", "full", "full_masked")},
    }


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoOptions, list[str]]:
    root = tmp_path_factory.mktemp("demo")
    results_dir = root / "records"
    results_dir.mkdir()
    opts = DemoOptions(
        data=write_raw(root / "raw"),
        artifacts=root / "art",
        out=root / "run",
        results_dir=results_dir,
        epochs=2,
        threads=1,
        progress=False,
        prepare_overrides={"n_negatives": 20},
    )
    said: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(encode_text, "encode_texts", fake_encoder)
        artifact, _ = prepare_data(opts, opts.data, said.append)
        # a recorded given-setting run on the same cases: shown as a different setting
        (results_dir / "a.json").write_text(json.dumps(record(artifact, "SASRec", 0.0, 0.25)))
        (results_dir / "b.json").write_text("not json")  # skipped, not an error
        report = run_demo(opts, said.append)
    return report, opts, said


def test_report_has_every_part(demo_report) -> None:
    report, opts, said = demo_report
    text = (report / "report.md").read_text(encoding="utf-8")
    results = json.loads((opts.out / "results.json").read_text())
    for title in ("sampled (99 negatives)", "full ranking", "full, history masked"):
        assert f"**{title}**" in text
    for protocol in ("sampled", "full", "full_masked"):
        assert f"{results['test'][protocol]['NDCG@10']:.4f}" in text
    # the recorded given-setting run: labelled as another setting, and the grid command
    assert "different setting (discard 0.0)" in text
    assert "SASRec (1 seed, epochs 30)" in text and "0.2500" in text
    assert "miir benchmark bench/grids/beauty.yaml --only setting=D" in text
    # top-10 of the sample user, with the raw titles
    top = text.split("## Top-10 recommendations")[1].split("##")[0]
    assert len([ln for ln in top.splitlines() if ln.startswith("| ") and "rank" not in ln]) == 10
    assert "colour " in top
    # imputation evaluation beside the references, and the imputed values next to the truth
    assert "most-frequent" in text and "co-occurrence" in text
    part = text.split("## Imputed side values")[1].split("## Serve")[0]
    rows = [ln for ln in part.splitlines() if ln.startswith("| u0")]
    assert rows, part
    artifact = Artifact(opts.artifacts)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        item, name, truth = cells[1], cells[3], cells[6]
        fd = artifact.fields[name]
        i = artifact.item_index[item]
        assert not fd.present[i]  # only values the model does not see are imputed
        if truth != "*missing in the source*":
            assert fd.truth_present[i] and truth.split(", ")[0] in map(str, fd.vocab)
    assert any(r.split("|")[7].strip() != "*missing in the source*" for r in rows)
    assert f"miir serve --run {opts.out}" in text
    assert any(f"miir serve --run {opts.out}" in s for s in said)
    assert any("Reusing" in s for s in said)  # the artifact prepared above is reused
    assert (report / "case_study.md").is_file()


def test_pngs_are_images(demo_report) -> None:
    report, _, _ = demo_report
    for name in ("curves.png", "metrics.png", "attention.png"):
        with Image.open(report / name) as img:
            img.verify()
            assert img.format == "PNG" and img.size[0] > 100


def test_artifact_reuse_needs_same_options(demo_report) -> None:
    _, opts, _ = demo_report
    from miir.data.prepare import PrepareConfig

    manifest = json.loads((opts.artifacts / "manifest.json").read_text())
    sources = {k: v["sha256"] for k, v in manifest["sources"].items()}
    same = PrepareConfig(discard=0.5, n_negatives=20)
    assert matches(opts.artifacts, same, sources)
    assert not matches(opts.artifacts, PrepareConfig(discard=0.3, n_negatives=20), sources)
    assert not matches(opts.artifacts, same, {**sources, "items.jsonl": "0" * 64})


def test_out_that_is_not_a_demo_run_is_kept(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "run"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"command": "miir train --data a --out run"}))
    raw = write_raw(tmp_path / "raw")
    result = runner.invoke(
        app, ["demo", "--data", str(raw), "--out", str(other), "--no-progress", "--epochs", "1"]
    )
    assert result.exit_code == 2
    assert "not an earlier `miir demo` run" in " ".join(result.output.split())
    assert not (tmp_path / "artifacts").exists()  # refused before preparing anything
    assert (other / "run.json").is_file()


def test_no_data_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # ../shared/data from here does not exist
    result = runner.invoke(app, ["demo", "--data-root", str(tmp_path / "none"), "--no-progress"])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "no demo data" in message
    assert "amazon-beauty" in message and "ml-100k" in message
    assert "--data FOLDER" in message and "jmcauley" in message


def test_missing_data_folder_is_named(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--data", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "nope" in result.output and "no such file or folder" in result.output


def test_falls_back_to_movielens_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "ml-100k").mkdir()
    said: list[str] = []
    found = find_data(DemoOptions(shared=tmp_path), said.append)
    assert found == tmp_path / "ml-100k"
    assert "'Beauty' data" in said[0] and f"not in {tmp_path}" in said[0]
    assert "--data FOLDER" in said[0] and "Falling back to MovieLens 100K" in said[1]


def test_recorded_runs_of_one_label_with_other_settings_are_not_averaged() -> None:
    """Three seeds of the default MIIR and one bidirectional MIIR run are two columns, the
    one the demo trains named as the default recipe, the other by what differs."""
    from miir.demo import _mean_runs, _name_configs

    default = {"causal": True, "dropout": 0.1}
    other = {"causal": False, "dropout": 0.1}

    def rec(ndcg: float) -> dict:
        test = {p: {m: ndcg for m in ("HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")}
                for p in ("sampled", "full", "full_masked")}  # fmt: skip
        return {"test": test, "epochs_run": 3}

    groups = {
        ("MIIR", json.dumps(default, sort_keys=True)): [rec(0.04), rec(0.05), rec(0.06)],
        ("MIIR", json.dumps(other, sort_keys=True)): [rec(0.01)],
        ("SASRec", json.dumps({"dropout": 0.5})): [rec(0.02)],
    }
    named = _mean_runs(_name_configs(groups, default))
    assert set(named) == {"MIIR (default recipe)", "MIIR (other settings: causal)", "SASRec"}
    assert named["MIIR (default recipe)"]["seeds"] == 3
    assert named["MIIR (default recipe)"]["test"]["full"]["NDCG@10"] == pytest.approx(0.05)
    assert named["MIIR (other settings: causal)"]["test"]["full"]["NDCG@10"] == 0.01
    # without the demo's config: the label's config with the most runs keeps the plain name
    assert set(_name_configs(groups, None)) == {
        "MIIR", "MIIR (other settings: causal)", "SASRec"
    }  # fmt: skip
