"""What the :class:`~miir.recommender.Recommender` facade is made of: its result types, the
codebook that turns item ids and inline item records into model inputs (and imputed ids back
into values), the lazily loaded text encoder, and the streaming JSONL -> parquet batch path of
``miir recommend``.

A history is a list of items; each item is

- a catalogue id: the item's original name (``"B00123"``), looked up in the checkpoint's item
  vocabulary; an unknown name is an error that names it;
- an inline record: a dict of whichever side fields are known, e.g. ``{"title": "...",
  "brand": "Acme"}``. A record whose ``item_id`` is a catalogue name is that catalogue item
  (its stored fields win, the record's others are ignored with a warning); any other record is
  a new item: its ID is missing (id 1) and its known fields are encoded as ``miir prepare``
  encoded the catalogue's (categorical and multi-valued values through the vocabularies, an
  unknown value becoming the missing value with a warning; numbers through the quantile bucket
  edges; text through the same sentence encoder). Only MIIR reads per-position side fields
  (:class:`~miir.models.miir.SideInputs`); every other model refuses records.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from miir.data.schema import FIRST_VALUE_ID, MISSING_ID, FieldKind
from miir.errors import ConfigError, DataError, MiirError
from miir.models.fields import FieldInfo

if TYPE_CHECKING:
    from miir.recommender import Recommender

#: the paper's rule for multi-valued fields (Section 3.4: a value is imputed when p > 0.5)
MULTI_THRESHOLD = 0.5
TOP_SINGLE = 3  # candidates reported for a single-valued field
TOP_MULTI = 5  # candidates reported for a multi-valued field
TOP_TEXT = 3  # nearest catalogue items reported for a text field


class UnknownItemError(MiirError, KeyError):
    """Item ids that are not in the model's catalogue; ``items`` lists them."""

    def __init__(self, items: list[str]) -> None:
        self.items = items
        shown = ", ".join(repr(i) for i in items[:10]) + (" ..." if len(items) > 10 else "")
        super().__init__(f"unknown item id(s): {shown} (not in the model's catalogue)")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InlineItemsNotSupported(MiirError, ValueError):
    """A history with inline item records given to a model that reads catalogue ids only."""


# ---------------------------------------------------------------------- result types


class _AsDict:
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (for the HTTP service and the CLI)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass
class ValueProb(_AsDict):
    value: Any
    probability: float


@dataclass
class NearestItem(_AsDict):
    """A catalogue item whose stored text vector is near an imputed one (cosine similarity).
    ``miir prepare`` keeps texts only as vectors, so the text is named by its item."""

    item: str
    similarity: float


@dataclass
class FieldImputation(_AsDict):
    """One imputed field in human form. ``predicted``: the value (single-valued fields: the
    most probable; multi-valued: every value with probability >= 0.5, the paper's rule;
    numeric: the bucket range; text: the nearest catalogue item). ``candidates``: the top
    values with their probabilities; ``nearest``: text fields' nearest catalogue items;
    ``vector``: the imputed text vector, on request."""

    field: str
    kind: str
    predicted: list[Any]
    candidates: list[ValueProb] = dataclasses.field(default_factory=list)
    nearest: list[NearestItem] = dataclasses.field(default_factory=list)
    vector: list[float] | None = None


@dataclass
class ItemImputation(_AsDict):
    """The imputed missing fields of one item: ``position`` counts from 0 in the history the
    model read; the next item sits at ``position == len(history)``. ``item``: the catalogue id,
    a record's ``item_id`` label, or None (a new item without one, and the next item)."""

    position: int
    item: str | None
    fields: dict[str, FieldImputation]


@dataclass
class ScoredItem(_AsDict):
    """A recommended item: its catalogue id, score and display fields (see
    :meth:`Codebook.display`)."""

    item: str
    score: float
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class Imputation(_AsDict):
    """:meth:`Recommender.impute`: the missing fields of the history items and the fields of
    the next item. ``cut``: oldest items dropped because the history was longer than the model
    reads; ``warnings``: what was treated as missing, and why."""

    history: list[ItemImputation]
    next_item: ItemImputation
    cut: int = 0
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclass
class Recommendation(_AsDict):
    """:meth:`Recommender.recommend`: the top-k items, best first; for a model that imputes
    (MIIR), the imputed missing fields of the history items and of the next item."""

    items: list[ScoredItem]
    cut: int = 0
    warnings: list[str] = dataclasses.field(default_factory=list)
    imputed: list[ItemImputation] | None = None
    next_item: ItemImputation | None = None


