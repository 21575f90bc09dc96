"""Sequence files: ``sequences.txt`` plus ``items.jsonl`` (the S3-Rec / P5 layout).

``sequences.txt`` holds one user per line, ``user item item ...`` in time order (whitespace
separated). ``items.jsonl`` holds one JSON object per item with an ``item_id`` key and any other
fields; ``null`` is missing. Field kinds are inferred from the JSON types (see
:func:`miir.data.schema.infer_schema`) unless a schema is given.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import polars as pl

from miir.data.raw import RawDataset, normalize_items
from miir.data.readers._io import iter_json_lines, iter_lines
from miir.data.schema import Schema, infer_schema
from miir.errors import DataError


def parse_sequences(
    lines: Iterable[tuple[int, str]], *, file: str | Path = "<sequences>"
) -> pl.DataFrame:
    """Turn numbered ``user item item ...`` lines into an interactions table (timestamp = position)."""
    users: list[str] = []
    items: list[str] = []
    stamps: list[int] = []
    first_line: dict[str, int] = {}
    for lineno, text in lines:
        parts = text.split()
        if len(parts) < 2:
            raise DataError(
                f"malformed line: expected 'user item [item ...]', got {text.strip()!r}",
                file=file,
                line=lineno,
            )
        user = parts[0]
        if user in first_line:
            raise DataError(
                f"user {user!r} appears again (first on line {first_line[user]})",
                file=file,
                line=lineno,
            )
        first_line[user] = lineno
        users.extend([user] * (len(parts) - 1))
        items.extend(parts[1:])
        stamps.extend(range(len(parts) - 1))
    if not users:
        raise DataError("no sequences", file=file)
    return pl.DataFrame(
        {"user": users, "item": items, "timestamp": stamps},
        schema={"user": pl.String, "item": pl.String, "timestamp": pl.Int64},
    )


def parse_item_records(
    records: Iterable[tuple[int, dict]], *, file: str | Path = "<items>"
) -> pl.DataFrame:
    """Turn numbered JSON objects into an item table keyed by ``item_id`` (types as in the JSON)."""
    rows: list[dict] = []
    for lineno, obj in records:
        if obj.get("item_id") in (None, ""):
            raise DataError("record has no 'item_id'", file=file, line=lineno)
        obj = dict(obj)
        obj["item_id"] = str(obj["item_id"])
        obj["_line"] = lineno
        rows.append(obj)
    if not rows:
        raise DataError("no items", file=file)
    try:
        df = pl.DataFrame(rows, infer_schema_length=None)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        raise DataError(
            f"fields with inconsistent types: {exc}".splitlines()[0], file=file
        ) from None
    dupes = df.filter(pl.col("item_id").is_duplicated())
    if len(dupes):
        first = dupes.get_column("item_id")[0]
        lines = df.filter(pl.col("item_id") == first).get_column("_line").to_list()
        raise DataError(
            f"duplicate item {first!r} (lines {lines})", file=file, line=lines[1], field="item_id"
        )
    return df.drop("_line")


def read_sequence_dir(
    path: str | Path,
    *,
    schema: Schema | None = None,
    sequences_name: str = "sequences.txt",
    items_name: str = "items.jsonl",
) -> RawDataset:
    """Read a folder holding ``sequences.txt`` and (optionally) ``items.jsonl``."""
    path = Path(path)
    seq_path = path / sequences_name
    items_path = path / items_name
    interactions = parse_sequences(iter_lines(seq_path), file=seq_path)
    sources = [seq_path]
    if items_path.exists():
        items = parse_item_records(iter_json_lines(items_path), file=items_path)
        sources.append(items_path)
    else:
        items = pl.DataFrame({"item_id": []}, schema={"item_id": pl.String})
    schema = schema if schema is not None else infer_schema(items)
    items = normalize_items(items, schema, file=items_path)
    return RawDataset(
        interactions=interactions,
        items=items,
        schema=schema,
        sources=tuple(sources),
        name=path.name,
    )
