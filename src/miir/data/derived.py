"""Derived artifacts: a prepared artifact whose missing side values a trained imputer filled in.

The MIIR paper trains FDSA and NOVA on the side information LRMM imputed (FDSA+LRMM and
NOVA+LRMM, Section 4.3). :func:`impute_artifact` makes that data set: it loads an imputer's
checkpoint (any registered model with the :class:`~miir.models.base.Imputer` capability:
``lrmm``, ``miir``, ...), asks it for every side field of every item, each item alone (an
artifact holds one value per item, not one per sequence), and writes a new artifact folder:

- every missing value of every field the imputer knows is filled: categorical and numeric
  (bucket) fields with the most probable value; multi-valued fields with the values of
  probability >= 0.5, at least the most probable one and at most as many as the field's width
  (the longest list of the data); text fields with the predicted vector. Values present in the
  parent are kept as they are. A numeric field's ``raw`` file is the parent's: an imputed
  bucket has no raw value;
- the users, sequences, split, negatives and vocabularies are the parent's files, copied byte
  for byte, so runs on the two artifacts are paired over the same evaluation cases
  (:func:`~miir.evaluation.compare.cases_checksum` is the same);
- the parent's ``truth/`` folder is copied as well, so imputation can still be scored against
  the values the discard hid; nothing of it reaches the new item files, and the imputer must
  have been trained on the parent itself (its run records the parent's manifest checksum): an
  imputer trained on other data (the complete data, say) could have learnt the hidden values;
- ``manifest.json`` is the parent's with per-file checksums for the new folder, the missing
  rates after imputation, and a ``derived`` record naming the parent (name, path, manifest
  checksum), the imputer (run, checkpoint, model, config, weights checksum) and how many values
  of each field were imputed.

The folder is written under a temporary name next to ``out`` and renamed when complete.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from miir.atomic import replace_dir
from miir.data.artifact import Artifact, FieldData
from miir.data.prepare import _versions, _write_json, _write_npy
from miir.data.readers._io import file_sha256
from miir.data.schema import FIRST_VALUE_ID, FieldKind
from miir.errors import ConfigError, DataError
from miir.training.checkpoint import CheckpointError, checkpoint_dir

__all__ = ["DERIVED_FORMAT", "fill_field", "impute_artifact"]

DERIVED_FORMAT = 1
RULES = {
    "categorical": "most probable value",
    "numeric": "most probable bucket (raw values stay the parent's)",
    "multi_categorical": "values of probability >= 0.5, at least the most probable one, at "
    "most the field's width",
    "text": "predicted vector",
}


def _sha_bytes(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checkpoint_dir(imputer_run: Path) -> Path:
    """A run folder's ``best/`` checkpoint, or ``imputer_run`` itself if it is a checkpoint."""
    try:
        return checkpoint_dir(imputer_run)
    except CheckpointError as exc:
        raise ConfigError(f"{exc}; train the imputer first (miir train --model lrmm ...)") from None


def _check_trained_on_parent(meta: dict[str, Any], parent_sha: str, checkpoint: Path) -> None:
    """The imputer must have learnt from the parent's observed values only (see the module
    docstring): its run's artifact record must carry the parent's manifest checksum."""
    trained_on = meta.get("artifact") or {}
    sha = trained_on.get("manifest_sha256")
    if sha is None:
        raise ConfigError(
            f"{checkpoint / 'model.json'}: does not record the artifact the imputer was trained "
            "on, so it cannot be shown not to know the hidden values; use a run of `miir train`"
        )
    if sha != parent_sha:
        raise ConfigError(
            f"{checkpoint}: the imputer was trained on {trained_on.get('path', '?')} "
            f"(manifest {sha[:12]}), not on the parent artifact (manifest {parent_sha[:12]}); "
            "an imputer trained on other data could know values the parent hides: train it on "
            "the parent"
        )