# ---------------------------------------------------------------------- histories


@dataclass
class Resolved:
    """A history mapped to model inputs: ``ids`` of the kept (most recent) items, 1 for an
    inline record; ``records``: kept position -> encoded side fields (field -> value, text
    still a string); ``seen``: the catalogue ids of the whole history."""

    ids: list[int]
    labels: list[str | None]
    records: dict[int, dict[str, Any]]
    seen: list[int]
    cut: int = 0
    warnings: list[str] = field(default_factory=list)


def numeric_edges_from_labels(labels: list[str]) -> list[float]:
    """Bucket edges read back from a numeric field's range labels (``"[lo, hi)"``, printed with
    6 significant digits: exact edges come from the artifact or a saved recommender)."""
    return [float(label[1:].split(",")[0]) for label in labels[FIRST_VALUE_ID + 1 :]]


class Codebook:
    """Item names, field vocabularies and numeric bucket edges of a model: encodes histories
    and records into ids, decodes ids into values."""

    def __init__(
        self,
        item_names: list[str],
        fields: list[FieldInfo],
        vocabs: dict[str, list[Any]],
        bucket_edges: dict[str, list[float]],
    ) -> None:
        self.item_names = item_names
        self.item_index = {n: i for i, n in enumerate(item_names) if i >= FIRST_VALUE_ID}
        self.fields = {f.name: f for f in fields}
        self.vocabs = vocabs
        self.value_index = {
            f.name: {v: i for i, v in enumerate(vocabs[f.name]) if i >= FIRST_VALUE_ID}
            for f in fields
            if f.kind in (FieldKind.CATEGORICAL, FieldKind.MULTI_CATEGORICAL)
        }
        self.edges = {
            f.name: np.asarray(
                bucket_edges.get(f.name) or numeric_edges_from_labels(vocabs[f.name])
            )
            for f in fields
            if f.kind == FieldKind.NUMERIC
        }

    def resolve(self, history: Sequence[Any], max_items: int, accepts_records: bool) -> Resolved:
        """Map a history to ids (the most recent ``max_items`` kept); errors name the unknown
        ids, a bad record's position and field."""
        if isinstance(history, str | bytes | dict) or not isinstance(history, Sequence):
            raise DataError(f"a history is a list of items, got {type(history).__name__}")
        if not history:
            raise DataError("the history is empty: give at least one item")
        ids: list[int] = []
        labels: list[str | None] = []
        records: dict[int, dict[str, Any]] = {}
        warnings: list[str] = []
        unknown: list[str] = []
        for pos, entry in enumerate(history):
            if isinstance(entry, dict) and "item_id" in entry:
                name = entry["item_id"]
                if not isinstance(name, str):
                    raise DataError(f"item {pos}: item_id must be a string, got {name!r}")
                if name not in self.item_index and not any(
                    v is not None for k, v in entry.items() if k != "item_id"
                ):
                    # an id the catalogue lacks, and nothing else to read the item from: a
                    # typo of a catalogue id, not a new item
                    unknown.append(name)
                    continue
            if isinstance(entry, dict) and entry.get("item_id") in self.item_index:
                ignored = sorted(set(entry) - {"item_id"})
                if ignored:
                    warnings.append(
                        f"item {pos} ({entry['item_id']!r}) is in the catalogue: its stored "
                        f"fields are used, the given {ignored} are ignored"
                    )
                entry = entry["item_id"]
            if isinstance(entry, str):
                if entry in self.item_index:
                    ids.append(self.item_index[entry])
                    labels.append(entry)
                else:
                    unknown.append(entry)
            elif isinstance(entry, dict):
                if not accepts_records:
                    raise InlineItemsNotSupported(
                        f"item {pos} is an inline record; this model takes catalogue ids only "
                        "(inline items need a model that reads side fields per position: MIIR)"
                    )
                if "item_id" in entry:
                    warnings.append(
                        f"item {pos} ({entry['item_id']!r}) is not in the catalogue: read as "
                        "a new item from its given fields"
                    )
                records[len(ids)] = self.encode_record(entry, pos, warnings)
                ids.append(MISSING_ID)
                label = entry.get("item_id")
                labels.append(None if label is None else str(label))
            else:
                raise DataError(
                    f"item {pos}: expected a catalogue id (string) or a record (object), "
                    f"got {type(entry).__name__}"
                )
        if unknown:
            raise UnknownItemError(unknown)
        seen = sorted({i for i in ids if i >= FIRST_VALUE_ID})
        cut = max(0, len(ids) - max_items)
        if cut:
            warnings.append(
                f"the history has {len(ids)} items; the model reads the last {max_items}: "
                f"the oldest {cut} were cut"
            )
            records = {p - cut: r for p, r in records.items() if p >= cut}
        return Resolved(ids[cut:], labels[cut:], records, seen, cut, warnings)

    def encode_record(self, record: dict[str, Any], pos: int, warnings: list[str]) -> dict:
        """A record's known fields as table values (text stays a string until encoded in
        batch); an unknown field name is an error, an unknown value a warning."""
        out: dict[str, Any] = {}
        for name, value in record.items():
            if name == "item_id":
                continue
            info = self.fields.get(name)
            if info is None:
                raise DataError(
                    f"item {pos}: unknown field {name!r}; this model's fields are "
                    f"{sorted(self.fields)} (and item_id)"
                )
            if value is None:
                continue
            encoded = self._encode_value(info, value, pos, warnings)
            if encoded is not None:
                out[name] = encoded
        return out

    def _encode_value(self, info: FieldInfo, value: Any, pos: int, warnings: list[str]) -> Any:
        name = info.name
        if info.kind == FieldKind.CATEGORICAL:
            if not isinstance(value, str | int | float):
                warnings.append(
                    f"item {pos} field {name!r}: one value expected, got {value!r}: missing"
                )
                return None
            index = self.value_index[name]
            vid = index.get(value)
            if vid is None and not isinstance(value, str):
                vid = index.get(str(value))  # a year given as a number, say
            if vid is None:
                warnings.append(f"item {pos} field {name!r}: unknown value {value!r}: missing")
            return vid
        if info.kind == FieldKind.MULTI_CATEGORICAL:
            if not isinstance(value, str | list | tuple):
                warnings.append(
                    f"item {pos} field {name!r}: a value or a list of values expected, got "
                    f"{value!r}: missing"
                )
                return None
            values = [value] if isinstance(value, str) else list(value)
            index = self.value_index[name]
            bad = [v for v in values if not isinstance(v, str | int | float) or v not in index]
            if bad:
                warnings.append(f"item {pos} field {name!r}: unknown value(s) {bad}: ignored")
            kept = list(dict.fromkeys(index[v] for v in values if v not in bad))
            return kept or None
        if info.kind == FieldKind.NUMERIC:
            try:
                x = float(value)
            except (TypeError, ValueError):
                x = math.nan
            if math.isnan(x) or isinstance(value, bool):
                warnings.append(f"item {pos} field {name!r}: {value!r} is not a number: missing")
                return None
            return int(np.searchsorted(self.edges[name], x, side="right")) + FIRST_VALUE_ID
        if not isinstance(value, str):
            warnings.append(f"item {pos} field {name!r}: text expected, got {value!r}: missing")
            return None
        return value

    # ------------------------------------------------------------------ decoding
    def value(self, name: str, vid: int) -> Any:
        return self.vocabs[name][vid]

    def display(self, tables: ItemTables, item: int) -> dict[str, Any]:
        """The display fields of catalogue item ``item``: categorical values, multi-valued
        lists, numbers (raw where the artifact is at hand, else the bucket range); text is
        not shown (``miir prepare`` keeps texts as vectors only)."""
        out: dict[str, Any] = {}
        for info in tables.fields:
            name = info.name
            if info.kind == FieldKind.TEXT or not tables.present[name][item]:
                continue
            v = tables.values[name][item]
            if info.kind == FieldKind.MULTI_CATEGORICAL:
                out[name] = [tables.vocabs[name][i] for i in v if i >= FIRST_VALUE_ID]
            elif info.kind == FieldKind.NUMERIC and not math.isnan(raw := _raw(tables, name, item)):
                out[name] = raw
            else:
                out[name] = tables.vocabs[name][int(v)]
        return out


