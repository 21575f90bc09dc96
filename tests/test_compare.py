"""Paired comparison of two runs (`miir compare`): planted differences, refusals, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from miir.cli import app
from miir.errors import ConfigError
from miir.evaluation.compare import cases_checksum, compare_runs, identity_checksum, load_ranks
from miir.evaluation.metrics import metrics_from_ranks

runner = CliRunner()


def fake_run(
    path: Path,
    sampled: np.ndarray,
    full: np.ndarray,
    cases: str = "c1",
    variant: str = "MIIR",
    stage: str = "test",
) -> Path:
    path.mkdir(parents=True)
    info = {"variant": variant, "artifact": {"path": "/nowhere", "cases_sha256": cases}}
    (path / "run.json").write_text(json.dumps(info), encoding="utf-8")
    np.savez(path / f"ranks_{stage}.npz", sampled=sampled, full=full)
    return path


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    n = 400
    worse = rng.integers(1, 101, n)
    better = np.maximum(1, worse - rng.integers(0, 30, n))  # never worse, often better
    a = fake_run(tmp_path / "a", better, better * 50)
    b = fake_run(tmp_path / "b", worse, worse * 50, variant="MIIR-R")
    return a, b


def test_planted_improvement_is_significant(two_runs) -> None:
    a, b = two_runs
    res = compare_runs(a, b)
    assert len(res["rows"]) == 6
    ranks_a, ranks_b = load_ranks(a), load_ranks(b)
    for row in res["rows"]:
        expected_a = metrics_from_ranks(ranks_a[row["protocol"]])[row["metric"]]
        expected_b = metrics_from_ranks(ranks_b[row["protocol"]])[row["metric"]]
        assert row["mean_a"] == pytest.approx(expected_a)
        assert row["mean_b"] == pytest.approx(expected_b)
        assert row["diff"] == pytest.approx(expected_a - expected_b)
        assert row["n"] == 400
    mrr = next(r for r in res["rows"] if r["protocol"] == "sampled" and r["metric"] == "MRR")
    assert mrr["t"] > 0 and mrr["p"] < 1e-6
    # swapping A and B flips the sign and keeps the p-value
    back = compare_runs(b, a)
    mrr_back = next(r for r in back["rows"] if r["protocol"] == "sampled" and r["metric"] == "MRR")
    assert mrr_back["t"] == pytest.approx(-mrr["t"]) and mrr_back["p"] == pytest.approx(mrr["p"])


def test_identical_runs_show_no_difference(two_runs) -> None:
    a, _ = two_runs
    res = compare_runs(a, a, metrics=("NDCG@5",))
    assert [r["p"] for r in res["rows"]] == [1.0, 1.0]
    assert all(r["t"] == 0 for r in res["rows"])


def test_refusals_name_the_problem(tmp_path: Path, two_runs) -> None:
    a, _ = two_runs
    ranks = np.arange(1, 401)
    other = fake_run(tmp_path / "other", ranks, ranks, cases="c2")
    with pytest.raises(ConfigError, match="not evaluated on the same cases"):
        compare_runs(a, other)
    shorter = fake_run(tmp_path / "short", ranks[:10], ranks[:10])
    with pytest.raises(ConfigError, match=r"400 test ranks.*has 10"):
        compare_runs(a, shorter)
    with pytest.raises(ConfigError, match=r"ranks_valid\.npz does not exist"):
        compare_runs(a, a, stage="valid")
    with pytest.raises(ConfigError, match="not a run folder"):
        compare_runs(a, tmp_path)
    with pytest.raises(ConfigError, match="unknown metric"):
        compare_runs(a, a, metrics=("XX@3",))
    with pytest.raises(ConfigError, match="unknown stage"):
        compare_runs(a, a, stage="train")


def test_identity_ignores_the_machine_and_nothing_else() -> None:
    """The same data prepared elsewhere (other library versions, text embeddings whose last
    bits differ) has the same identity; any other file, option or source does not."""
    manifest = {
        "name": "toy",
        "config": {"discard": 0.5, "seed": 42},
        "sources": {"items.jsonl": {"sha256": "src"}},
        "schema": {"fields": [{"name": "title", "kind": "text"}, {"name": "brand"}]},
        "versions": {"torch": "2.13.0", "polars": "2.1.0"},
        "files": {
            "sequences/items.npy": "s",
            "items/title.values.npy": "emb",
            "items/title.present.npy": "tp",
            "items/brand.values.npy": "b",
            "truth/title.values.npy": "temb",
            "truth/brand.values.npy": "tb",
        },
    }
    key = identity_checksum(manifest)

    def changed(path: tuple[str, ...], value: object) -> str:
        other = json.loads(json.dumps(manifest))
        node = other
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        return identity_checksum(other)

    assert changed(("versions", "torch"), "2.14.0") == key
    assert changed(("files", "items/title.values.npy"), "emb2") == key
    assert changed(("files", "truth/title.values.npy"), "temb2") == key
    for path in [
        ("files", "items/title.present.npy"),  # which titles the discard hid
        ("files", "items/brand.values.npy"),
        ("files", "truth/brand.values.npy"),
        ("files", "sequences/items.npy"),
        ("config", "seed"),
        ("sources", "items.jsonl"),
        ("name",),
    ]:
        assert changed(path, "other") != key, path


def test_cases_checksum_ignores_side_fields_only() -> None:
    files = {
        "sequences/items.npy": "s",
        "split/test_target.npy": "t",
        "vocab/items.json": "i",
        "vocab/users.json": "u",
        "items/brand.values.npy": "b1",
        "vocab/brand.json": "v1",
    }
    key = cases_checksum({"files": files})
    assert key == cases_checksum({"files": {**files, "items/brand.values.npy": "b2"}})
    assert key != cases_checksum({"files": {**files, "split/test_target.npy": "t2"}})
    assert key != cases_checksum({"files": {**files, "vocab/items.json": "i2"}})


def test_cli_compare_prints_and_writes_json(two_runs, tmp_path: Path) -> None:
    a, b = two_runs
    out = tmp_path / "cmp.json"
    res = runner.invoke(app, ["compare", str(a), str(b), "--json", str(out), "--metric", "MRR"])
    assert res.exit_code == 0, res.output
    assert "sampled/MRR" in res.output and "full/MRR" in res.output
    saved = json.loads(out.read_text())
    assert [r["metric"] for r in saved["rows"]] == ["MRR", "MRR"]
    bad = runner.invoke(app, ["compare", str(a), str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "not a run folder" in bad.output