def _check_catalogue(model: torch.nn.Module, parent: Artifact, checkpoint: Path) -> list[str]:
    """The imputer's items and fields must be the parent's; returns its field names."""
    from miir.models.fields import ItemCatalogue

    cat = model.catalogue
    if cat.n_items != parent.n_items or (
        cat.item_names is not None and list(cat.item_names) != list(parent.item_names)
    ):
        raise ConfigError(
            f"{checkpoint}: the imputer's items ({cat.n_items}) are not the parent's "
            f"({parent.n_items} in {parent.path})"
        )
    names = [f.name for f in cat.fields]
    missing = [n for n in names if n not in parent.fields]
    if missing:
        raise ConfigError(f"{checkpoint}: field(s) {missing} are not in the parent {parent.path}")
    mine = ItemCatalogue.from_artifact(parent, names)
    for theirs, ours in zip(cat.fields, mine.fields, strict=True):
        if theirs != ours or cat.vocabs.get(theirs.name) != mine.vocabs.get(ours.name):
            raise ConfigError(
                f"{checkpoint}: field {theirs.name!r} of the imputer ({theirs.kind.value}, "
                f"{theirs.cardinality or theirs.dim} values) does not match the parent's "
                f"({ours.kind.value}, {ours.cardinality or ours.dim}) in {parent.path}"
            )
    if not names:
        raise ConfigError(f"{checkpoint}: the imputer reads no side field; nothing to impute")
    return names


@torch.no_grad()
def _predict_items(model: torch.nn.Module, n_items: int, batch_size: int) -> dict[str, Tensor]:
    """Every side field of every item (ids 0 .. n_items + 1, each alone): name -> (N + 2, ...)."""
    ids = torch.arange(n_items + FIRST_VALUE_ID)
    chunks: dict[str, list[Tensor]] = {}
    for start in range(0, len(ids), batch_size):
        out = model.impute(ids[start : start + batch_size, None])  # name -> (b, 1, ...)
        for name, pred in out.items():
            chunks.setdefault(name, []).append(pred[:, 0].float().cpu())
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def fill_field(fd: FieldData, pred: Tensor) -> tuple[np.ndarray, np.ndarray, int]:
    """The field's (present, values) with every missing value of a real item filled from the
    predictions ``pred`` (N + 2, ...) by the kind's rule (:data:`RULES`); returns them and the
    number of values filled. Present values and the rows of ids 0 and 1 are kept."""
    present = np.array(fd.present, dtype=bool)
    values = np.array(fd.values)
    fill = ~present
    fill[:FIRST_VALUE_ID] = False
    rows = np.flatnonzero(fill)
    p = pred[torch.from_numpy(rows)]  # (R, V + 2) or (R, D)
    if fd.kind in (FieldKind.CATEGORICAL, FieldKind.NUMERIC):
        best = p[:, FIRST_VALUE_ID:].argmax(-1) + FIRST_VALUE_ID  # (R,)
        values[rows] = best.numpy().astype(values.dtype)
    elif fd.kind == FieldKind.MULTI_CATEGORICAL:
        probs = p[:, FIRST_VALUE_ID:]  # (R, V)
        width = min(values.shape[1], probs.shape[1])
        top, order = probs.sort(dim=-1, descending=True)  # (R, V)
        keep = (top[:, :width] >= 0.5) | (torch.arange(width) == 0)  # (R, width): >= 1 value
        ids = torch.where(keep, order[:, :width] + FIRST_VALUE_ID, 0)  # 0-padded id lists
        values[rows] = 0
        values[rows, :width] = ids.numpy().astype(values.dtype)
    elif fd.kind == FieldKind.TEXT:
        values[rows] = p.numpy().astype(values.dtype)
    else:  # pragma: no cover - the schema forbids other kinds
        raise DataError(f"no imputation rule for kind {fd.kind.value!r}", field=fd.name)
    present[rows] = True
    return present, values, len(rows)


def _copy_parent_files(parent: Artifact, tmp: Path, skip: set[str]) -> dict[str, Any]:
    """Copy the parent's files (all but ``skip``) byte for byte; returns their manifest
    entries, each checked against the copy."""
    entries: dict[str, Any] = {}
    for rel, entry in parent.manifest["files"].items():
        if rel in skip:
            continue
        dst = tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(parent.path / rel, dst)
        want = entry["sha256"] if isinstance(entry, dict) else entry
        if file_sha256(dst) != want:
            raise DataError(
                "checksum mismatch while copying: the parent changed after it was opened",
                file=parent.path / rel,
            )
        entries[rel] = entry
    return entries