def _raw(tables: ItemTables, name: str, item: int) -> float:
    """An item's raw number where the artifact has it; NaN where it has none: the field not
    kept raw, or a value the data lacked and an imputer filled in (a derived artifact keeps
    its parent's raw numbers), which is then shown by its bucket."""
    raw = tables.raw.get(name)
    return math.nan if raw is None else float(raw[item])


@dataclass
class ItemTables:
    """Observed side values per item (rows = item ids) for display and nearest texts: the
    model's own tables (its buffers), or the artifact's for a model without side fields."""

    fields: list[FieldInfo]
    vocabs: dict[str, list[Any]]
    present: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    raw: dict[str, np.ndarray] = field(default_factory=dict)


# ---------------------------------------------------------------------- text


class TextEncoder:
    """The sentence encoder of preparation, loaded on first use and then kept: the same model
    and the same call as :func:`miir.data.encode_text.encode_texts` (normalised vectors)."""

    def __init__(self, model: str | None, device: str = "cpu") -> None:
        self.model = model
        self.device = device
        self._encoder: Any = None

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self._encoder is None:
            from miir.data.encode_text import resolve_model

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            path, _ = resolve_model(self.model)
            self._encoder = SentenceTransformer(path, device=self.device)
        vecs = self._encoder.encode(
            texts, batch_size=256, show_progress_bar=False, convert_to_numpy=True,
            normalize_embeddings=True,
        )  # fmt: skip
        return np.asarray(vecs, dtype=np.float32)


