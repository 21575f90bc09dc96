"""Readers: one per input format, each returning a :class:`miir.data.raw.RawDataset`.

``READERS`` is the explicit registry (format name -> reader of a source path); an unknown
format is an error that lists the valid names. ``detect_format`` recognises a folder by the
files it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from miir.data.schema import Schema
from miir.errors import ConfigError, DataError

if TYPE_CHECKING:  # polars (raw.py) is imported only where a format is read
    from miir.data.raw import RawDataset


def _sequences(path: Path, schema: Schema | None, **_: object) -> RawDataset:
    from miir.data.readers.sequences import read_sequence_dir

    return read_sequence_dir(path, schema=schema)


def _movielens(path: Path, schema: Schema | None, **_: object) -> RawDataset:
    from miir.data.readers.movielens import read_movielens100k

    return read_movielens100k(path, schema=schema)


def _one(path: Path, patterns: tuple[str, ...], what: str) -> Path:
    found = sorted({p for pat in patterns for p in path.glob(pat)})
    if len(found) != 1:
        listed = ", ".join(p.name for p in found) or "none"
        raise DataError(
            f"expected exactly one {what} ({' or '.join(patterns)}), found {listed}", file=path
        )
    return found[0]


def _amazon2014(path: Path, schema: Schema | None, **_: object) -> RawDataset:
    from miir.data.readers.amazon2014 import read_amazon2014

    if path.is_file():
        raise DataError(
            "give the folder holding the ratings/reviews file and the meta file", file=path
        )
    inter = _one(
        path, ("ratings_*.csv", "reviews_*.json.gz", "reviews_*.json"), "interactions file"
    )
    meta = _one(path, ("meta_*.json.gz", "meta_*.json"), "metadata file")
    return read_amazon2014(inter, meta, schema=schema)


def _amazon2018(
    path: Path, schema: Schema | None, *, dedupe_meta: bool = False, **_: object
) -> RawDataset:
    from miir.data.readers.amazon2018 import read_amazon2018

    if path.is_file():
        raise DataError(
            "give the folder holding the reviews/ratings file and the meta file", file=path
        )
    meta = _one(path, ("meta_*.json.gz", "meta_*.json"), "metadata file")
    candidates = [
        p
        for pattern in ("*.json.gz", "*.json", "*.csv")
        for p in sorted(path.glob(pattern))
        if not p.name.startswith("meta_")
    ]
    if len(candidates) > 1:
        # the 5-core reviews file is the usual choice when a folder also holds the full ratings
        five_core = [p for p in candidates if p.name.split(".")[0].endswith("_5")]
        candidates = five_core if len(five_core) == 1 else candidates
    if len(candidates) != 1:
        raise DataError(
            f"expected one reviews or ratings file beside {meta.name}, found {[p.name for p in candidates]}",
            file=path,
        )
    return read_amazon2018(candidates[0], meta, schema=schema, dedupe_meta=dedupe_meta)


def _generic(
    path: Path, schema: Schema | None, *, fields: dict[str, str] | None = None, **_: object
) -> RawDataset:
    from miir.data.readers.generic import read_generic

    if schema is not None:
        raise ConfigError(
            "the generic format declares its fields in its schema file; edit that file instead"
        )
    spec = path if path.is_file() else _one(path, ("schema.toml", "schema.json"), "schema file")
    return read_generic(spec, fields=fields or None)


def _recbole(
    path: Path, schema: Schema | None, *, fields: dict[str, str] | None = None, **_: object
) -> RawDataset:
    from miir.data.readers.recbole import read_recbole

    return read_recbole(path, schema=schema, fields=fields or None)


# Readers that apply kind overrides while parsing (a column's kind decides how its cells are
# split); for the others, overrides are applied to the typed item table afterwards.
_PARSE_TIME_OVERRIDES = {"generic", "recbole"}

READERS: dict[str, Callable[..., RawDataset]] = {
    "sequences": _sequences,
    "amazon2014": _amazon2014,
    "amazon2018": _amazon2018,
    "generic": _generic,
    "movielens": _movielens,
    "recbole": _recbole,
}


def detect_format(path: Path) -> str:
    """Guess the format of a source folder (or schema file) from the names of its files."""
    path = Path(path)
    if not path.exists():
        raise DataError("source not found", file=path)
    if path.is_file():
        if path.suffix in (".toml", ".json"):
            return "generic"
        raise DataError(
            "cannot tell the format of a single file; give its folder or --format", file=path
        )
    names = {p.name for p in path.iterdir()}
    if "sequences.txt" in names:
        return "sequences"
    if {"u.data", "u.item"} <= names:
        return "movielens"
    if any(n.endswith(".inter") for n in names):
        return "recbole"
    if names & {"schema.toml", "schema.json"}:
        return "generic"
    if any(n.startswith("meta_") for n in names):
        if any(n.startswith(("ratings_", "reviews_")) for n in names):
            return "amazon2014"
        return "amazon2018"
    raise DataError(
        f"cannot tell the format from the files {sorted(names)[:8]}; pass --format ({', '.join(READERS)})",
        file=path,
    )


def read_source(
    path: str | Path,
    fmt: str = "auto",
    *,
    schema: Schema | None = None,
    overrides: dict[str, str] | None = None,
    dedupe_meta: bool = False,
) -> RawDataset:
    """Read ``path`` with the reader of ``fmt`` ('auto' detects it), with kind overrides
    (``{"name": "kind" | "drop"}``) and ``dedupe_meta`` (Amazon 2018: keep the first of
    repeated metadata records)."""
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise ConfigError(f"unknown format {fmt!r}; valid formats: {', '.join(READERS)} (or auto)")
    if fmt in _PARSE_TIME_OVERRIDES:
        return READERS[fmt](path, schema, fields=overrides, dedupe_meta=dedupe_meta)
    raw = READERS[fmt](path, schema, dedupe_meta=dedupe_meta)
    if overrides:
        from miir.data.raw import RawDataset, normalize_items

        new_schema = raw.schema.with_overrides(overrides)
        items = raw.items.select(["item_id", *new_schema.names])
        items = normalize_items(items, new_schema)
        raw = RawDataset(raw.interactions, items, new_schema, raw.sources, raw.name)
    return raw