def impute_artifact(
    parent: Artifact,
    imputer_run: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    batch_size: int = 2048,
) -> dict[str, Any]:
    """Write the artifact ``out``: ``parent`` with every missing side value filled by the
    imputer of ``imputer_run`` (a run folder or a checkpoint); returns its manifest. See the
    module docstring for the rules and what is kept."""
    from miir.models.base import Imputer
    from miir.training.checkpoint import load_checkpoint

    imputer_run, out = Path(imputer_run), Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"artifact folder {out} exists (pass --overwrite to replace it)")
    if out.resolve() == parent.path.resolve():
        raise DataError(f"{out} is the parent artifact; write the derived one elsewhere")
    checkpoint = _checkpoint_dir(imputer_run)
    model, meta = load_checkpoint(checkpoint)
    if not isinstance(model, Imputer):
        raise ConfigError(
            f"{checkpoint}: model {meta.get('model')!r} does not impute side fields "
            "(imputers: lrmm and the MIIR variants)"
        )
    parent_sha = _sha_bytes(parent.path / "manifest.json")
    _check_trained_on_parent(meta, parent_sha, checkpoint)
    names = _check_catalogue(model, parent, checkpoint)
    model.eval()
    predictions = _predict_items(model, parent.n_items, batch_size)

    new_files = {f"items/{n}.{part}.npy" for n in names for part in ("present", "values")}
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        files = _copy_parent_files(parent, tmp, new_files)
        manifest = _derived_manifest(parent, parent_sha, imputer_run, checkpoint, meta)
        for name in names:
            present, values, n_filled = fill_field(parent.fields[name], predictions[name])
            _write_npy(tmp / f"items/{name}.present.npy", present)
            _write_npy(tmp / f"items/{name}.values.npy", values)
            info = manifest["fields"][name]
            info["imputed_values"] = n_filled
            info["missing_rate_after_imputation"] = 0.0
            manifest["derived"]["fields"][name] = {
                "imputed_values": n_filled,
                "rule": RULES[parent.fields[name].kind.value],
            }
        for rel in sorted(new_files):
            files[rel] = file_sha256(tmp / rel)
        manifest["derived"]["not_imputed"] = [n for n in parent.fields if n not in names]
        manifest["missing_rate"]["side_fields_after_imputation"] = _side_missing_rate(tmp, parent)
        manifest["files"] = dict(sorted(files.items()))
        _write_json(tmp / "manifest.json", manifest)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _derived_manifest(
    parent: Artifact,
    parent_sha: str,
    imputer_run: Path,
    checkpoint: Path,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The parent's manifest with the new name, the library versions of this step, and the
    ``derived`` record (fields are added by the caller)."""
    manifest = copy.deepcopy(parent.manifest)
    display = meta.get("display_name") or meta.get("model")
    manifest["name"] = f"{parent.name}+{display}"
    manifest["versions"] = _versions()
    manifest["derived"] = {
        "format_version": DERIVED_FORMAT,
        "kind": "imputed",
        "parent": {
            "name": parent.name,
            "path": str(parent.path.resolve()),
            "manifest_sha256": parent_sha,
        },
        "imputer": {
            "run": str(imputer_run.resolve()),
            "checkpoint": str(checkpoint.resolve()),
            "model": meta.get("model"),
            "display_name": display,
            "config": meta.get("config"),
            "epoch": meta.get("epoch"),
            "weights_sha256": file_sha256(checkpoint / "model.safetensors"),
            "trained_on": meta.get("artifact"),
        },
        "rules": RULES,
        "fields": {},
    }
    return manifest


def _side_missing_rate(tmp: Path, parent: Artifact) -> float:
    """The share of (item, side field) values still missing in the new item files."""
    total = missing = 0
    for name in parent.fields:
        present = np.load(tmp / f"items/{name}.present.npy", allow_pickle=False)[FIRST_VALUE_ID:]
        total += len(present)
        missing += int((~present).sum())
    return missing / total if total else 0.0
