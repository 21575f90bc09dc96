"""RecBole atomic files (Zhao et al., CIKM 2021; recbole.io/docs/user_guide/data/atomic_files.html).

A data set ``<name>`` is a folder holding ``<name>.inter`` and, optionally, ``<name>.item``
(``.user`` and other atomic files are not read). Each file is tab-separated text, without
quoting; the first line is the header, one ``name:type`` per column, with ``type`` one of

- ``token``: a single value (an id, a brand);
- ``token_seq``: several values separated by ``seq_separator`` (default a space, as in RecBole);
- ``float``: a number;
- ``float_seq``: several numbers separated by ``seq_separator``.

An empty cell is missing. For example (``ml-100k.inter`` and ``ml-100k.item``)::

    user_id:token   item_id:token   rating:float    timestamp:float
    196             242             3               881250949

    item_id:token   movie_title:token_seq   release_year:token  class:token_seq
    242             Kolya                   1996                Comedy

``.inter`` must have ``user_id`` and ``item_id`` columns; its ``timestamp`` column gives the time
(Unix seconds, floored to an integer). Without a ``timestamp`` column the file order is the time
order: the timestamp is the record's index in the file. Other columns (``rating``) are ignored.

The ``.item`` columns other than ``item_id`` are the side fields, with kinds inferred from the
header type:

- ``token`` -> categorical, ``token_seq`` -> multi_categorical (the values split on
  ``seq_separator``), ``float`` -> numeric;
- a field named ``title``, ``description``, ``name``, ``text`` or ``review`` -> text, and so is
  a ``token_seq`` field whose name ends in one of these after an underscore (``movie_title``);
  text keeps the cell as written;
- ``float_seq`` is not supported: such a field must be dropped (``fields={"f": "drop"}``, or a
  ``schema`` without it).

``fields`` overrides inferred kinds (``{"genre": "text", "class": "drop"}``); ``schema`` replaces
the inference (its fields must be columns of ``.item``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import polars as pl

from miir.data.raw import RawDataset, normalize_items
from miir.data.readers._io import iter_lines
from miir.data.readers.generic import LINE, parse_interactions, parse_items
from miir.data.schema import FieldKind, Schema, schema_from_mapping
from miir.errors import DataError

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
TEXT_NAMES = frozenset({"title", "description", "name", "text", "review"})
_UNSUPPORTED = "float_seq"


def parse_atomic(
    lines: Iterable[tuple[int, str]], *, file: str | Path = "<atomic>"
) -> tuple[dict[str, str], pl.DataFrame]:
    """Turn numbered atomic-file lines into ``({name: type}, table)``.

    The table has one String column per header field (empty cells ``null``) plus :data:`LINE`.
    A header field that is not ``name:type`` with a known type, a repeated name, or a record
    with the wrong number of fields raises :class:`DataError` naming the file and line.
    """
    types: dict[str, str] | None = None
    columns: list[list[str | None]] = []
    record_lines: list[int] = []
    for lineno, text in lines:
        cells = text.split("\t")
        if types is None:
            types = {}
            for cell in cells:
                name, colon, kind = cell.strip().rpartition(":")
                if not colon or not name:
                    raise DataError(
                        f"malformed header: expected 'name:type', got {cell.strip()!r}",
                        file=file,
                        line=lineno,
                    )
                if kind not in ATOMIC_TYPES:
                    raise DataError(
                        f"unknown type {kind!r}; valid types: {', '.join(ATOMIC_TYPES)}",
                        file=file,
                        line=lineno,
                        field=name,
                    )
                if name in types:
                    raise DataError(
                        "repeated column name in the header", file=file, line=lineno, field=name
                    )
                types[name] = kind
            columns = [[] for _ in types]
            continue
        if len(cells) != len(types):
            raise DataError(
                f"malformed line: {len(cells)} tab-separated fields, the header has {len(types)}",
                file=file,
                line=lineno,
            )
        for col, value in zip(columns, cells, strict=True):
            col.append(value if value.strip() else None)
        record_lines.append(lineno)
    if types is None:
        raise DataError("empty file", file=file)
    data = {n: pl.Series(n, col, dtype=pl.String) for n, col in zip(types, columns, strict=True)}
    data[LINE] = pl.Series(LINE, record_lines, dtype=pl.Int64)
    return types, pl.DataFrame(data)


def infer_kind(name: str, atomic_type: str) -> str:
    """The field kind of a ``.item`` column (``"float_seq"`` when unsupported)."""
    if atomic_type == "float_seq":
        return _UNSUPPORTED
    if atomic_type == "float":
        return FieldKind.NUMERIC.value
    if name in TEXT_NAMES or (atomic_type == "token_seq" and name.rsplit("_", 1)[-1] in TEXT_NAMES):
        return FieldKind.TEXT.value
    if atomic_type == "token_seq":
        return FieldKind.MULTI_CATEGORICAL.value
    return FieldKind.CATEGORICAL.value


def item_schema(
    types: dict[str, str],
    *,
    item_field: str = "item_id",
    schema: Schema | None = None,
    fields: dict[str, str] | None = None,
    file: str | Path = "<item>",
) -> Schema:
    """The schema of an ``.item`` file: inferred from its header (or ``schema``), then ``fields``.

    A ``float_seq`` field left in the schema raises :class:`DataError` naming it.
    """
    if schema is None:
        inferred = {n: infer_kind(n, t) for n, t in types.items() if n != item_field}
        overrides = dict(fields or {})
        unknown = sorted(set(overrides) - set(inferred))
        if unknown:
            raise DataError(
                f"override names unknown field(s) {unknown}; fields are {sorted(inferred)}",
                file=file,
            )
        specs = []
        for n, kind in inferred.items():
            kind = overrides.get(n, kind)
            if kind == "drop":
                continue
            if types[n] == _UNSUPPORTED:
                _unsupported(n, file=file)
            specs.append({"name": n, "kind": kind})
        return schema_from_mapping({"fields": specs}, file=file)
    if fields:
        schema = schema.with_overrides(fields)
    for spec in schema.fields:
        if types.get(spec.name) == _UNSUPPORTED:
            _unsupported(spec.name, file=file)
    return schema


def _unsupported(name: str, *, file: str | Path) -> None:
    raise DataError(
        f"unsupported type float_seq; drop the field (fields={{{name!r}: 'drop'}})",
        file=file,
        field=name,
    )


def parse_inter(
    types: dict[str, str],
    table: pl.DataFrame,
    *,
    user_field: str = "user_id",
    item_field: str = "item_id",
    time_field: str = "timestamp",
    file: str | Path = "<inter>",
) -> pl.DataFrame:
    """The interactions of an ``.inter`` table; file order is the time order without ``time_field``."""
    for n in (user_field, item_field):
        if n not in types:
            raise DataError(f"missing column {n!r} (columns are {list(types)})", file=file, field=n)
    if time_field not in types:
        table = table.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(time_field))
    elif types[time_field] not in ("float", "token"):
        raise DataError(
            f"the time column must be float, got {types[time_field]}", file=file, field=time_field
        )
    return parse_interactions(
        table, user=user_field, item=item_field, timestamp=time_field, file=file
    )


def parse_item(
    types: dict[str, str],
    table: pl.DataFrame,
    schema: Schema,
    *,
    item_field: str = "item_id",
    seq_separator: str = " ",
    file: str | Path = "<item>",
) -> pl.DataFrame:
    """The item table of an ``.item`` table, typed by ``schema`` (``token_seq`` values split)."""
    if item_field not in types:
        raise DataError(
            f"missing column {item_field!r} (columns are {list(types)})",
            file=file,
            field=item_field,
        )
    splits = []
    for spec in schema.fields:
        if spec.kind == FieldKind.MULTI_CATEGORICAL and types.get(spec.name) == "token_seq":
            splits.append(pl.col(spec.name).str.split(seq_separator))
    if splits:
        table = table.with_columns(splits)
    return parse_items(table, schema, item_id=item_field, list_separator="", file=file)


def find_name(folder: Path) -> str:
    """The data set name in ``folder``: the folder's name, or the stem of its only ``.inter`` file."""
    if (folder / f"{folder.name}.inter").exists():
        return folder.name
    inters = sorted(p.stem for p in folder.glob("*.inter"))
    if len(inters) == 1:
        return inters[0]
    if not inters:
        raise DataError("no .inter file in this folder", file=folder)
    raise DataError(f"several .inter files {inters}: give the data set name", file=folder)


