"""Item fields for every model: the catalogue a model is built from, the item tables it keeps,
and one embedding/head module per field kind, written once and used by every feature-aware
model (MIIR, FDSA, NOVA, PRNN, ...).

- :class:`FieldInfo`: what a model needs to know of one side field (kind, sizes).
- :class:`ItemCatalogue`: the side fields, their vocabularies (so that a loaded model turns an
  imputed id back into a value without the artifact), the item names, and the observed item
  tables (present flags and values, after any discard). Built from an artifact with
  :meth:`ItemCatalogue.from_artifact`; stored in a checkpoint's JSON (tables in safetensors).
- :class:`ItemFeatures`: the observed tables as buffers; ``present(items)`` and
  ``values(name, items)`` look them up per position.
- :func:`field_codec`: the module of one field kind. ``embed(values, visible)`` gives (..., e)
  vectors, with the field's learned "missing" value where ``visible`` is False (a value
  missing in the data and a value hidden by masking look the same to a model);
  ``loss(h, values)`` scores predicted states against the true values (per position);
  ``predict(h)`` decodes states into imputations.

Vocabulary ids 0 (padding) and 1 (missing) are reserved in every categorical table.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from miir.data.schema import FIRST_VALUE_ID, MISSING_ID, FieldKind
from miir.errors import ConfigError
from miir.models.softmax import softmax_cross_entropy

if TYPE_CHECKING:
    from miir.data.artifact import Artifact

ID_FIELD = "item_id"
#: a multi-valued field's loss normalisations (:class:`MultiCodec`; ``MIIRConfig.multi_loss``)
MultiLoss = Literal["mean", "per_value"]
MULTI_LOSS_NORMS: tuple[str, ...] = get_args(MultiLoss)


@dataclass(frozen=True)
class FieldInfo:
    """What a model needs to know of one side field (the checkpoint stores these)."""

    name: str
    kind: FieldKind
    cardinality: int = 0  # vocabulary size with reserved ids (categorical, multi, numeric buckets)
    dim: int = 0  # text vector size
    width: int = 0  # values per item (multi_categorical)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "cardinality": self.cardinality,
            "dim": self.dim,
            "width": self.width,
        }

    @classmethod
    def from_json(cls, d: dict) -> FieldInfo:
        return cls(d["name"], FieldKind(d["kind"]), d["cardinality"], d["dim"], d["width"])


def _numeric_labels(edges: list[float]) -> list[str]:
    """Readable bucket ranges of a numeric field, indexed like its vocabulary."""
    bounds = [-math.inf, *edges, math.inf]
    return ["<pad>", "<missing>"] + [f"[{lo:g}, {hi:g})" for lo, hi in itertools.pairwise(bounds)]


@dataclass
class ItemCatalogue:
    """The items a model is built over: ``n_items`` real items (ids 2 .. n_items + 1), their side
    ``fields`` with vocabularies, and the observed tables (rows = item ids)."""

    fields: list[FieldInfo]
    n_items: int
    vocabs: dict[str, list[Any]] = field(default_factory=dict)
    item_names: list[str] | None = None
    present: dict[str, Tensor] = field(default_factory=dict)
    values: dict[str, Tensor] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> FieldInfo:
        for f in self.fields:
            if f.name == name:
                return f
        raise ConfigError(f"field {name!r} is not in the catalogue; fields are {self.names}")

    @classmethod
    def from_artifact(cls, artifact: Artifact, names: list[str] | None = None) -> ItemCatalogue:
        """The catalogue of ``names`` (default: all side fields of the artifact)."""
        names = list(artifact.schema.names if names is None else names)
        infos, vocabs, present, values = [], {}, {}, {}
        for name in names:
            if name not in artifact.fields:
                raise ConfigError(
                    f"field {name!r} is not in the artifact; fields are {list(artifact.fields)}"
                )
            fd = artifact.fields[name]
            if fd.kind == FieldKind.TEXT:
                infos.append(FieldInfo(name, fd.kind, dim=int(fd.values.shape[1])))
                vocabs[name] = []
            elif fd.kind == FieldKind.MULTI_CATEGORICAL:
                infos.append(
                    FieldInfo(
                        name, fd.kind, cardinality=fd.cardinality, width=int(fd.values.shape[1])
                    )
                )
                vocabs[name] = list(fd.vocab)
            elif fd.kind == FieldKind.NUMERIC:
                infos.append(FieldInfo(name, fd.kind, cardinality=fd.cardinality))
                edges = artifact._json(f"vocab/{name}.json")["bucket_edges"]
                vocabs[name] = _numeric_labels(edges)
            else:
                infos.append(FieldInfo(name, fd.kind, cardinality=fd.cardinality))
                vocabs[name] = list(fd.vocab)
            present[name] = torch.from_numpy(np.array(fd.present, dtype=bool))
            v = np.asarray(fd.values)
            values[name] = torch.from_numpy(
                v.astype(np.float32 if v.dtype.kind == "f" else np.int64)
            )
        return cls(infos, artifact.n_items, vocabs, list(artifact.item_names), present, values)

    def select(self, names: list[str] | tuple[str, ...]) -> ItemCatalogue:
        """The same items with only the side fields ``names``, in that order."""
        infos = [self.field(n) for n in names]
        return ItemCatalogue(
            infos,
            self.n_items,
            {n: self.vocabs[n] for n in names if n in self.vocabs},
            self.item_names,
            {n: self.present[n] for n in names if n in self.present},
            {n: self.values[n] for n in names if n in self.values},
        )

    def without_tables(self) -> ItemCatalogue:
        """The same description (fields, vocabularies, item names) without the item tables."""
        return ItemCatalogue(list(self.fields), self.n_items, self.vocabs, self.item_names)

    def without_side_fields(self) -> ItemCatalogue:
        """The same items with no side fields (for ID-only models)."""
        return ItemCatalogue([], self.n_items, {}, self.item_names)

    def to_json(self) -> dict[str, Any]:
        """Everything but the tables (those travel in the checkpoint's safetensors)."""
        return {
            "fields": [f.to_json() for f in self.fields],
            "n_items": self.n_items,
            "vocabs": self.vocabs,
            "item_names": self.item_names,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ItemCatalogue:
        return cls(
            [FieldInfo.from_json(f) for f in d["fields"]],
            int(d["n_items"]),
            dict(d.get("vocabs") or {}),
            d.get("item_names"),
        )


class ItemFeatures(nn.Module):
    """The observed side information of every item, as buffers (rows = item ids), so that a
    checkpoint scores and imputes without the artifact."""

    def __init__(self, catalogue: ItemCatalogue) -> None:
        super().__init__()
        self.fields = list(catalogue.fields)
        rows = catalogue.n_items + FIRST_VALUE_ID
        for f in self.fields:
            if f.kind == FieldKind.TEXT:
                values = torch.zeros(rows, f.dim)
            elif f.kind == FieldKind.MULTI_CATEGORICAL:
                values = torch.zeros(rows, f.width, dtype=torch.long)
            else:
                values = torch.zeros(rows, dtype=torch.long)
            self.register_buffer(f"{f.name}__values", values)
            self.register_buffer(f"{f.name}__present", torch.zeros(rows, dtype=torch.bool))
        if catalogue.present:
            self.load_tables(catalogue.present, catalogue.values)

    def load_tables(self, present: dict[str, Tensor], values: dict[str, Tensor]) -> None:
        """Load the observed side information of every item (rows = item ids)."""
        for f in self.fields:
            getattr(self, f"{f.name}__present").copy_(present[f.name])
            getattr(self, f"{f.name}__values").copy_(values[f.name])

    def values(self, name: str, items: Tensor) -> Tensor:
        """The stored values of field ``name`` at each position: (...,), (..., K) or (..., D)."""
        return getattr(self, f"{name}__values")[items]

    def table(self, name: str) -> Tensor:
        return getattr(self, f"{name}__values")

    def field_present(self, name: str, items: Tensor) -> Tensor:
        return getattr(self, f"{name}__present")[items]

    def present(self, items: Tensor) -> Tensor:
        """Which fields of each position exist in the data: (..., 1 + F) bool, the ID first
        (True for a real item) and then the side fields in catalogue order."""
        cols = [items >= FIRST_VALUE_ID] + [self.field_present(f.name, items) for f in self.fields]
        return torch.stack(cols, dim=-1)


# ---------------------------------------------------------------------- one module per kind


class CategoricalCodec(nn.Module):
    """One value per item (categorical fields, numeric buckets): an embedding table whose row 1
    is the learned missing value; predicted with a softmax over the table (tied weights)."""

    def __init__(self, info: FieldInfo, e: int) -> None:
        super().__init__()
        self.info = info
        self.table = nn.Embedding(info.cardinality, e)

    def embed(self, values: Tensor, visible: Tensor) -> Tensor:
        """(...,) value ids, (...,) bool -> (..., e)."""
        return self.table(torch.where(visible, values, torch.full_like(values, MISSING_ID)))

    def logits(self, h: Tensor) -> Tensor:
        """(..., e) -> (..., V) over the real values (ids from 2)."""
        return h @ self.table.weight[FIRST_VALUE_ID:].T

    def loss(self, h: Tensor, values: Tensor) -> Tensor:
        """(M, e) states, (M,) true value ids -> (M,) cross-entropy."""
        return softmax_cross_entropy(h, self.table.weight[FIRST_VALUE_ID:], values - FIRST_VALUE_ID)

    def predict(self, h: Tensor) -> Tensor:
        """(..., e) -> (..., V + 2) probabilities over value ids (0 for ids 0 and 1)."""
        probs = torch.softmax(self.logits(h).float(), dim=-1)
        return F.pad(probs, (FIRST_VALUE_ID, 0))


class MultiCodec(nn.Module):
    """A set of values per item: the sum of the values' embeddings (the missing row where the set
    is not visible); predicted with one sigmoid per value (binary cross-entropy), the sum over
    the values divided by their number (``norm='mean'``, Eq. 11's 1 / N_c) or by the item's
    number of true values (``norm='per_value'``)."""

    def __init__(self, info: FieldInfo, e: int, norm: str = "mean") -> None:
        super().__init__()
        if norm not in MULTI_LOSS_NORMS:
            raise ConfigError(f"field {info.name!r}: multi_loss must be one of {MULTI_LOSS_NORMS}")
        self.info = info
        self.norm = norm
        self.table = nn.Embedding(info.cardinality, e)

    def embed(self, values: Tensor, visible: Tensor) -> Tensor:
        """(..., K) value ids (0-padded), (...,) bool -> (..., e)."""
        summed = (self.table(values) * (values >= FIRST_VALUE_ID)[..., None]).sum(-2)
        return torch.where(visible[..., None], summed, self.table.weight[MISSING_ID])

    def logits(self, h: Tensor) -> Tensor:
        return h @ self.table.weight[FIRST_VALUE_ID:].T

    def multi_hot(self, values: Tensor, like: Tensor) -> Tensor:
        """(..., K) value ids (0-padded) -> (..., V) 0/1 targets shaped like ``like``. The
        padding adds 0 to column 0, which is also the first value's: added, never written over
        (``scatter_`` would let a later padding id erase that value)."""
        out = torch.zeros_like(like)
        index = (values - FIRST_VALUE_ID).clamp(min=0)
        out.scatter_add_(-1, index, (values >= FIRST_VALUE_ID).to(out))
        return out.clamp_(max=1.0)

    def loss(self, h: Tensor, values: Tensor) -> Tensor:
        """(M, e) states, (M, K) true value ids -> (M,) binary cross-entropy summed over the
        values, divided by their number ('mean') or by the item's true values ('per_value')."""
        logits = self.logits(h).float()
        target = self.multi_hot(values, logits)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        if self.norm == "mean":
            return bce.mean(-1)
        return bce.sum(-1) / target.sum(-1).clamp(min=1.0)

    def predict(self, h: Tensor) -> Tensor:
        """(..., e) -> (..., V + 2) independent probabilities (0 for ids 0 and 1)."""
        return F.pad(torch.sigmoid(self.logits(h).float()), (FIRST_VALUE_ID, 0))


class TextCodec(nn.Module):
    """A text vector per item (encoded once at preparation): a linear map in, a learned missing
    vector, and a linear map back to the text space scored by squared error (Eq. 12)."""

    def __init__(self, info: FieldInfo, e: int) -> None:
        super().__init__()
        self.info = info
        self.into = nn.Linear(info.dim, e)
        self.out = nn.Linear(e, info.dim)
        self.missing = nn.Parameter(torch.zeros(e))

    def embed(self, values: Tensor, visible: Tensor) -> Tensor:
        """(..., D) vectors, (...,) bool -> (..., e)."""
        return torch.where(visible[..., None], self.into(values), self.missing)

    def loss(self, h: Tensor, values: Tensor) -> Tensor:
        """(M, e) states, (M, D) true vectors -> (M,) squared error."""
        return ((self.out(h).float() - values) ** 2).sum(-1)

    def predict(self, h: Tensor) -> Tensor:
        """(..., e) -> (..., D) predicted text vectors."""
        return self.out(h).float()


Codec = CategoricalCodec | MultiCodec | TextCodec


def field_codec(info: FieldInfo, e: int, multi_loss: str = "mean") -> Codec:
    """The embedding/head module of a field of kind ``info.kind`` (``multi_loss``: a
    multi-valued field's loss normalisation, :class:`MultiCodec`)."""
    if info.kind == FieldKind.TEXT:
        return TextCodec(info, e)
    if info.kind == FieldKind.MULTI_CATEGORICAL:
        return MultiCodec(info, e, multi_loss)
    if info.kind in (FieldKind.CATEGORICAL, FieldKind.NUMERIC):
        return CategoricalCodec(info, e)
    raise ConfigError(f"field {info.name!r}: no codec for kind {info.kind.value!r}")


class FieldEncoder(nn.Module):
    """Item tables plus one codec per side field: what every feature-aware model embeds items
    with. ``embed(items, visible)`` -> (..., F_side, e) in catalogue order."""

    def __init__(self, catalogue: ItemCatalogue, e: int, multi_loss: str = "mean") -> None:
        super().__init__()
        self.fields = list(catalogue.fields)
        self.e = e
        self.features = ItemFeatures(catalogue)
        self.codecs = nn.ModuleDict({f.name: field_codec(f, e, multi_loss) for f in self.fields})

    def __len__(self) -> int:
        return len(self.fields)

    def present(self, items: Tensor) -> Tensor:
        return self.features.present(items)

    def embed_field(self, name: str, items: Tensor, visible: Tensor) -> Tensor:
        return self.codecs[name].embed(self.features.values(name, items), visible)

    def embed(self, items: Tensor, visible: Tensor | None = None) -> Tensor:
        """(...,) item ids and (..., F_side) visibility (default: what the data has) ->
        (..., F_side, e). Padding and unknown items have no side field present."""
        if not self.fields:
            return torch.zeros(*items.shape, 0, self.e, device=items.device)
        if visible is None:
            visible = self.present(items)[..., 1:]
        cols = [self.embed_field(f.name, items, visible[..., j]) for j, f in enumerate(self.fields)]
        return torch.stack(cols, dim=-2)

    def loss(self, name: str, h: Tensor, items: Tensor) -> Tensor:
        """(M, e) states at positions holding ``items`` (M,) -> (M,) loss of field ``name``."""
        return self.codecs[name].loss(h, self.features.values(name, items))
