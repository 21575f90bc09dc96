"""Generic tables: an interactions table, an item table and a small schema file that ties them.

The schema file (TOML, or JSON with the same structure) names the files, their columns and the
kind of each side field; paths are relative to the schema file::

    name = "my-data"            # optional: the data set name (default: the schema file's stem)

    [interactions]
    path = "inter.csv"          # .csv, .tsv (optionally .gz) or .parquet
    user = "user_id"            # default "user_id"
    item = "item_id"            # default "item_id"
    timestamp = "ts"            # default "timestamp"

    [items]                     # optional when no fields are declared
    path = "items.parquet"      # .csv, .tsv (optionally .gz), .parquet or .jsonl (optionally .gz)
    id = "item_id"              # default "item_id"
    list_separator = "|"        # default "|": splits string values of multi_categorical fields

    [fields]                    # name = kind, or [fields.price] kind = "numeric", n_buckets = 5
    brand = "categorical"
    categories = "multi_categorical"
    title = "text"
    price = "numeric"

An unknown key is an error (a typo must not be silently ignored). Every keyword of
:func:`read_generic` overrides the file.

Formats:

- CSV/TSV: a header line, then one record per line (quoted fields may span lines, RFC 4180). An
  empty cell is missing. A record with the wrong number of fields is reported with its line.
- Parquet: typed columns; errors name the row (1-based) rather than a line.
- JSON lines (items only): one object per line; an absent key or ``null`` is missing. Lists are
  multi-valued; other values are read as strings or numbers.

Timestamps may be integers (Unix seconds), floats (floored to whole seconds), ISO 8601 strings
(``2020-01-31``, ``2020-01-31T12:00:00+02:00``; a value without a zone is taken as UTC) or, in
Parquet, Date/Datetime columns; they become Int64 epoch seconds. Millisecond epochs are not
detected: convert them first. Columns of the item table that no field declares are ignored.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from miir.data.raw import RawDataset, normalize_items
from miir.data.readers._io import iter_json_lines, iter_lines
from miir.data.schema import FieldKind, Schema, load_schema_file, schema_from_mapping
from miir.errors import DataError

LINE = "_line"  # 1-based source line of each record (CSV and JSON lines only)

_TOP_KEYS = {"name", "interactions", "items", "fields"}
_INTER_KEYS = {"path", "user", "item", "timestamp"}
_ITEM_KEYS = {"path", "id", "list_separator"}


# --- tables ---------------------------------------------------------------------------------------


def parse_csv(
    lines: Iterable[tuple[int, str]], *, file: str | Path = "<csv>", separator: str = ","
) -> pl.DataFrame:
    """Turn numbered CSV lines (header first) into a table of String columns plus :data:`LINE`.

    Give it every line, blank ones included (``iter_lines(path, skip_blank=False)``), so that a
    record spanning lines gets the number of its first line. Empty cells are ``null``. A record
    whose field count differs from the header's raises :class:`DataError` naming its line.
    """
    current = 0

    def feed() -> Iterator[str]:
        nonlocal current
        for lineno, text in lines:
            current = lineno
            yield text + "\n"

    reader = csv.reader(feed(), delimiter=separator, strict=True)
    header: list[str] | None = None
    columns: list[list[str | None]] = []
    record_lines: list[int] = []
    while True:
        start = current + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"malformed line: {exc}", file=file, line=current) from None
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if header is None:
            header = [h.strip() for h in row]
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes:
                raise DataError(
                    f"duplicate column names in the header: {dupes}", file=file, line=start
                )
            columns = [[] for _ in header]
            continue
        if len(row) != len(header):
            raise DataError(
                f"malformed line: {len(row)} fields, the header has {len(header)}",
                file=file,
                line=start,
            )
        for col, value in zip(columns, row, strict=True):
            col.append(value if value.strip() else None)
        record_lines.append(start)
    if header is None:
        raise DataError("empty file", file=file)
    data: dict[str, Any] = {
        name: pl.Series(name, col, dtype=pl.String)
        for name, col in zip(header, columns, strict=True)
    }
    data[LINE] = pl.Series(LINE, record_lines, dtype=pl.Int64)
    return pl.DataFrame(data)


def _json_column(name: str, values: list[Any], lines: list[int], *, file: str | Path) -> pl.Series:
    """One column of JSON values: lists -> List(String), numbers -> Int64/Float64, else String."""
    present = [(v, ln) for v, ln in zip(values, lines, strict=True) if v is not None]
    for v, ln in present:
        if isinstance(v, dict):
            raise DataError(
                "expected a value or a list, got an object", file=file, line=ln, field=name
            )
    if any(isinstance(v, list) for v, _ in present):
        out: list[list[str] | None] = []
        for v in values:
            if v is None:
                out.append(None)
            elif isinstance(v, list):
                out.append([_json_str(x) for x in v if x is not None])
            else:
                out.append([_json_str(v)])
        return pl.Series(name, out, dtype=pl.List(pl.String))
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v, _ in present):
        # Int64, not Float64: a categorical year 1996 must not read "1996.0"
        return pl.Series(name, values, dtype=pl.Int64)
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v, _ in present):
        return pl.Series(name, [None if v is None else float(v) for v in values], dtype=pl.Float64)
    return pl.Series(name, [None if v is None else _json_str(v) for v in values], dtype=pl.String)


def _json_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def parse_json_records(
    records: Iterable[tuple[int, dict]], *, columns: Iterable[str], file: str | Path = "<jsonl>"
) -> pl.DataFrame:
    """Turn numbered JSON objects into a table of the given columns plus :data:`LINE`.

    An absent key is ``null``; a column that no record has raises :class:`DataError`.
    """
    names = list(dict.fromkeys(columns))
    values: dict[str, list[Any]] = {n: [] for n in names}
    seen: set[str] = set()
    lines: list[int] = []
    for lineno, obj in records:
        for n in names:
            if n in obj:
                seen.add(n)
            values[n].append(obj.get(n))
        lines.append(lineno)
    for n in names:
        if n not in seen:
            raise DataError("missing column: no record has this key", file=file, field=n)
    data = {n: _json_column(n, values[n], lines, file=file) for n in names}
    data[LINE] = pl.Series(LINE, lines, dtype=pl.Int64)
    return pl.DataFrame(data)


def _where(table: pl.DataFrame, index: int) -> tuple[int | None, str]:
    """The source line of a record (CSV/JSON lines), or ``(None, " (row N)")`` for Parquet."""
    if LINE in table.columns:
        return int(table.get_column(LINE)[index]), ""
    return None, f" (row {index + 1})"


def _require_columns(table: pl.DataFrame, names: Iterable[str], *, file: str | Path) -> None:
    have = [c for c in table.columns if c != LINE]
    for n in names:
        if n not in have:
            raise DataError(f"missing column {n!r} (columns are {have})", file=file, field=n)


def _fail_at(
    table: pl.DataFrame, mask: pl.Series, message: str, *, file: str | Path, field: str
) -> None:
    """Raise :class:`DataError` at the first record where ``mask`` is true, if any."""
    if mask.any():
        index = int(mask.arg_max())  # type: ignore[arg-type]
        line, row = _where(table, index)
        raise DataError(f"{message}{row}", file=file, line=line, field=field)


# --- interactions ---------------------------------------------------------------------------------


def _iso_to_epoch(text: str) -> int | None:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return math.floor(dt.timestamp())


def parse_timestamps(
    table: pl.DataFrame, column: str, *, file: str | Path = "<interactions>"
) -> pl.Series:
    """Convert a timestamp column (integers, floats, ISO strings, dates) to Int64 epoch seconds."""
    return _timestamps(table, column, file=file).cast(pl.Int64).alias("timestamp")


def _timestamps(table: pl.DataFrame, column: str, *, file: str | Path) -> pl.Series:
    col = table.get_column(column)
    _fail_at(table, col.is_null(), "missing timestamp", file=file, field=column)
    dtype = col.dtype
    if dtype.is_integer():
        return col.cast(pl.Int64)
    if dtype.is_float():
        _fail_at(
            table, ~col.is_finite(), "timestamp is not a finite number", file=file, field=column
        )
        return col.floor().cast(pl.Int64)
    if dtype == pl.Date:
        return col.cast(pl.Datetime("ms")).dt.epoch("s")
    if isinstance(dtype, pl.Datetime):
        return col.dt.epoch("s")
    if dtype != pl.String:
        raise DataError(f"cannot read a timestamp from a {dtype} column", file=file, field=column)
    text = col.str.strip_chars()
    out = text.cast(pl.Int64, strict=False)
    todo = out.is_null()
    if todo.any():
        as_float = text.cast(pl.Float64, strict=False)
        ok = as_float.is_finite().fill_null(False)
        out = pl.select(
            pl.when(todo & ok).then(as_float.floor().cast(pl.Int64, strict=False)).otherwise(out)
        ).to_series()
        todo = out.is_null()
    if todo.any():
        values = out.to_list()
        texts = text.to_list()
        for i in todo.arg_true().to_list():
            epoch = _iso_to_epoch(texts[i])
            if epoch is None:
                line, row = _where(table, i)
                raise DataError(
                    f"cannot read timestamp {texts[i]!r}: expected Unix seconds or an ISO 8601 "
                    f"date/time{row}",
                    file=file,
                    line=line,
                    field=column,
                )
            values[i] = epoch
        out = pl.Series(column, values, dtype=pl.Int64)
    return out


def parse_interactions(
    table: pl.DataFrame,
    *,
    user: str = "user_id",
    item: str = "item_id",
    timestamp: str = "timestamp",
    file: str | Path = "<interactions>",
) -> pl.DataFrame:
    """Select and type the user, item and timestamp columns of a table (see :func:`parse_csv`)."""
    _require_columns(table, [user, item, timestamp], file=file)
    if len(table) == 0:
        raise DataError("no interactions", file=file)
    out = []
    for src, dst in ((user, "user"), (item, "item")):
        col = table.get_column(src)
        if isinstance(col.dtype, pl.List | pl.Struct | pl.Array):
            raise DataError(f"expected ids, got a {col.dtype} column", file=file, field=src)
        col = col.cast(pl.String)
        if col.dtype == pl.String:
            col = col.str.strip_chars()
        _fail_at(table, col.is_null() | (col == ""), f"missing {dst} id", file=file, field=src)
        out.append(col.alias(dst))
    out.append(parse_timestamps(table, timestamp, file=file))
    return pl.DataFrame(out)


# --- items ----------------------------------------------------------------------------------------


def _field_column(
    table: pl.DataFrame, name: str, kind: FieldKind, *, list_separator: str, file: str | Path
) -> pl.Series:
    col = table.get_column(name)
    if kind == FieldKind.MULTI_CATEGORICAL and col.dtype == pl.String:
        if not list_separator:
            return col  # one value per item; normalize_items wraps it in a list
        parts = col.str.split(list_separator)
        return parts.list.eval(pl.element().str.strip_chars()).alias(name)
    if kind == FieldKind.NUMERIC and col.dtype == pl.String:
        text = col.str.strip_chars()
        text = text.replace("", None)
        number = text.cast(pl.Float64, strict=False)
        bad = number.is_null() & text.is_not_null()
        if bad.any():
            index = int(bad.arg_max())  # type: ignore[arg-type]
            line, row = _where(table, index)
            raise DataError(f"not a number: {text[index]!r}{row}", file=file, line=line, field=name)
        return number.alias(name)
    if kind in (FieldKind.CATEGORICAL, FieldKind.TEXT) and isinstance(col.dtype, pl.List):
        raise DataError(
            "a list column cannot be a single-valued field; declare it multi_categorical",
            file=file,
            field=name,
        )
    return col


def parse_items(
    table: pl.DataFrame,
    schema: Schema,
    *,
    item_id: str = "item_id",
    list_separator: str = "|",
    file: str | Path = "<items>",
) -> pl.DataFrame:
    """Build the item table (``item_id`` plus the schema's fields) from a source table.

    Splits string values of multi_categorical fields on ``list_separator`` and reads numeric
    strings, naming the line (or row) of a bad value. Repeated or missing ids raise
    :class:`DataError` naming the lines.
    """
    _require_columns(table, [item_id, *schema.names], file=file)
    if len(table) == 0:
        raise DataError("no items", file=file)
    ids = table.get_column(item_id)
    if isinstance(ids.dtype, pl.List | pl.Struct | pl.Array):
        raise DataError(f"expected ids, got a {ids.dtype} column", file=file, field=item_id)
    ids = ids.cast(pl.String).str.strip_chars()
    _fail_at(table, ids.is_null() | (ids == ""), "missing item id", file=file, field=item_id)
    dupes = ids.is_duplicated()
    if dupes.any():
        first = ids[int(dupes.arg_max())]  # type: ignore[arg-type]
        at = (ids == first).arg_true().to_list()
        where = [_where(table, i) for i in at]
        if where[0][0] is not None:
            raise DataError(
                f"duplicate item {first!r} (lines {[w[0] for w in where]})",
                file=file,
                line=where[1][0],
                field=item_id,
            )
        raise DataError(
            f"duplicate item {first!r} (rows {[i + 1 for i in at]})", file=file, field=item_id
        )
    out = [ids.alias("item_id")]
    for spec in schema.fields:
        out.append(
            _field_column(table, spec.name, spec.kind, list_separator=list_separator, file=file)
        )
    return pl.DataFrame(out)


# --- files ----------------------------------------------------------------------------------------


def _format(path: Path, allowed: tuple[str, ...]) -> str:
    name = path.name.lower()
    name = name.removesuffix(".gz")
    for fmt in allowed:
        if name.endswith(f".{fmt}") and (fmt != "parquet" or not path.name.lower().endswith(".gz")):
            return fmt
    raise DataError(
        f"unsupported file type; expected one of {', '.join('.' + a for a in allowed)}", file=path
    )


def read_table(
    path: str | Path, *, columns: Iterable[str] = (), jsonl: bool = False
) -> pl.DataFrame:
    """Read a CSV/TSV, Parquet or (with ``jsonl``) JSON-lines file into a table, by suffix.

    ``columns`` are the ones a JSON-lines file must provide (other keys are not read).
    """
    path = Path(path)
    fmt = _format(
        path, ("csv", "tsv", "parquet", "jsonl", "ndjson") if jsonl else ("csv", "tsv", "parquet")
    )
    if fmt in ("csv", "tsv"):
        return parse_csv(
            iter_lines(path, skip_blank=False), file=path, separator="\t" if fmt == "tsv" else ","
        )
    if fmt in ("jsonl", "ndjson"):
        return parse_json_records(iter_json_lines(path), columns=columns, file=path)
    if not path.exists():
        raise DataError("file not found", file=path)
    try:
        table = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"cannot read Parquet: {exc}".splitlines()[0], file=path) from None
    if LINE in table.columns:
        table = table.drop(LINE)
    return table


def _section(data: dict[str, Any], key: str, allowed: set[str], *, file: Path) -> dict[str, Any]:
    section = data.get(key, {})
    if not isinstance(section, dict):
        raise DataError(f"[{key}] must be a table", file=file, field=key)
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise DataError(
            f"unknown key(s) {unknown} in [{key}]; valid keys: {sorted(allowed)}",
            file=file,
            field=key,
        )
    for k, v in section.items():
        if not isinstance(v, str):
            raise DataError(f"must be a string, got {v!r}", file=file, field=f"{key}.{k}")
    return section


def read_generic(
    schema_path: str | Path | None = None,
    *,
    interactions_path: str | Path | None = None,
    items_path: str | Path | None = None,
    user: str | None = None,
    item: str | None = None,
    timestamp: str | None = None,
    item_id: str | None = None,
    list_separator: str | None = None,
    schema: Schema | None = None,
    fields: dict[str, str] | None = None,
    name: str | None = None,
) -> RawDataset:
    """Read generic tables described by a schema file (see the module docstring).

    Keywords override the file: paths (relative to the working directory), column names,
    ``schema`` (replaces the file's fields) and ``fields`` (kind overrides; ``"drop"`` removes a
    field). Without a schema file, ``interactions_path`` is required and there are no fields
    unless ``schema`` gives them.
    """
    data: dict[str, Any] = {}
    base = Path(".")
    if schema_path is not None:
        schema_path = Path(schema_path)
        data = load_schema_file(schema_path)
        if not isinstance(data, dict):
            raise DataError("a schema file must hold a table", file=schema_path)
        base = schema_path.parent
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise DataError(
                f"unknown key(s) {unknown}; valid keys: {sorted(_TOP_KEYS)}", file=schema_path
            )
    where = schema_path if schema_path is not None else "<read_generic>"
    inter = _section(data, "interactions", _INTER_KEYS, file=where) if data else {}
    items_sec = _section(data, "items", _ITEM_KEYS, file=where) if data else {}

    if interactions_path is not None:
        inter_file = Path(interactions_path)
    elif "path" in inter:
        inter_file = base / inter["path"]
    else:
        raise DataError("no interactions file: give [interactions] path", file=where)
    if items_path is not None:
        items_file: Path | None = Path(items_path)
    elif "path" in items_sec:
        items_file = base / items_sec["path"]
    else:
        items_file = None

    if schema is None:
        schema = schema_from_mapping({"fields": data.get("fields", {})}, file=where)
    if fields:
        schema = schema.with_overrides(fields)

    user = user or inter.get("user", "user_id")
    item = item or inter.get("item", "item_id")
    timestamp = timestamp or inter.get("timestamp", "timestamp")
    item_id = item_id or items_sec.get("id", "item_id")
    sep = list_separator if list_separator is not None else items_sec.get("list_separator", "|")

    table = read_table(inter_file)
    interactions = parse_interactions(
        table, user=user, item=item, timestamp=timestamp, file=inter_file
    )
    sources = [inter_file]
    if items_file is not None:
        raw_items = read_table(items_file, columns=[item_id, *schema.names], jsonl=True)
        items = parse_items(raw_items, schema, item_id=item_id, list_separator=sep, file=items_file)
        sources.append(items_file)
    elif schema.fields:
        raise DataError(
            f"fields {schema.names} are declared but no item table is given", file=where
        )
    else:
        items = pl.DataFrame(schema={"item_id": pl.String})
    items = normalize_items(items, schema, file=items_file)
    if schema_path is not None:
        sources.insert(0, schema_path)
    if name is None:
        name = data.get("name") or (schema_path.stem if schema_path else inter_file.stem)
        if not isinstance(name, str):
            raise DataError(f"must be a string, got {name!r}", file=where, field="name")
    return RawDataset(
        interactions=interactions, items=items, schema=schema, sources=tuple(sources), name=name
    )
