"""`miir export`: the ONNX scoring graph scores as PyTorch does, for MIIR and SASRec."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import random_windows, small_model
from miir.cli import app
from miir.export import (
    INPUT,
    OUTPUT,
    check_histories,
    export_onnx,
    export_run,
    onnx_scores,
)
from miir.training.checkpoint import save_checkpoint

runner = CliRunner()


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("miir", {}),
        ("sparse-miir", {}),
        ("sasrec", {}),
        ("miir", {"side_output": True}),
        ("miir", {"id_stream": True}),
        ("miir", {"fusion": "item"}),
    ],
)
def test_onnx_scores_equal_pytorch(name: str, options: dict, tmp_path) -> None:
    model = small_model(name, n_layers=2, dropout=0.1, **options).eval()
    if options.get("side_output"):
        torch.nn.init.normal_(model.side_out.weight, std=0.1)  # side part in the scores (else 0)
    path = tmp_path / "m.onnx"
    export_onnx(model, path)
    assert not model.training  # the export leaves the model in eval mode (no dropout)
    for history in (
        random_windows(5, model.history_len, seed=7),  # every row padded differently
        random_windows(64, model.history_len, seed=8, min_len=1),  # another batch size
        check_histories(model)[:1],  # one item alone
    ):
        with torch.no_grad():
            ref = model.score(history).numpy()
        got = onnx_scores(path, history.numpy())
        assert got.shape == ref.shape == (len(history), model.n_items + 2)
        assert np.isneginf(got[:, :2]).all() and np.isfinite(got[:, 2:]).all()
        np.testing.assert_allclose(got[:, 2:], ref[:, 2:], rtol=0, atol=1e-5)
    # the item tables are in the graph: the scores move with the model's side information
    if name == "miir" and not options:
        import onnx

        proto = onnx.load(str(path))
        sizes = {tuple(t.dims) for t in proto.graph.initializer}
        assert (model.n_items + 2, 12) in sizes  # the title vectors of every item


def test_export_run_writes_a_checked_folder(tmp_path) -> None:
    model = small_model("miir", n_layers=1)
    save_checkpoint(model, tmp_path / "run" / "best", extra={"epoch": 3})
    out = tmp_path / "export"
    res = runner.invoke(
        app, ["export", "--run", str(tmp_path / "run"), "--format", "onnx", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "items.json", "model.onnx"]
    meta = json.loads((out / "export.json").read_text())
    assert meta["model"] == "miir" and meta["history_len"] == model.history_len
    assert meta["inputs"][0]["name"] == INPUT and meta["outputs"][0]["name"] == OUTPUT
    assert meta["opset"] >= 17 and meta["check"]["max_abs_diff"] <= 1e-5
    for name in ("model.onnx", "items.json"):
        digest = hashlib.sha256((out / name).read_bytes()).hexdigest()
        assert meta["checksums"][name] == digest
    items = json.loads((out / "items.json").read_text())
    assert items == model.catalogue.item_names and len(items) == model.n_items + 2
    assert not list(tmp_path.glob(".export*"))  # no temporary folder left
    # exporting again replaces the export; a folder that is not one is refused
    res = runner.invoke(app, ["export", "--run", str(tmp_path / "run"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    res = runner.invoke(app, ["export", "--run", str(tmp_path / "run"), "--out", str(other)])
    assert res.exit_code == 2 and "not an export" in res.output
    assert (other / "keep.txt").exists()
    res = runner.invoke(
        app, ["export", "--run", str(tmp_path / "run"), "--format", "tflite", "--out", str(out)]
    )
    assert res.exit_code == 2 and "tflite" in res.output
    # a saved model's folder (the checkpoint itself) exports as its run does; a file as --out
    # is refused
    again = tmp_path / "again"
    res = runner.invoke(
        app, ["export", "--run", str(tmp_path / "run" / "best"), "--out", str(again)]
    )
    assert res.exit_code == 0, res.output
    assert (again / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    (tmp_path / "file").write_text("x")
    res = runner.invoke(
        app, ["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "file")]
    )
    assert res.exit_code == 2 and "a file, not a folder" in res.output


def test_export_refuses_a_graph_that_scores_differently(tmp_path, monkeypatch) -> None:
    """The self-check is real: a graph whose scores differ is not written."""
    import miir.export as export

    save_checkpoint(small_model("sasrec"), tmp_path / "run" / "best")
    real = export.onnx_scores
    monkeypatch.setattr(export, "onnx_scores", lambda p, h, t=None: real(p, h) + 1e-3)
    with pytest.raises(export.ExportError, match="differ"):
        export_run(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()
