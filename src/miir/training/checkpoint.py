"""Self-describing checkpoints for any registered model: ``model.safetensors`` (weights and item
tables) plus ``model.json`` (registry name, config, the item catalogue with its field
vocabularies and item names, format version). Loading needs nothing else and never unpickles.
Both files are written to a temporary folder that is then renamed, so a crash never leaves a
half-written checkpoint. Every failure to load is one :class:`~miir.errors.MiirError` line that
names the file and says what to do."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from miir.atomic import replace_dir
from miir.errors import MiirError
from miir.models import build_model, get_entry
from miir.models.base import SequenceModel
from miir.models.fields import ItemCatalogue
from miir.options import NEUTRAL_OPTIONS

CHECKPOINT_FORMAT = 2


class CheckpointError(MiirError):
    """A checkpoint that cannot be read: names the file and what to do."""


def save_checkpoint(
    model: SequenceModel, path: str | Path, *, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to the folder ``path`` atomically; ``extra`` is stored in the JSON."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        meta = {
            "format_version": CHECKPOINT_FORMAT,
            "model": getattr(model, "registry_name", None) or type(model).__name__.lower(),
            "display_name": model.display_name(),
            "config": model.config.model_dump(mode="json"),
            "catalogue": model.catalogue.to_json(),
            "n_items": model.n_items,
            **(extra or {}),
        }
        (tmp / "model.json").write_text(
            json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False), encoding="utf-8"
        )
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


RETRAIN = "re-run `miir train` (or restore the folder from a copy)"


def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint folder of ``path``: a checkpoint itself, or a run folder's ``best/``."""
    path = Path(path)
    if (path / "model.json").is_file():
        return path
    if (path / "best" / "model.json").is_file():
        return path / "best"
    raise CheckpointError(
        f"{path}: neither a checkpoint (model.json) nor a run folder written by `miir train` "
        "(best/model.json)"
    )


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / "model.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint folder (no model.json); {RETRAIN}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: damaged ({exc}); {RETRAIN}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != CHECKPOINT_FORMAT:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(
            f"{meta_path}: checkpoint format {version} is not supported by this version of miir "
            f"(it reads format {CHECKPOINT_FORMAT}); {RETRAIN}"
        )
    return meta


def saved_config(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """A saved config's values, with every option added since it was written filled in at the
    value that reproduces how it was trained (:data:`miir.options.NEUTRAL_OPTIONS`), not at
    today's default: a model saved before ``multi_loss`` existed keeps Eq. 11's mean."""
    return {**{k: v for k, v in NEUTRAL_OPTIONS.items() if k in cls.model_fields}, **values}


def load_checkpoint(
    path: str | Path, *, map_location: str = "cpu"
) -> tuple[SequenceModel, dict[str, Any]]:
    """Rebuild the model from ``path`` alone; returns it (in eval mode) and its metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_meta(path)
    weights = path / "model.safetensors"
    try:
        name = meta["model"]
        entry = get_entry(name)
        config = entry.cls.Config.model_validate(saved_config(entry.cls.Config, meta["config"]))
        catalogue = ItemCatalogue.from_json(meta["catalogue"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path / 'model.json'}: damaged ({exc}); {RETRAIN}") from None
    model = build_model(name, config, catalogue)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing; {RETRAIN}")
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: damaged or truncated ({exc}); {RETRAIN}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{weights}: does not match {path / 'model.json'} ({first[0] if first else exc}); "
            f"{RETRAIN}"
        ) from None
    model.eval()
    return model, meta