def model_inputs(
    resolved: list[Resolved],
    model: Any,
    encode_text: Callable[[list[str]], np.ndarray],
    device: str = "cpu",
) -> tuple[Tensor, Any]:
    """Right-aligned (B, L) item ids of the histories and, where any holds an inline record,
    their :class:`~miir.models.miir.SideInputs` (table values, the records' in their place;
    every record's texts encoded in one call)."""
    width = max(len(r.ids) for r in resolved)
    items = torch.zeros(len(resolved), width, dtype=torch.long)  # (B, L), 0 = padding
    for b, r in enumerate(resolved):
        items[b, width - len(r.ids) :] = torch.tensor(r.ids, dtype=torch.long)
    items = items.to(device)
    if not any(r.records for r in resolved):
        return items, None
    side = model.side_inputs(items)  # (B, L, F_side) present, values per field
    names = [f.name for f in model.fields]
    kinds = {f.name: f for f in model.fields}
    texts: list[tuple[int, int, str, str]] = []
    for b, r in enumerate(resolved):
        for p, record in r.records.items():
            j = width - len(r.ids) + p
            for name, value in record.items():
                side.present[b, j, names.index(name)] = True
                if kinds[name].kind == FieldKind.TEXT:
                    texts.append((b, j, name, value))
                elif kinds[name].kind == FieldKind.MULTI_CATEGORICAL:
                    table = side.values[name]
                    if len(value) > table.shape[-1]:  # wider than any catalogue item's set
                        table = torch.nn.functional.pad(table, (0, len(value) - table.shape[-1]))
                        side.values[name] = table
                    table[b, j] = 0
                    table[b, j, : len(value)] = torch.tensor(value)
                else:
                    side.values[name][b, j] = value
    if texts:
        vecs = encode_text([t[3] for t in texts])  # (T, D)
        for (b, j, name, _), vec in zip(texts, vecs, strict=True):
            dim = kinds[name].dim
            if vec.shape[-1] != dim:
                raise MiirError(
                    f"field {name!r}: the text encoder gives {vec.shape[-1]}-dimensional "
                    f"vectors, the model was trained on {dim}: use the preparation's text model"
                )
            side.values[name][b, j] = torch.from_numpy(vec)
    return items, side


# ---------------------------------------------------------------------- imputations


