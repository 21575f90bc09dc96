"""Amazon review data, 2018 release (Ni, Li & McAuley, EMNLP 2019; nijianmo.github.io/amazon).

Interactions come from either of two per-category files:

- ``<Category>.json.gz`` or ``<Category>_5.json.gz`` (reviews, 5-core): strict JSON lines,
  ``{"overall": 5.0, "verified": true, "reviewTime": "09 13, 2009", "reviewerID": "A3HVRXV0LVJN7",
  "asin": "0078764343", "unixReviewTime": 1252800000, ...}``; ``reviewerID``, ``asin`` and
  ``unixReviewTime`` are used.
- ``<Category>.csv`` (ratings only): no header, ``item,user,rating,timestamp``
  (``0078764343,A3HVRXV0LVJN7,5.0,1252800000``). Note the order: the 2018 ratings files put the
  *item* first, unlike the 2014 ``ratings_<Category>.csv`` files (user first).

Item side information comes from ``meta_<Category>.json.gz``: strict JSON lines, one product per
line, ``{"asin": ..., "title": ..., "brand": ..., "category": ["Electronics", "Camera & Photo",
...], "description": ["...", ...], "price": "$12.99", "feature": [...], "rank": ..., "main_cat":
..., "also_buy": [...], "imageURL": [...], ...}``. Empty values are written as ``""`` or ``[]``.

Fields produced (their default kinds in :data:`DEFAULT_SCHEMA`):

- ``title`` (text): HTML tags stripped (script and style elements dropped with their content),
  HTML entities unescaped, white space collapsed;
- ``description`` (text): the list of strings, each cleaned like the title, joined with a space;
- ``brand`` (categorical): as given, surrounding white space stripped;
- ``categories`` (multi_categorical): the flat ``category`` list, each entry cleaned like the
  title (some upstream entries are stray ``</span>`` tags), empty strings dropped;
- ``price`` (numeric): ``"$12.99"`` -> 12.99, a range ``"$1.00 - $2.00"`` -> 1.0 (its first
  number), ``"$1,299.00"`` -> 1299.0; ``""`` and anything else (some upstream prices are
  scraped CSS or HTML) -> null.

A missing key or empty value is ``null``. The 2018 metadata is known to repeat products (exact
duplicate lines): a repeated ``asin`` raises :class:`DataError` naming the file, the line and the
item unless ``dedupe_meta=True``, which keeps the first occurrence.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from miir.data.raw import RawDataset
from miir.data.readers._io import iter_json_lines, iter_lines
from miir.data.readers.amazon2014 import (
    as_text,
    assemble,
    category_name,
    is_ratings_csv,
    parse_ratings,
    parse_reviews,
)
from miir.data.schema import FieldKind, FieldSpec, Schema
from miir.errors import DataError

DEFAULT_SCHEMA = Schema(
    fields=(
        FieldSpec(name="title", kind=FieldKind.TEXT),
        FieldSpec(name="description", kind=FieldKind.TEXT),
        FieldSpec(name="brand", kind=FieldKind.CATEGORICAL),
        FieldSpec(name="categories", kind=FieldKind.MULTI_CATEGORICAL),
        FieldSpec(name="price", kind=FieldKind.NUMERIC),
    )
)

_ITEM_SCHEMA = {
    "item_id": pl.String,
    "title": pl.String,
    "description": pl.String,
    "brand": pl.String,
    "categories": pl.List(pl.String),
    "price": pl.Float64,
}

_SCRIPT = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^<>]*>")
_SPACE = re.compile(r"\s+")
_NUMBER = r"\d[\d,]*(?:\.\d+)?|\.\d+"
_PRICE = re.compile(rf"^\$?\s*({_NUMBER})\s*(?:-\s*\$?\s*(?:{_NUMBER})\s*)?$")


def strip_html(text: str) -> str:
    """Drop HTML tags (and script/style content), unescape entities, collapse white space."""
    if "<" in text:
        text = _SCRIPT.sub(" ", text)
        text = _TAG.sub(" ", text)
    if "&" in text:
        text = html.unescape(text)
    return _SPACE.sub(" ", text).strip()


def parse_price(value: Any) -> float | None:
    """``"$12.99"`` -> 12.99; a range -> its first number; ``""`` or unreadable -> ``None``."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    match = _PRICE.match(value.strip())
    if match is None:
        return None
    return float(match.group(1).replace(",", ""))


