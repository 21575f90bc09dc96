"""Self-describing checkpoints: ``model.safetensors`` (weights and item tables) plus
``model.json`` (model name, config, fields, vocabularies, format version). Loading needs
nothing else and never unpickles. Both files are written to a temporary folder that is then
renamed, so a crash never leaves a half-written checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from miir.errors import MiirError
from miir.models import get_model
from miir.models.miir import MIIR, FieldInfo

CHECKPOINT_FORMAT = 1


def save_checkpoint(
    model: MIIR, path: str | Path, *, name: str = "miir", extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to the folder ``path`` atomically; ``extra`` is stored in the JSON."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        meta = {
            "format_version": CHECKPOINT_FORMAT,
            "model": name,
            "config": model.config.model_dump(mode="json"),
            "fields": [f.to_json() for f in model.fields],
            "n_items": model.n_items,
            **(extra or {}),
        }
        (tmp / "model.json").write_text(
            json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False), encoding="utf-8"
        )
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / "model.json"
    if not meta_path.exists():
        raise MiirError(f"{path}: not a checkpoint folder (no model.json)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format_version") != CHECKPOINT_FORMAT:
        raise MiirError(
            f"{meta_path}: checkpoint format {meta.get('format_version')} is not supported ({CHECKPOINT_FORMAT})"
        )
    return meta


def load_checkpoint(path: str | Path, *, map_location: str = "cpu") -> tuple[MIIR, dict[str, Any]]:
    """Rebuild the model from ``path`` alone; returns it (in eval mode) and its metadata."""
    path = Path(path)
    meta = read_meta(path)
    model_cls, config_cls = get_model(meta["model"])
    config = config_cls.model_validate(meta["config"])
    model = model_cls(config, [FieldInfo.from_json(f) for f in meta["fields"]], meta["n_items"])
    state = load_file(str(path / "model.safetensors"), device=map_location)
    model.load_state_dict(state)
    model.eval()
    return model, meta