class TextIndex:
    """The catalogue texts of one field, for the nearest texts of predicted vectors.

    ``rows`` (M,): the item ids whose text is present; ``unit`` (M, D): their unit vectors.
    ``head``: the (W, b) of the affine map that produced the predictions, p = W h + b with
    W (D, e) and e < D (MIIR's text codec). Then the products ``unit @ p`` are computed in the
    head's input space, ``(unit @ W) h + unit @ b`` with ``h = W+ (p - b)``: e multiplications
    per catalogue text instead of D (64 against 384 for MiniLM vectors; the product over
    the whole catalogue was most of a recommendation with imputations). A prediction off the
    head's range (its reconstruction ``W h + b`` off ``p`` by more than 1e-4 of ``p``'s norm,
    as a vector from elsewhere would be) takes the direct product."""

    RESIDUAL = 1e-4

    def __init__(self, rows: Tensor, unit: Tensor, head: tuple[Tensor, Tensor] | None = None):
        self.rows, self.unit = rows, unit
        self.head = None
        if head is not None and head[0].shape[1] < head[0].shape[0]:
            w, b = (t.detach().double().cpu() for t in head)  # (D, e), (D,)
            self.head = (
                torch.linalg.pinv(w).float(),  # (e, D)
                w.float(),
                b.float(),
                (unit.double() @ w).float(),  # (M, e)
                (unit.double() @ b).float(),  # (M,)
            )

    def __len__(self) -> int:
        return len(self.rows)

    def similarities(self, preds: Tensor) -> Tensor:
        """(n, D) predicted vectors -> (n, M) cosine similarities to the catalogue texts."""
        preds = preds.float()
        norm = preds.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (n, 1)
        if self.head is None:
            return (preds / norm) @ self.unit.T
        pinv, w, b, unit_w, unit_b = self.head
        h = (preds - b) @ pinv.T  # (n, e)
        off = (h @ w.T + b - preds).norm(dim=1) > self.RESIDUAL * norm[:, 0]  # (n,)
        sims = (h @ unit_w.T + unit_b) / norm  # (n, M)
        if off.any():
            sims[off] = (preds[off] / norm[off]) @ self.unit.T
        return sims


def describe_field(
    info: FieldInfo,
    pred: Tensor,
    codebook: Codebook,
    text_table: TextIndex | None,
    vectors: bool,
) -> FieldImputation:
    """One position's prediction of a field in human form (see :class:`FieldImputation`)."""
    return describe_rows(info, pred[None], codebook, text_table, vectors)[0]


def describe_rows(
    info: FieldInfo,
    preds: Tensor,
    codebook: Codebook,
    text_table: TextIndex | None,
    vectors: bool,
) -> list[FieldImputation]:
    """:func:`describe_field` for many positions' predictions of one field, ``preds``
    (n, V + 2) or (n, D): one top-k (and, for text, one similarity product) for all of them,
    not one per position: a batch of requests has a few hundred positions to describe."""
    name, kind = info.name, info.kind
    if kind == FieldKind.TEXT:
        nearest: list[list[NearestItem]] = [[] for _ in range(len(preds))]
        if text_table is not None:
            sims = text_table.similarities(preds)  # (n, M)
            top = torch.topk(sims, min(TOP_TEXT, sims.shape[1]), dim=1)  # (n, t)
            ids = text_table.rows[top.indices].tolist()  # (n, t) item ids
            nearest = [
                [NearestItem(codebook.item_names[i], s) for s, i in zip(sv, iv, strict=True)]
                for sv, iv in zip(top.values.tolist(), ids, strict=True)
            ]
        return [
            FieldImputation(
                name,
                kind.value,
                [near[0].item] if near else [],
                nearest=near,
                vector=pred.tolist() if vectors else None,
            )
            for near, pred in zip(nearest, preds, strict=True)
        ]
    probs = preds[:, FIRST_VALUE_ID:]  # (n, V) over real values
    top_n = TOP_MULTI if kind == FieldKind.MULTI_CATEGORICAL else TOP_SINGLE
    top = torch.topk(probs, min(top_n, probs.shape[1]), dim=1)  # (n, top_n)
    chosen: list[list[int]] = [[] for _ in range(len(probs))]
    if kind == FieldKind.MULTI_CATEGORICAL and probs.shape[1]:
        # every value at or above the threshold, most probable first: one top-k over the rows
        # (as many as the fullest row has), the values below the threshold dropped
        above = probs >= MULTI_THRESHOLD  # (n, V)
        widest = int(above.sum(1).max()) if len(probs) else 0
        if widest:
            best = torch.topk(probs.masked_fill(~above, -1.0), widest, dim=1)  # (n, widest)
            chosen = [
                [i for p, i in zip(pv, iv, strict=True) if p >= 0]
                for pv, iv in zip(best.values.tolist(), best.indices.tolist(), strict=True)
            ]
    out = []
    for row, (pv, iv) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True)):
        candidates = [
            ValueProb(codebook.value(name, i + FIRST_VALUE_ID), p)
            for p, i in zip(pv, iv, strict=True)
        ]
        if kind == FieldKind.MULTI_CATEGORICAL:
            predicted = [codebook.value(name, i + FIRST_VALUE_ID) for i in chosen[row]]
        else:
            predicted = [candidates[0].value] if candidates else []
        out.append(FieldImputation(name, kind.value, predicted, candidates))
    return out