def _string_list(value: Any, *, file: str | Path, line: int, field: str) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(
            f"expected a list of strings, got {value!r}"[:120], file=file, line=line, field=field
        )
    return value


def parse_meta(
    records: Iterable[tuple[int, dict]],
    *,
    file: str | Path = "<meta>",
    dedupe_meta: bool = False,
) -> pl.DataFrame:
    """Turn numbered 2018 metadata objects into an item table (fields of :data:`DEFAULT_SCHEMA`).

    A record without ``asin`` raises :class:`DataError`; so does a repeated ``asin`` unless
    ``dedupe_meta``, which keeps the first occurrence.
    """
    cols: dict[str, list] = {name: [] for name in _ITEM_SCHEMA}
    first_line: dict[str, int] = {}
    for lineno, obj in records:
        asin = obj.get("asin")
        if asin in (None, ""):
            raise DataError("record has no 'asin'", file=file, line=lineno, field="asin")
        asin = str(asin)
        if asin in first_line:
            if dedupe_meta:
                continue
            raise DataError(
                f"duplicate item {asin!r} (first on line {first_line[asin]}); the 2018 metadata "
                "repeats some products: pass dedupe_meta=True (CLI: --dedupe-meta) to keep the first occurrence",
                file=file,
                line=lineno,
                field="asin",
            )
        first_line[asin] = lineno
        title = as_text(obj.get("title"), file=file, line=lineno, field="title")
        brand = as_text(obj.get("brand"), file=file, line=lineno, field="brand")
        desc = _string_list(obj.get("description"), file=file, line=lineno, field="description")
        cats = _string_list(obj.get("category"), file=file, line=lineno, field="category")
        cols["item_id"].append(asin)
        cols["title"].append(strip_html(title) if title is not None else None)
        cols["description"].append(
            " ".join(t for t in (strip_html(d) for d in desc) if t) if desc else None
        )
        cols["brand"].append(brand.strip() if brand is not None else None)
        cats = [c for c in (strip_html(c) for c in cats) if c] if cats else None
        cols["categories"].append(cats or None)
        cols["price"].append(parse_price(obj.get("price")))
    if not cols["item_id"]:
        raise DataError("no items", file=file)
    return pl.DataFrame(cols, schema=_ITEM_SCHEMA)


def read_interactions(path: str | Path) -> pl.DataFrame:
    """Read a 2018 ratings CSV (item first) or a reviews JSON-lines file, chosen by the name."""
    if is_ratings_csv(path):
        return parse_ratings(iter_lines(path), file=path, item_first=True)
    return parse_reviews(iter_json_lines(path), file=path)


def read_amazon2018(
    interactions_path: str | Path,
    meta_path: str | Path | None = None,
    *,
    schema: Schema | None = None,
    dedupe_meta: bool = False,
    name: str | None = None,
) -> RawDataset:
    """Read a 2018 Amazon category: a reviews or ratings file, and its ``meta_*.json.gz``.

    ``schema`` picks and types the fields (default :data:`DEFAULT_SCHEMA`); a field it names
    must be one of the fields this reader produces. Without ``meta_path`` the item table is empty.
    """
    return assemble(
        read_interactions(interactions_path),
        interactions_path,
        meta_path,
        lambda path: parse_meta(iter_json_lines(path), file=path, dedupe_meta=dedupe_meta),
        schema if schema is not None else DEFAULT_SCHEMA,
        empty_items=pl.DataFrame(schema=_ITEM_SCHEMA),
        name=name or category_name(interactions_path, prefix="amazon2018"),
    )
