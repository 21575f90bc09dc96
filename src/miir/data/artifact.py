"""Read a prepared artifact folder (written by :func:`miir.data.prepare.prepare`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from miir.data.readers._io import file_sha256
from miir.data.schema import FieldKind, Schema
from miir.errors import DataError

SUPPORTED_FORMAT_VERSIONS = (1,)


@dataclass(frozen=True)
class FieldData:
    """One side field: what a model may see (``present``/``values``), and the ground truth
    before the discard (``truth_present``/``truth_values``; the same arrays without discard)."""

    name: str
    kind: FieldKind
    present: np.ndarray  # (N,) bool
    values: np.ndarray  # (N,) int32 | (N, K) int32 | (N, D) float32
    vocab: list[Any]
    truth_present: np.ndarray
    truth_values: np.ndarray

    @property
    def cardinality(self) -> int:
        """Vocabulary size including the reserved ids (categorical kinds and numeric buckets)."""
        return len(self.vocab)


class Artifact:
    """A prepared data set. Arrays are loaded lazily, read-only."""

    def __init__(self, path: str | Path, *, verify: bool = False) -> None:
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.exists():
            raise DataError("not an artifact folder (no manifest.json)", file=self.path)
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        version = self.manifest.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise DataError(
                f"artifact format version {version} is not supported {SUPPORTED_FORMAT_VERSIONS}",
                file=manifest_path,
            )
        if verify:
            for rel, sha in self.manifest["files"].items():
                if file_sha256(self.path / rel) != sha:
                    raise DataError(
                        "checksum mismatch: the artifact was modified", file=self.path / rel
                    )

    # ------------------------------------------------------------------ basics
    @property
    def name(self) -> str:
        return self.manifest["name"]

    @cached_property
    def schema(self) -> Schema:
        return Schema.model_validate(self.manifest["schema"])

    @property
    def max_len(self) -> int:
        return int(self.manifest["config"]["max_len"])

    @property
    def n_items(self) -> int:
        """Number of real items; item ids run from 2 to ``n_items + 1``."""
        return int(self.manifest["counts"]["items"])

    @property
    def n_users(self) -> int:
        return int(self.manifest["counts"]["users"])

    def _npy(self, rel: str) -> np.ndarray:
        arr = np.load(self.path / rel, allow_pickle=False)
        arr.setflags(write=False)
        return arr

    def _json(self, rel: str) -> Any:
        return json.loads((self.path / rel).read_text(encoding="utf-8"))

    @cached_property
    def item_names(self) -> list[str]:
        return self._json("vocab/items.json")

    @cached_property
    def user_names(self) -> list[str]:
        return self._json("vocab/users.json")

    @cached_property
    def item_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.item_names) if i >= 2}

    def item_ids(self, names: list[str]) -> np.ndarray:
        """Map item names to ids; an unknown name is an error that names it."""
        index = self.item_index
        unknown = [n for n in names if n not in index]
        if unknown:
            raise DataError(
                f"unknown item id(s): {unknown[:10]}" + (" ..." if len(unknown) > 10 else "")
            )
        return np.asarray([index[n] for n in names], dtype=np.int64)

    # ------------------------------------------------------------------ sequences and split
    @cached_property
    def offsets(self) -> np.ndarray:
        return self._npy("sequences/offsets.npy")

    @cached_property
    def flat_items(self) -> np.ndarray:
        return self._npy("sequences/items.npy")

    def sequence(self, user: int) -> np.ndarray:
        """The full chronological sequence of user ``user`` (train + valid + test items)."""
        return self.flat_items[self.offsets[user] : self.offsets[user + 1]]

    def split(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """``(targets (U,), negatives (U, K))`` for ``stage`` in {'valid', 'test'}."""
        if stage not in ("valid", "test"):
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        return self._npy(f"split/{stage}_target.npy"), self._npy(f"split/{stage}_negatives.npy")

    # ------------------------------------------------------------------ fields
    @cached_property
    def fields(self) -> dict[str, FieldData]:
        out: dict[str, FieldData] = {}
        has_truth = (self.path / "truth").exists()
        for spec in self.schema.fields:
            name = spec.name
            present = self._npy(f"items/{name}.present.npy")
            values = self._npy(f"items/{name}.values.npy")
            truth_present = self._npy(f"truth/{name}.present.npy") if has_truth else present
            truth_values = self._npy(f"truth/{name}.values.npy") if has_truth else values
            if spec.kind in (FieldKind.CATEGORICAL, FieldKind.MULTI_CATEGORICAL):
                vocab = self._json(f"vocab/{name}.json")
            elif spec.kind == FieldKind.NUMERIC:
                edges = self._json(f"vocab/{name}.json")["bucket_edges"]
                vocab = ["<pad>", "<missing>"] + [f"bucket{i}" for i in range(len(edges) + 1)]
            else:
                vocab = []
            out[name] = FieldData(
                name, spec.kind, present, values, vocab, truth_present, truth_values
            )
        return out
