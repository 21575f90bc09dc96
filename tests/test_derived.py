"""Derived artifacts (FDSA+LRMM, NOVA+LRMM): the parent's missing side values filled by a
trained imputer, everything that defines the evaluation cases kept byte for byte, the truth
kept for scoring, and the parent and the imputer recorded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import SHORT_RUN, gen
from miir.cli import app
from miir.data.artifact import Artifact
from miir.data.derived import fill_field, impute_artifact
from miir.errors import ConfigError, DataError
from miir.evaluation.compare import cases_checksum
from miir.models import build_model, model_config
from miir.models.batch import make_batch
from miir.models.fields import ItemCatalogue
from miir.training.checkpoint import save_checkpoint
from miir.training.data import training_windows

runner = CliRunner()
KEPT = ("sequences/", "split/", "vocab/", "truth/")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def imputer_checkpoint(artifact_path: Path, out: Path, name: str = "lrmm", steps: int = 150):
    """A small model trained briefly on the artifact, saved with the record `miir train`
    writes of the data it was trained on."""
    artifact = Artifact(artifact_path)
    torch.manual_seed(0)
    known = {"embedding_size": 16, "hidden_size": 32, "dropout": 0.0, "max_len": 8}
    config = model_config(
        name, {k: v for k, v in known.items() if k in model_config(name).model_fields}
    )
    model = build_model(name, config, ItemCatalogue.from_artifact(artifact))
    windows = training_windows(artifact, 8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        rows = windows[torch.randint(len(windows), (64,), generator=gen(step))]
        loss, _ = model.loss(make_batch(rows, model.batch_mode, 8), gen(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    record = {
        "path": str(artifact_path.resolve()),
        "name": artifact.name,
        "manifest_sha256": sha(artifact_path / "manifest.json"),
    }
    return save_checkpoint(model.eval(), out, extra={"artifact": record})


@pytest.fixture(scope="module")
def derived(planted_discard_artifact: Path, tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("derived")
    ckpt = imputer_checkpoint(planted_discard_artifact, root / "lrmm" / "best")
    out = root / "planted-d-lrmm"
    impute_artifact(Artifact(planted_discard_artifact), root / "lrmm", out)
    return planted_discard_artifact, ckpt, out


def test_the_derived_artifact_opens_and_keeps_the_cases_and_truth(derived) -> None:
    parent_path, _, out = derived
    art, parent = Artifact(out, verify="full"), Artifact(parent_path)
    kept = [rel for rel in parent.manifest["files"] if rel.startswith(KEPT)]
    assert any(r.startswith("split/") for r in kept) and any(r.startswith("truth/") for r in kept)
    for rel in kept:
        assert (out / rel).read_bytes() == (parent_path / rel).read_bytes(), rel
        assert art.manifest["files"][rel] == parent.manifest["files"][rel]
    assert cases_checksum(art.manifest) == cases_checksum(parent.manifest)
    for stage in ("valid", "test"):
        for a, b in zip(art.split(stage), parent.split(stage), strict=True):
            assert np.array_equal(a, b)
    assert art.user_names == parent.user_names and art.item_names == parent.item_names
    assert np.array_equal(art.flat_items, parent.flat_items)
    for name, fd in art.fields.items():  # the truth is still the parent's
        assert np.array_equal(fd.truth_values, parent.fields[name].truth_values)
        assert np.array_equal(fd.truth_present, parent.fields[name].truth_present)


def test_every_missing_value_is_filled_and_observed_values_are_kept(derived) -> None:
    parent_path, _, out = derived
    art, parent = Artifact(out), Artifact(parent_path)
    record = art.manifest["derived"]["fields"]
    assert set(record) == set(parent.fields) == {"color", "tags", "size"}
    for name, fd in art.fields.items():
        old = parent.fields[name]
        assert fd.present[2:].all() and not fd.present[:2].any(), name
        assert record[name]["imputed_values"] == int((~old.present[2:]).sum()) > 0
        assert np.array_equal(fd.values[old.present], old.values[old.present]), name
        assert fd.values.dtype == old.values.dtype and fd.values.shape == old.values.shape
        filled = ~old.present
        filled[:2] = False
        if fd.values.ndim == 1:  # categorical, numeric bucket: a real value id
            assert ((fd.values[filled] >= 2) & (fd.values[filled] < len(fd.vocab))).all()
        else:  # multi-valued: at least one real value, 0-padded
            assert (fd.values[filled, 0] >= 2).all() and (fd.values[filled] < len(fd.vocab)).all()
    assert art.manifest["missing_rate"]["side_fields_after_imputation"] == 0.0
    # the planted colour (item % 4) can be read off the tags: imputations beat the majority
    color = art.fields["color"]
    hidden = color.truth_present & ~parent.fields["color"].present
    acc = (color.values[hidden] == color.truth_values[hidden]).mean()
    majority = np.unique(color.truth_values[hidden], return_counts=True)[1].max() / hidden.sum()
    assert acc > majority + 0.2, (acc, majority)


def test_the_manifest_records_the_parent_and_the_imputer(derived) -> None:
    parent_path, ckpt, out = derived
    manifest = json.loads((out / "manifest.json").read_text())
    d = manifest["derived"]
    assert d["parent"] == {
        "name": Artifact(parent_path).name,
        "path": str(parent_path.resolve()),
        "manifest_sha256": sha(parent_path / "manifest.json"),
    }
    assert d["imputer"]["model"] == "lrmm" and d["imputer"]["checkpoint"] == str(ckpt.resolve())
    assert d["imputer"]["run"] == str(ckpt.parent.resolve())
    assert d["imputer"]["weights_sha256"] == sha(ckpt / "model.safetensors")
    assert manifest["name"].endswith("+LRMM") and manifest["config"]["discard"] == 0.5
    assert not list(out.parent.glob(".planted-d-lrmm.tmp-*"))  # written, then renamed


def test_refusals_leave_no_folder(derived, planted_artifact: Path, tmp_path: Path) -> None:
    parent_path, ckpt, out = derived
    parent = Artifact(parent_path)
    with pytest.raises(DataError, match="exists"):
        impute_artifact(parent, ckpt, out)
    # an imputer trained on other data (here: the complete data) could know the hidden values
    other = imputer_checkpoint(planted_artifact, tmp_path / "full", steps=1)
    with pytest.raises(ConfigError, match="not on the parent"):
        impute_artifact(parent, other, tmp_path / "x")
    sasrec = imputer_checkpoint(parent_path, tmp_path / "sasrec", name="sasrec", steps=1)
    with pytest.raises(ConfigError, match="does not impute"):
        impute_artifact(parent, sasrec, tmp_path / "y")
    with pytest.raises(ConfigError, match=r"best/model\.json"):
        impute_artifact(parent, tmp_path, tmp_path / "z")
    assert not any((tmp_path / n).exists() for n in "xyz")
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_fill_rules_per_kind() -> None:
    from miir.data.artifact import FieldData
    from miir.data.schema import FieldKind

    def field(kind: FieldKind, values: np.ndarray, present: np.ndarray) -> FieldData:
        return FieldData("f", kind, present, values, [], present, values)

    present = np.array([False, False, True, False, False])
    # multi-valued, width 2: >= 0.5 kept in order of probability, at least one, at most 2
    multi = field(
        FieldKind.MULTI_CATEGORICAL, np.array([[0, 0], [0, 0], [3, 4], [0, 0], [0, 0]]), present
    )
    probs = torch.zeros(5, 6)
    probs[3, 2:] = torch.tensor([0.2, 0.9, 0.6, 0.7])  # three above 0.5: the top two
    probs[4, 2:] = torch.tensor([0.1, 0.3, 0.2, 0.0])  # none above 0.5: the top one
    p, v, n = fill_field(multi, probs)
    assert n == 2 and p.tolist() == [False, False, True, True, True]
    assert v.tolist() == [[0, 0], [0, 0], [3, 4], [3, 5], [3, 0]]
    cat = field(FieldKind.CATEGORICAL, np.array([0, 1, 4, 1, 1], dtype=np.int32), present)
    p, v, n = fill_field(cat, probs)
    assert v.tolist() == [0, 1, 4, 3, 3] and v.dtype == np.int32 and n == 2
    text = field(FieldKind.TEXT, np.zeros((5, 3), dtype=np.float32), present)
    vecs = torch.arange(15.0).view(5, 3)
    p, v, n = fill_field(text, vecs)
    assert v[3].tolist() == [9.0, 10.0, 11.0] and v[2].tolist() == [0.0, 0.0, 0.0]


def test_cli_trains_an_imputer_and_writes_the_derived_artifact(
    planted_discard_artifact: Path, tmp_path: Path
) -> None:
    run = tmp_path / "lrmm"
    args = ["train", "--data", str(planted_discard_artifact), "--out", str(run), "--model", "lrmm"]
    res = runner.invoke(app, [*args, "--set", "embedding_size=16", *SHORT_RUN])
    assert res.exit_code == 0, res.output
    out = tmp_path / "derived"
    cmd = ["impute-data", "--run", str(run), "--data", str(planted_discard_artifact)]
    res = runner.invoke(app, [*cmd, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "values imputed" in res.output and "color" in res.output
    assert Artifact(out).manifest["derived"]["imputer"]["run"] == str(run.resolve())
    again = runner.invoke(app, [*cmd, "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
    assert runner.invoke(app, [*cmd, "--out", str(out), "--overwrite"]).exit_code == 0
