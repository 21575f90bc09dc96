"""Read a prepared artifact folder (written by :func:`miir.data.prepare.prepare`)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from miir.data.readers._io import file_sha256
from miir.data.schema import FieldKind, Schema
from miir.errors import ConfigError, DataError

SUPPORTED_FORMAT_VERSIONS = (1,)
# the manifest keys every artifact has (prepare writes them; the properties below read them)
REQUIRED_KEYS = ("files", "name", "schema", "config", "counts")

Verify = Literal["auto", "full", "off"] | bool

CHECKSUM_MISMATCH = (
    "checksum mismatch: the file was changed after `miir prepare` wrote it; "
    "re-run `miir prepare` or restore the file"
)
MISSING_FILE = (
    "missing file: manifest.json lists it but it is not there; "
    "re-run `miir prepare` or restore the file"
)
# A file modified less than this long before it was hashed is not cached: a later edit within
# the file system's timestamp granularity could leave its mtime unchanged (git's "racy clean").
RACY_WINDOW_NS = 2_000_000_000


def verified_cache_path() -> Path:
    """``$MIIR_CACHE_DIR/verified.json``, else ``$XDG_CACHE_HOME/miir`` or ``~/.cache/miir``."""
    root = os.environ.get("MIIR_CACHE_DIR")
    if root:
        return Path(root) / "verified.json"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "miir" / "verified.json"


def _stat_key(st: os.stat_result) -> list[int]:
    # ctime and inode catch what size + mtime miss: a file replaced by one with the same size
    # and a restored mtime (``rsync -a``, ``cp -p``, ``os.utime``) gets a new ctime.
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = data.get("files") if isinstance(data, dict) else None
    return entries if isinstance(entries, dict) else {}


def _save_cache(path: Path, new: dict[str, Any]) -> None:
    """Merge ``new`` into the cache file atomically; entries of deleted files are dropped. Any
    failure (read-only home, full disk) is ignored: the files are simply hashed next time."""
    tmp: str | None = None
    try:
        entries = {k: v for k, v in _load_cache(path).items() if os.path.exists(k)}
        entries.update(new)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".verified-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"version": 1, "files": entries}, fh)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def verify_files(root: Path, files: dict[str, Any], verify: Verify = "auto") -> None:
    """Check the files listed in a manifest (relative path -> sha256, or -> ``{"sha256": ...,
    "bytes": ...}``) under ``root``; raises :class:`DataError` naming the first bad file.

    Existence (and size, where recorded) is always checked. With ``verify="auto"`` a file is
    only hashed if the cache (:func:`verified_cache_path`) holds no entry for its absolute path
    with the same size, mtime, ctime and inode and the expected sha256.
    """
    if verify is True or verify == "full":
        mode = "full"
    elif verify is False or verify == "off":
        mode = "off"
    elif verify == "auto":
        mode = "auto"
    else:
        raise ConfigError(f"verify must be 'auto', 'full' or 'off', got {verify!r}")

    stats: dict[str, tuple[Path, os.stat_result, str]] = {}
    for rel, entry in files.items():
        sha = entry["sha256"] if isinstance(entry, dict) else entry
        size = entry.get("bytes") if isinstance(entry, dict) else None
        p = root / rel
        try:
            st = p.stat()
        except FileNotFoundError:
            raise DataError(MISSING_FILE, file=p) from None
        if size is not None and st.st_size != size:
            raise DataError(
                f"size mismatch: manifest.json records {size} bytes, the file has "
                f"{st.st_size}; the file was changed after `miir prepare` wrote it; "
                "re-run `miir prepare` or restore the file",
                file=p,
            )
        stats[rel] = (p, st, sha)
    if mode == "off":
        return

    cache_path = verified_cache_path()
    cache = _load_cache(cache_path) if mode == "auto" else {}
    fresh: dict[str, Any] = {}
    for p, st, sha in stats.values():
        key = str(p.absolute())
        hit = cache.get(key)
        if isinstance(hit, dict) and hit.get("sha256") == sha and hit.get("stat") == _stat_key(st):
            continue
        now = time.time_ns()
        if file_sha256(p) != sha:
            raise DataError(CHECKSUM_MISMATCH, file=p)
        if now - st.st_mtime_ns >= RACY_WINDOW_NS and _stat_key(p.stat()) == _stat_key(st):
            fresh[key] = {"sha256": sha, "stat": _stat_key(st)}
    if fresh:
        _save_cache(cache_path, fresh)


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

    def __init__(self, path: str | Path, *, verify: Verify = "auto") -> None:
        """Open the artifact at ``path`` and check it against ``manifest.json``.

        Every listed file must exist (and have the recorded size, where the manifest records
        one). ``verify`` picks how checksums are checked: ``"auto"`` (default) hashes the files
        not already verified in this state (see :func:`verify_files`), ``"full"`` or ``True``
        hashes every file, ``"off"`` or ``False`` skips the hashes.
        """
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.exists():
            raise DataError("not an artifact folder (no manifest.json)", file=self.path)
        redo = "re-run `miir prepare` for this folder"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"damaged manifest ({exc}); {redo}", file=manifest_path) from None
        if not isinstance(manifest, dict):
            raise DataError(f"damaged manifest (not a JSON object); {redo}", file=manifest_path)
        self.manifest: dict[str, Any] = manifest
        version = self.manifest.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise DataError(
                f"artifact format version {version} is not supported {SUPPORTED_FORMAT_VERSIONS}",
                file=manifest_path,
            )
        lacking = [k for k in REQUIRED_KEYS if k not in self.manifest]
        if lacking or not isinstance(self.manifest["files"], dict):
            raise DataError(
                f"damaged manifest (missing or malformed: {lacking or ['files']}); {redo}",
                file=manifest_path,
            )
        verify_files(self.path, self.manifest["files"], verify)

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

    def release_fields(self) -> None:
        """Drop the field tables :attr:`fields` loaded (the next use loads them again). A
        training run reads them once, to build its model, whose buffers hold what it uses;
        kept, they were resident through the whole run (issue 9: 19 MiB on amazon-beauty,
        the title embeddings of every item)."""
        self.__dict__.pop("fields", None)
