"""The field schema: every item field has a declared kind.

Kinds:
- ``id``: the item itself (exactly one field, always named ``item_id`` in artifacts);
- ``categorical``: one value per item (brand, release year);
- ``multi_categorical``: a set of values (categories, genres);
- ``text``: free text, encoded once to a dense vector;
- ``numeric``: a real number (price); stored raw and as quantile buckets.

A missing value stays missing everywhere: readers keep it as ``null``, preparation records it
in a presence mask, and the model sees a learned "missing" value, never a generic placeholder.
"""

from __future__ import annotations

import json
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from miir.errors import DataError

if TYPE_CHECKING:  # polars only where data is read: training and serving never load it
    import polars as pl

# Vocabulary ids 0 and 1 are reserved in every categorical vocabulary (items included).
PAD_ID = 0
MISSING_ID = 1
FIRST_VALUE_ID = 2


class FieldKind(StrEnum):
    ID = "id"
    CATEGORICAL = "categorical"
    MULTI_CATEGORICAL = "multi_categorical"
    TEXT = "text"
    NUMERIC = "numeric"


class FieldSpec(BaseModel):
    """One side field of the items."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Column name in the item table.")
    kind: FieldKind = Field(description="How the field is stored and modelled.")
    min_freq: int = Field(
        default=1,
        ge=1,
        description="Categorical values seen on fewer items are dropped from the vocabulary "
        "(the value then counts as missing, and the manifest counts how many were dropped).",
    )
    n_buckets: int = Field(default=10, ge=2, description="Quantile buckets for numeric fields.")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or not v.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"field name {v!r} must be alphanumeric (with _ or -)")
        if v == "item_id":
            raise ValueError("'item_id' is the id field; declare side fields only")
        return v


class Schema(BaseModel):
    """The side fields of a data set, in a fixed order (the model's field order)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: tuple[FieldSpec, ...] = ()

    @field_validator("fields")
    @classmethod
    def _unique(cls, v: tuple[FieldSpec, ...]) -> tuple[FieldSpec, ...]:
        names = [f.name for f in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate field names: {dupes}")
        if any(f.kind == FieldKind.ID for f in v):
            raise ValueError("kind 'id' is reserved for item_id; side fields cannot use it")
        return v

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def get(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"no field {name!r}; fields are {self.names}")

    def with_overrides(self, overrides: dict[str, str]) -> Schema:
        """Return a schema with some kinds replaced; kind 'drop' removes a field."""
        out: list[FieldSpec] = []
        seen = set()
        for f in self.fields:
            if f.name in overrides:
                seen.add(f.name)
                kind = overrides[f.name]
                if kind == "drop":
                    continue
                out.append(f.model_copy(update={"kind": parse_kind(kind, field=f.name)}))
            else:
                out.append(f)
        unknown = sorted(set(overrides) - seen)
        if unknown:
            raise DataError(f"override names unknown field(s) {unknown}; fields are {self.names}")
        return Schema(fields=tuple(out))


def parse_kind(kind: str, *, field: str | None = None, file: str | Path | None = None) -> FieldKind:
    try:
        return FieldKind(kind)
    except ValueError:
        valid = ", ".join(k.value for k in FieldKind if k != FieldKind.ID)
        raise DataError(
            f"unknown field kind {kind!r}; valid kinds: {valid}", file=file, field=field
        ) from None


def schema_from_mapping(data: dict[str, Any], *, file: str | Path | None = None) -> Schema:
    """Build a schema from ``{"fields": [{"name":..., "kind":...}, ...]}`` or ``{name: kind}``."""
    raw = data.get("fields", data)
    if isinstance(raw, dict):
        raw = [
            {"name": k, **v} if isinstance(v, dict) else {"name": k, "kind": v}
            for k, v in raw.items()
        ]
    if not isinstance(raw, list):
        raise DataError("'fields' must be a list or a table of name = kind", file=file)
    for entry in raw:
        if isinstance(entry, dict) and "kind" in entry:
            parse_kind(str(entry["kind"]), field=str(entry.get("name")), file=file)
    try:
        return Schema(fields=tuple(FieldSpec(**e) for e in raw))
    except (ValidationError, TypeError) as exc:
        raise DataError(f"invalid schema: {exc}", file=file) from None


def load_schema_file(path: str | Path) -> dict[str, Any]:
    """Read a schema file (TOML or JSON) into a plain mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("schema file not found", file=path) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 ({exc.reason} at byte {exc.start})", file=path) from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"cannot parse schema: {exc}", file=path) from None


def infer_schema(items: pl.DataFrame) -> Schema:
    """Guess field kinds from an item table whose values carry their own types (JSON lines).

    Lists are ``multi_categorical``; numbers are ``numeric``; strings are ``text`` when they look
    like free text (mostly distinct and several words long) and ``categorical`` otherwise.
    Booleans are categorical. Any guess can be overridden (``--field name=kind``).
    """
    import polars as pl

    specs: list[FieldSpec] = []
    for name in items.columns:
        if name == "item_id":
            continue
        col = items.get_column(name)
        dtype = col.dtype
        if isinstance(dtype, pl.List):
            kind = FieldKind.MULTI_CATEGORICAL
        elif dtype.is_numeric():
            kind = FieldKind.NUMERIC
        elif dtype == pl.Boolean:
            kind = FieldKind.CATEGORICAL
        elif dtype == pl.String:
            present = col.drop_nulls()
            if len(present) == 0:
                kind = FieldKind.CATEGORICAL
            else:
                distinct = present.n_unique() / len(present)
                words = present.str.count_matches(r"\S+").mean() or 0.0
                kind = FieldKind.TEXT if distinct > 0.5 and words >= 3 else FieldKind.CATEGORICAL
        elif dtype == pl.Null:
            kind = FieldKind.CATEGORICAL
        else:
            raise DataError(f"cannot infer a kind for column type {dtype}", field=name)
        specs.append(FieldSpec(name=name, kind=kind))
    return Schema(fields=tuple(specs))
