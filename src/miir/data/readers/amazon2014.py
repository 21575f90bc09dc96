"""Amazon review data, 2014 release (McAuley et al., SIGIR 2015 / WWW 2016; jmcauley.ucsd.edu).

Interactions come from either of two per-category files:

- ``ratings_<Category>.csv``: no header, one rating per line, ``user,item,rating,unixtime``
  (``A39HTATAQ9V7YF,0205616461,5.0,1369699200``). The rating is not used.
- ``reviews_<Category>_5.json.gz`` (or ``reviews_<Category>.json.gz``): one review per line,
  ``{"reviewerID": ..., "asin": ..., "unixReviewTime": 1369699200, ...}``. The review files are
  JSON; a line that is not JSON is read as a Python dict literal (the form the upstream page
  documents with ``eval``), so both spellings work.

Item side information comes from ``meta_<Category>.json.gz``, one product per line written as a
Python dict literal, *not* JSON (single quotes): ``{'asin': '0000031852', 'title': '...',
'price': 3.17, 'salesRank': {'Toys & Games': 211836}, 'brand': 'Coxlures', 'categories':
[['Sports & Outdoors', 'Other Sports', 'Dance']], 'description': '...', 'imUrl': ..., 'related':
...}``. Each line is parsed with :func:`ast.literal_eval` (never ``eval``). Any key may be absent.

Fields produced (their default kinds in :data:`DEFAULT_SCHEMA`):

- ``title`` (text), ``description`` (text), ``brand`` (categorical): the strings as given
  (HTML entities such as ``&amp;`` are kept as they are upstream);
- ``categories`` (multi_categorical): by default the first category path, ``categories[0]``, top
  level first (``['Beauty', 'Makeup', 'Nails']``) -- how the shared Beauty data was built; with
  ``category_paths="all"`` the de-duplicated union of all paths, in order;
- ``price`` (numeric);
- ``sales_rank`` (numeric): ``salesRank`` maps a category to a rank; the rank is taken, the
  smallest one where there are several.

A missing key is ``null``. The item table holds every product of the metadata file, whether or
not it was interacted with.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import polars as pl

from miir.data.raw import RawDataset, normalize_items
from miir.data.readers._io import iter_lines
from miir.data.schema import FieldKind, FieldSpec, Schema
from miir.errors import ConfigError, DataError

DEFAULT_SCHEMA = Schema(
    fields=(
        FieldSpec(name="title", kind=FieldKind.TEXT),
        FieldSpec(name="description", kind=FieldKind.TEXT),
        FieldSpec(name="brand", kind=FieldKind.CATEGORICAL),
        FieldSpec(name="categories", kind=FieldKind.MULTI_CATEGORICAL),
        FieldSpec(name="price", kind=FieldKind.NUMERIC),
        FieldSpec(name="sales_rank", kind=FieldKind.NUMERIC),
    )
)

CategoryPaths = Literal["first", "all"]

_INTERACTION_SCHEMA = {"user": pl.String, "item": pl.String, "timestamp": pl.Int64}
_ITEM_SCHEMA = {
    "item_id": pl.String,
    "title": pl.String,
    "description": pl.String,
    "brand": pl.String,
    "categories": pl.List(pl.String),
    "price": pl.Float64,
    "sales_rank": pl.Float64,
}


# --- records ------------------------------------------------------------------------------------


def iter_literal_lines(path: str | Path, *, json_first: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, dict)`` from a file of Python dict literals, one per line.

    Each line goes through :func:`ast.literal_eval`, which evaluates literals only. With
    ``json_first`` a line is tried as JSON first (faster, and it knows ``true``/``null``). A line
    that parses to something other than a dict, or does not parse, raises :class:`DataError`
    naming the file and line.
    """
    for lineno, text in iter_lines(path):
        obj: Any = None
        parsed = False
        if json_first:
            try:
                obj = json.loads(text)
                parsed = True
            except json.JSONDecodeError:
                pass
        if not parsed:
            try:
                obj = ast.literal_eval(text.strip())
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                what = (
                    "neither JSON nor a Python dict literal"
                    if json_first
                    else "not a Python dict literal"
                )
                raise DataError(
                    f"malformed line: {what} ({reason})", file=path, line=lineno
                ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"malformed line: expected a dict, got {type(obj).__name__}", file=path, line=lineno
            )
        yield lineno, obj


# --- interactions -------------------------------------------------------------------------------


def _split_csv_line(text: str) -> list[str]:
    # Amazon ids never hold commas or quotes; the csv module is the slow path for quoted lines.
    if '"' not in text:
        return text.split(",")
    return next(csv.reader([text]))


def _parse_timestamp(value: Any, *, file: str | Path, line: int, field: str) -> int:
    """An integer epoch; accepts ``1369699200``, ``"1369699200"`` and ``"1369699200.0"``."""
    if isinstance(value, bool):
        raise DataError(
            f"timestamp must be a number, got {value!r}", file=file, line=line, field=field
        )
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
    raise DataError(
        f"timestamp must be an integer (Unix seconds), got {value!r}",
        file=file,
        line=line,
        field=field,
    )