def read_recbole(
    folder: str | Path,
    name: str | None = None,
    *,
    schema: Schema | None = None,
    fields: dict[str, str] | None = None,
    user_field: str = "user_id",
    item_field: str = "item_id",
    time_field: str = "timestamp",
    seq_separator: str = " ",
) -> RawDataset:
    """Read ``<folder>/<name>.inter`` and, if present, ``<folder>/<name>.item``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder", file=folder)
    name = name or find_name(folder)
    inter_path = folder / f"{name}.inter"
    item_path = folder / f"{name}.item"
    types, table = parse_atomic(iter_lines(inter_path), file=inter_path)
    interactions = parse_inter(
        types,
        table,
        user_field=user_field,
        item_field=item_field,
        time_field=time_field,
        file=inter_path,
    )
    sources = [inter_path]
    if item_path.exists():
        types, table = parse_atomic(iter_lines(item_path), file=item_path)
        schema = item_schema(
            types, item_field=item_field, schema=schema, fields=fields, file=item_path
        )
        items = parse_item(
            types, table, schema, item_field=item_field, seq_separator=seq_separator, file=item_path
        )
        sources.append(item_path)
    else:
        if (schema is not None and schema.fields) or fields:
            raise DataError("fields are given but there is no .item file", file=item_path)
        schema = Schema()
        items = pl.DataFrame(schema={"item_id": pl.String})
    items = normalize_items(items, schema, file=item_path)
    return RawDataset(
        interactions=interactions, items=items, schema=schema, sources=tuple(sources), name=name
    )
