"""MovieLens 100K: ``u.data`` (interactions) and ``u.item`` (movies), with ``u.genre``.

- ``u.data``: tab-separated ``user item rating unix_time``, no header.
- ``u.item``: pipe-separated ``id|title|release date|video release date|IMDb URL|19 genre flags``,
  encoded in ISO-8859-1 (GroupLens ships it so; this is the format, not a decoding error).
- ``u.genre``: ``name|index`` lines giving the flag order.

Fields: ``title`` (text), ``genres`` (multi_categorical, from the flags), ``release_year``
(categorical, from the release date; missing for one movie). Placeholders in the upstream
file are read as missing, never as values: the title ``unknown`` and the genre flag ``unknown``
(the file's own marker for "no genre known") become ``null``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from miir.data.raw import RawDataset, normalize_items
from miir.data.readers._io import iter_lines
from miir.data.schema import FieldKind, FieldSpec, Schema
from miir.errors import DataError

DEFAULT_SCHEMA = Schema(
    fields=(
        FieldSpec(name="title", kind=FieldKind.TEXT),
        FieldSpec(name="genres", kind=FieldKind.MULTI_CATEGORICAL),
        FieldSpec(name="release_year", kind=FieldKind.CATEGORICAL),
    )
)
ITEM_ENCODING = "iso-8859-1"
_YEAR = re.compile(r"(\d{4})\s*$")


def parse_ratings(lines: Iterable[tuple[int, str]], *, file: str | Path = "u.data") -> pl.DataFrame:
    """``user<TAB>item<TAB>rating<TAB>time`` lines to an interactions table."""
    users, items, stamps = [], [], []
    for lineno, text in lines:
        parts = text.split("\t")
        if len(parts) != 4:
            raise DataError(
                f"malformed line: expected 4 tab-separated fields, got {len(parts)}",
                file=file,
                line=lineno,
            )
        try:
            stamp = int(parts[3])
            float(parts[2])
        except ValueError:
            raise DataError(
                f"malformed line: rating/time not numeric in {text!r}", file=file, line=lineno
            ) from None
        users.append(parts[0])
        items.append(parts[1])
        stamps.append(stamp)
    return pl.DataFrame(
        {"user": users, "item": items, "timestamp": stamps},
        schema={"user": pl.String, "item": pl.String, "timestamp": pl.Int64},
    )


def parse_genres(lines: Iterable[tuple[int, str]], *, file: str | Path = "u.genre") -> list[str]:
    """``name|index`` lines to the genre names in flag order."""
    pairs = []
    for lineno, text in lines:
        name, _, idx = text.partition("|")
        if not idx.strip().isdigit():
            raise DataError(
                f"malformed line: expected 'name|index', got {text!r}", file=file, line=lineno
            )
        pairs.append((int(idx), name))
    return [name for _, name in sorted(pairs)]


def parse_movies(
    lines: Iterable[tuple[int, str]], genres: list[str], *, file: str | Path = "u.item"
) -> pl.DataFrame:
    """``u.item`` lines to an item table with title, genres and release_year."""
    n_fixed = 5
    ids, titles, genre_sets, years = [], [], [], []
    first_line: dict[str, int] = {}
    for lineno, text in lines:
        parts = text.split("|")
        if len(parts) != n_fixed + len(genres):
            raise DataError(
                f"malformed line: expected {n_fixed + len(genres)} '|'-separated fields, got {len(parts)}",
                file=file,
                line=lineno,
            )
        flags = parts[n_fixed:]
        if any(f not in ("0", "1") for f in flags):
            raise DataError("malformed line: genre flags must be 0 or 1", file=file, line=lineno)
        title = parts[1].strip()
        if parts[0] in first_line:
            raise DataError(
                f"duplicate item {parts[0]!r} (first on line {first_line[parts[0]]})",
                file=file,
                line=lineno,
                field="item_id",
            )
        first_line[parts[0]] = lineno
        ids.append(parts[0])
        titles.append(None if title in ("", "unknown") else title)
        chosen = [g for g, f in zip(genres, flags, strict=True) if f == "1" and g != "unknown"]
        genre_sets.append(chosen or None)
        m = _YEAR.search(parts[2])
        years.append(m.group(1) if m else None)
    return pl.DataFrame(
        {"item_id": ids, "title": titles, "genres": genre_sets, "release_year": years},
        schema={
            "item_id": pl.String,
            "title": pl.String,
            "genres": pl.List(pl.String),
            "release_year": pl.String,
        },
    )


def read_movielens100k(path: str | Path, *, schema: Schema | None = None) -> RawDataset:
    """Read the MovieLens 100K folder (``u.data``, ``u.item``, ``u.genre``)."""
    path = Path(path)
    data, item, genre = path / "u.data", path / "u.item", path / "u.genre"
    interactions = parse_ratings(iter_lines(data), file=data)
    genres = parse_genres(iter_lines(genre), file=genre)
    items = parse_movies(iter_lines(item, encoding=ITEM_ENCODING), genres, file=item)
    schema = schema or DEFAULT_SCHEMA
    items = normalize_items(items, schema, file=item)
    return RawDataset(
        interactions=interactions,
        items=items,
        schema=schema,
        sources=(data, item, genre),
        name="ml-100k",
    )