def parse_ratings(
    lines: Iterable[tuple[int, str]], *, file: str | Path = "<ratings>", item_first: bool = False
) -> pl.DataFrame:
    """Turn numbered ratings-CSV lines into an interactions table.

    The 2014 files read ``user,item,rating,unixtime``; ``item_first`` reads the 2018 order
    ``item,user,rating,unixtime``. A line without exactly four fields, an empty id or a timestamp
    that is not an integer raises :class:`DataError` naming the file and line.
    """
    order = "item,user,rating,timestamp" if item_first else "user,item,rating,timestamp"
    u_idx, i_idx = (1, 0) if item_first else (0, 1)
    users: list[str] = []
    items: list[str] = []
    stamps: list[int] = []
    for lineno, text in lines:
        parts = _split_csv_line(text)
        if len(parts) != 4:
            raise DataError(
                f"malformed line: expected 4 comma-separated fields ({order}), got {len(parts)}: "
                f"{text.strip()[:80]!r}",
                file=file,
                line=lineno,
            )
        user, item = parts[u_idx].strip(), parts[i_idx].strip()
        if not user or not item:
            raise DataError(
                f"malformed line: empty user or item id ({order})", file=file, line=lineno
            )
        users.append(user)
        items.append(item)
        stamps.append(_parse_timestamp(parts[3], file=file, line=lineno, field="timestamp"))
    if not users:
        raise DataError("no ratings", file=file)
    return pl.DataFrame(
        {"user": users, "item": items, "timestamp": stamps}, schema=_INTERACTION_SCHEMA
    )


def parse_reviews(
    records: Iterable[tuple[int, dict]], *, file: str | Path = "<reviews>"
) -> pl.DataFrame:
    """Turn numbered review objects (``reviewerID``, ``asin``, ``unixReviewTime``) into interactions."""
    users: list[str] = []
    items: list[str] = []
    stamps: list[int] = []
    for lineno, obj in records:
        for key in ("reviewerID", "asin", "unixReviewTime"):
            if obj.get(key) in (None, ""):
                raise DataError(f"review has no '{key}'", file=file, line=lineno, field=key)
        users.append(str(obj["reviewerID"]))
        items.append(str(obj["asin"]))
        stamps.append(
            _parse_timestamp(obj["unixReviewTime"], file=file, line=lineno, field="unixReviewTime")
        )
    if not users:
        raise DataError("no reviews", file=file)
    return pl.DataFrame(
        {"user": users, "item": items, "timestamp": stamps}, schema=_INTERACTION_SCHEMA
    )


def is_ratings_csv(path: str | Path) -> bool:
    """Whether an interactions file is a ratings CSV (``.csv``, ``.csv.gz``) rather than reviews."""
    name = Path(path).name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return True
    if name.endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz")):
        return False
    raise DataError(
        "cannot tell the interactions format from the file name: expected a ratings .csv or a "
        "reviews .json/.json.gz",
        file=path,
    )


# --- metadata -----------------------------------------------------------------------------------


