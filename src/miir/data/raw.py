"""The one table contract every reader returns.

A reader turns upstream files into a :class:`RawDataset`:

- ``interactions``: columns ``user`` (String), ``item`` (String), ``timestamp`` (Int64), one row
  per interaction. Where a format has no timestamps (sequence files) the timestamp is the
  position in the user's line. Rows may come in any order; preparation sorts them stably by
  (user, timestamp), so ties keep their file order.
- ``items``: column ``item_id`` (String) plus one column per side field, typed by its kind:
  ``categorical`` and ``text`` as String, ``multi_categorical`` as List(String), ``numeric`` as
  Float64. ``null`` means missing (an empty list or an empty string is normalised to ``null``).
- ``schema``: the side fields and their kinds, in the model's order.
- ``sources``: the files read (their checksums go into the manifest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from miir.data.schema import FieldKind, Schema
from miir.errors import DataError

INTERACTION_COLUMNS = {"user": pl.String, "item": pl.String, "timestamp": pl.Int64}


@dataclass(frozen=True)
class RawDataset:
    interactions: pl.DataFrame
    items: pl.DataFrame
    schema: Schema
    sources: tuple[Path, ...] = field(default_factory=tuple)
    name: str = "dataset"

    def __post_init__(self) -> None:
        cols = self.interactions.columns
        for c, dtype in INTERACTION_COLUMNS.items():
            if c not in cols:
                raise DataError(f"interactions table lacks column '{c}' (has {cols})")
            if self.interactions.schema[c] != dtype:
                raise DataError(
                    f"interactions column '{c}' must be {dtype}, got {self.interactions.schema[c]}"
                )
        if "item_id" not in self.items.columns:
            raise DataError(f"item table lacks column 'item_id' (has {self.items.columns})")
        ids = self.items.get_column("item_id")
        if ids.is_duplicated().any():
            first = ids.filter(ids.is_duplicated())[0]
            raise DataError(f"duplicate item {first!r} in the item table", field="item_id")
        for spec in self.schema.fields:
            if spec.name not in self.items.columns:
                raise DataError(
                    "declared in the schema but absent from the item table", field=spec.name
                )


def normalize_items(
    items: pl.DataFrame, schema: Schema, *, file: str | Path | None = None
) -> pl.DataFrame:
    """Cast the item table to the canonical dtypes of ``schema`` and keep only its fields.

    Empty strings, empty lists and NaN become ``null``: missing stays missing. Raises
    :class:`DataError` naming the field when a column cannot take its declared kind, and when
    ``item_id`` repeats (naming the item and its rows).
    """
    if "item_id" not in items.columns:
        raise DataError(f"item table lacks an item id column (has {items.columns})", file=file)
    out = [items.get_column("item_id").cast(pl.String).alias("item_id")]
    for spec in schema.fields:
        if spec.name not in items.columns:
            raise DataError(
                f"column missing from the item table (has {items.columns})",
                file=file,
                field=spec.name,
            )
        col = items.get_column(spec.name)
        try:
            out.append(_cast(col, spec.kind).alias(spec.name))
        except (pl.exceptions.PolarsError, ValueError, TypeError) as exc:
            raise DataError(
                f"cannot read values as {spec.kind.value}: {exc}".splitlines()[0],
                file=file,
                field=spec.name,
            ) from None
    df = pl.DataFrame(out)
    if df.get_column("item_id").null_count():
        row = df.get_column("item_id").is_null().arg_max()
        raise DataError(f"item without an id at row {row}", file=file, field="item_id")
    dupes = df.filter(pl.col("item_id").is_duplicated())
    if len(dupes):
        first = dupes.get_column("item_id")[0]
        rows = (
            df.with_row_index("row").filter(pl.col("item_id") == first).get_column("row") + 1
        ).to_list()
        raise DataError(f"duplicate item {first!r} (records {rows})", file=file, field="item_id")
    return df


def _cast(col: pl.Series, kind: FieldKind) -> pl.Series:
    if kind == FieldKind.MULTI_CATEGORICAL:
        if not isinstance(col.dtype, pl.List):
            if col.dtype == pl.Null:
                return col.cast(pl.List(pl.String))
            # A scalar column declared multi-valued: one value per item.
            col = col.cast(pl.String)
            col = pl.Series(
                col.name, [None if v is None or v == "" else [v] for v in col.to_list()]
            )
        col = col.cast(pl.List(pl.String))
        col = col.list.eval(pl.element().filter(pl.element().is_not_null() & (pl.element() != "")))
        col = col.list.unique(maintain_order=True)
        return pl.Series(
            col.name,
            [None if v is None or len(v) == 0 else v for v in col.to_list()],
            dtype=pl.List(pl.String),
        )
    if kind == FieldKind.NUMERIC:
        col = col.cast(pl.Float64, strict=True)
        return col.fill_nan(None)
    # categorical and text
    if isinstance(col.dtype, pl.List):
        raise ValueError(
            "a list column cannot be a single-valued field; declare it multi_categorical"
        )
    col = col.cast(pl.String)
    if kind == FieldKind.TEXT:
        col = col.str.strip_chars()
    return col.replace("", None)


def sort_interactions(interactions: pl.DataFrame) -> pl.DataFrame:
    """Stable chronological order: by user, then timestamp, ties in file order."""
    return interactions.with_row_index("_row").sort(["user", "timestamp", "_row"]).drop("_row")