# ---------------------------------------------------------------------- JSONL -> parquet


def _read_jsonl(path: Path) -> Iterator[tuple[int, str | None, list[Any]]]:
    """(line number, user, history) per non-blank line; a malformed line is an error that
    names the file and the line."""
    import json

    with open(path, "rb") as fh:  # decoded line by line, so that bad bytes name their line
        for n, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1}); "
                    "JSONL input is UTF-8",
                    file=path,
                    line=n,
                ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"not JSON ({exc.msg}, column {exc.colno})", file=path, line=n
                ) from None
            if not isinstance(obj, dict) or not isinstance(obj.get("history"), list):
                raise DataError(
                    'expected an object {"user": ..., "history": [...]}', file=path, line=n
                )
            user = obj.get("user")
            yield n, None if user is None else str(user), obj["history"]


def recommend_jsonl(
    recommender: Recommender,
    path: str | Path,
    out: str | Path,
    *,
    k: int = 10,
    batch_size: int = 256,
    exclude_seen: bool = True,
    progress: bool = True,
) -> dict[str, int]:
    """Stream histories from JSONL (``{"user": optional, "history": [...]}`` per line) and
    write the top-``k`` items of each to parquet, one row per (user, rank): columns ``user``,
    ``line``, ``rank`` (1 = best), ``item``, ``score``, ``cut``. Batches of ``batch_size``
    users are scored together; the file is written under a temporary name and renamed when
    complete. A malformed line or an unknown item stops the run with its file and line."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    path, out = Path(path), Path(out)
    if not path.is_file():
        raise DataError("input file not found", file=path)
    if k < 1 or batch_size < 1:
        raise ConfigError(
            f"k and batch_size must be at least 1, got k={k}, batch_size={batch_size}"
        )
    schema = pa.schema(
        [("user", pa.string()), ("line", pa.int64()), ("rank", pa.int32()),
         ("item", pa.string()), ("score", pa.float32()), ("cut", pa.int32())]
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    stats = {"users": 0, "rows": 0, "cut": 0, "warnings": 0}
    writer = pq.ParquetWriter(tmp, schema)
    try:
        batch: list[tuple[int, str | None, Resolved]] = []

        def flush() -> None:
            try:
                recs = recommender._score([r for _, _, r in batch], k, exclude_seen, False, False)
            except MiirError as exc:  # scoring takes the batch at once: name its lines
                reason = exc.reason if isinstance(exc, DataError) else str(exc)
                where = f"one of lines {batch[0][0]}-{batch[-1][0]}: " if len(batch) > 1 else ""
                raise DataError(where + reason, file=path, line=batch[0][0]) from None
            cols: dict[str, list[Any]] = {name: [] for name in schema.names}
            for (n, user, r), rec in zip(batch, recs, strict=True):
                for rank, item in enumerate(rec.items, start=1):
                    for key, v in zip(schema.names, (user, n, rank, item.item, item.score, r.cut),
                                      strict=True):  # fmt: skip
                        cols[key].append(v)
                stats["cut"] += r.cut > 0
                stats["warnings"] += len(r.warnings) - (r.cut > 0)  # the cut is counted apart
            writer.write_table(pa.table(cols, schema=schema))
            stats["users"] += len(batch)
            stats["rows"] += len(cols["item"])
            batch.clear()

        bar = tqdm(_read_jsonl(path), unit=" users", disable=not progress, file=sys.stderr)
        for n, user, history in bar:
            try:
                batch.append((n, user, recommender._resolve(history)))
            except MiirError as exc:
                reason = exc.reason if isinstance(exc, DataError) else str(exc)
                raise DataError(reason, file=path, line=n) from None
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return stats