def as_text(value: Any, *, file: str | Path, line: int, field: str) -> str | None:
    """A metadata value as a string (numbers are written out); anything else is a DataError."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise DataError(
        f"expected a string, got {type(value).__name__}", file=file, line=line, field=field
    )


def _number(value: Any, *, file: str | Path, line: int, field: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise DataError(f"expected a number, got {value!r}", file=file, line=line, field=field)


def _categories(
    value: Any, *, mode: CategoryPaths, file: str | Path, line: int
) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise DataError(
            f"expected a list of category paths, got {type(value).__name__}",
            file=file,
            line=line,
            field="categories",
        )
    if not value:
        return None
    # Upstream is a list of paths; a flat list of strings is read as a single path.
    paths = [value] if all(isinstance(v, str) for v in value) else value
    if mode == "first":
        paths = paths[:1]
    out: list[str] = []
    seen: set[str] = set()
    for path in paths:
        if not isinstance(path, list) or not all(isinstance(c, str) for c in path):
            raise DataError(
                f"expected a category path (a list of strings), got {path!r}"[:120],
                file=file,
                line=line,
                field="categories",
            )
        for c in path:
            c = c.strip()
            if c and c not in seen:
                seen.add(c)
                out.append(c)
    return out or None


def _sales_rank(value: Any, *, file: str | Path, line: int) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, dict):
        raise DataError(
            f"expected a mapping {{category: rank}}, got {type(value).__name__}",
            file=file,
            line=line,
            field="salesRank",
        )
    ranks = [_number(r, file=file, line=line, field="salesRank") for r in value.values()]
    ranks = [r for r in ranks if r is not None]
    return min(ranks) if ranks else None


def check_category_paths(category_paths: str) -> CategoryPaths:
    """Validate the ``category_paths`` option (``"first"`` or ``"all"``)."""
    if category_paths not in ("first", "all"):
        raise ConfigError(f"category_paths must be 'first' or 'all', got {category_paths!r}")
    return category_paths  # type: ignore[return-value]


def parse_meta(
    records: Iterable[tuple[int, dict]],
    *,
    file: str | Path = "<meta>",
    category_paths: CategoryPaths = "first",
) -> pl.DataFrame:
    """Turn numbered 2014 metadata dicts into an item table (all fields of :data:`DEFAULT_SCHEMA`).

    A record without ``asin`` and an ``asin`` seen twice raise :class:`DataError` naming the
    file, the line and the item.
    """
    mode = check_category_paths(category_paths)
    cols: dict[str, list] = {name: [] for name in ["item_id", *DEFAULT_SCHEMA.names]}
    first_line: dict[str, int] = {}
    for lineno, obj in records:
        asin = obj.get("asin")
        if asin in (None, ""):
            raise DataError("record has no 'asin'", file=file, line=lineno, field="asin")
        asin = str(asin)
        if asin in first_line:
            raise DataError(
                f"duplicate item {asin!r} (first on line {first_line[asin]})",
                file=file,
                line=lineno,
                field="asin",
            )
        first_line[asin] = lineno
        brand = as_text(obj.get("brand"), file=file, line=lineno, field="brand")
        cols["item_id"].append(asin)
        cols["title"].append(as_text(obj.get("title"), file=file, line=lineno, field="title"))
        cols["description"].append(
            as_text(obj.get("description"), file=file, line=lineno, field="description")
        )
        cols["brand"].append(brand.strip() if brand is not None else None)
        cols["categories"].append(
            _categories(obj.get("categories"), mode=mode, file=file, line=lineno)
        )
        cols["price"].append(_number(obj.get("price"), file=file, line=lineno, field="price"))
        cols["sales_rank"].append(_sales_rank(obj.get("salesRank"), file=file, line=lineno))
    if not cols["item_id"]:
        raise DataError("no items", file=file)
    return pl.DataFrame(cols, schema=_ITEM_SCHEMA)


# --- files --------------------------------------------------------------------------------------


_NAME_PARTS = re.compile(
    r"^(?:ratings_|reviews_|meta_)?(.*?)(?:_5)?(?:\.json|\.jsonl|\.csv)?(?:\.gz)?$"
)


def category_name(path: str | Path, *, prefix: str) -> str:
    """``ratings_Beauty.csv`` -> ``<prefix>-beauty`` (the default data set name)."""
    match = _NAME_PARTS.match(Path(path).name)
    stem = match.group(1) if match and match.group(1) else Path(path).stem
    return f"{prefix}-{stem.lower().replace('_', '-')}"


def read_interactions(path: str | Path, *, item_first: bool = False) -> pl.DataFrame:
    """Read a ratings CSV or a reviews JSON-lines file, chosen by the file name."""
    if is_ratings_csv(path):
        return parse_ratings(iter_lines(path), file=path, item_first=item_first)
    return parse_reviews(iter_literal_lines(path, json_first=True), file=path)


def read_amazon2014(
    interactions_path: str | Path,
    meta_path: str | Path | None = None,
    *,
    schema: Schema | None = None,
    category_paths: CategoryPaths = "first",
    name: str | None = None,
) -> RawDataset:
    """Read a 2014 Amazon category: a ratings CSV or reviews file, and its ``meta_*.json.gz``.

    ``schema`` picks and types the fields (default :data:`DEFAULT_SCHEMA`); a field it names
    must be one of the fields this reader produces. Without ``meta_path`` the item table is empty.
    """
    check_category_paths(category_paths)
    return assemble(
        read_interactions(interactions_path),
        interactions_path,
        meta_path,
        lambda path: parse_meta(iter_literal_lines(path), file=path, category_paths=category_paths),
        schema if schema is not None else DEFAULT_SCHEMA,
        empty_items=pl.DataFrame(schema=_ITEM_SCHEMA),
        name=name or category_name(interactions_path, prefix="amazon2014"),
    )


def assemble(
    interactions: pl.DataFrame,
    interactions_path: str | Path,
    meta_path: str | Path | None,
    parse: Callable[[Path], pl.DataFrame],
    schema: Schema,
    *,
    empty_items: pl.DataFrame,
    name: str,
) -> RawDataset:
    """The dataset of an Amazon release: interactions plus the parsed (or, without a meta
    file, empty) item table, typed by ``schema`` (shared by the 2014 and 2018 readers)."""
    sources = [Path(interactions_path)]
    if meta_path is not None:
        meta_path = Path(meta_path)
        items = parse(meta_path)
        sources.append(meta_path)
    else:
        items = empty_items
    items = normalize_items(items, schema, file=meta_path)
    return RawDataset(
        interactions=interactions, items=items, schema=schema, sources=tuple(sources), name=name
    )
