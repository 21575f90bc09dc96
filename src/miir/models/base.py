"""The model contract: what the trainer, the evaluator, the checkpoint and the CLI know of a
model, so that any registered model plugs into all of them.

A model (:class:`SequenceModel`)

- has a strict config type (:class:`ModelConfig` subclass: unknown keys and wrong types are
  errors), with ``max_len`` = items per training window, the target included; it reads
  histories of ``max_len - 1`` items;
- is built from its config and an :class:`~miir.models.fields.ItemCatalogue` (side fields,
  vocabularies, item names, item tables); an ID-only model ignores the side fields;
- computes ``loss(batch, generator)`` on a :class:`~miir.models.batch.Batch` of right-aligned
  training windows, drawing its own masks from :mod:`miir.models.masking` with the seeded
  generator the trainer passes; it returns the loss and named parts (logged per epoch);
- ``score(history, candidates=None)``: (B, max_len - 1) right-aligned histories (0 = padding)
  -> (B, N + 2) next-item scores over item ids with ids 0 and 1 at -inf, or (B, C) scores of
  given candidate ids;
- names its training ``stages`` (MIIR-F: MII, then fine-tuning); the trainer runs them in
  order, each from the best checkpoint of the one before, after ``set_stage``;
- says which batch transform it supports (``batch_mode``: 'packed' needs attention that can be
  limited to a window; recurrent models use 'trim').

Optional capabilities are separate protocols that callers test for with ``isinstance``:
:class:`Imputer` (predicts side fields) and :class:`AttentionMaps` (returns attention weights).
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from miir.models.batch import Batch, BatchMode
from miir.models.fields import ItemCatalogue


class ModelConfig(BaseModel):
    """Options every model has. Subclasses add their own; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_size: int = Field(64, ge=8, description="Size of the item (and field) embeddings.")
    max_len: int = Field(
        20,
        ge=2,
        description="Items per training window, the target included; histories "
        "of max_len - 1 items are scored.",
    )
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout probability.")


class SideInfoConfig(ModelConfig):
    """Options of a model that reads side fields."""

    fields: tuple[str, ...] | None = Field(
        None, description="Side fields to use (default: all of the artifact's)."
    )


class SequenceModel(nn.Module):
    """Base class of every registered model (see the module docstring for the contract)."""

    Config: ClassVar[type[ModelConfig]] = ModelConfig
    #: True when the model reads side fields (the trainer builds the catalogue with them)
    uses_side_info: ClassVar[bool] = False
    #: the batch transform the model supports: 'packed', 'trim' or 'none'
    batch_mode: ClassVar[BatchMode] = "trim"

    def __init__(self, config: ModelConfig, catalogue: ItemCatalogue) -> None:
        super().__init__()
        if not isinstance(config, self.Config):
            raise TypeError(
                f"{type(self).__name__} needs a {self.Config.__name__}, got {type(config).__name__}"
            )
        self.config = config
        # the description only: the item tables live in the model's buffers (one copy)
        self.catalogue = catalogue.without_tables()
        self.n_items = catalogue.n_items
        self.stage = self.stages()[0]

    # -------------------------------------------------------------- description
    @property
    def history_len(self) -> int:
        """Items of history ``score`` reads."""
        return self.config.max_len - 1

    def display_name(self) -> str:
        return type(self).__name__

    def stages(self) -> tuple[str, ...]:
        """Training stages, in order; the last one is the model that is evaluated."""
        return ("main",)

    def set_stage(self, stage: str) -> None:
        if stage not in self.stages():
            raise ValueError(f"{type(self).__name__} has no stage {stage!r}: {self.stages()}")
        self.stage = stage

    # -------------------------------------------------------------- the two computations
    def loss(
        self, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def score(self, history: Tensor, candidates: Tensor | None = None) -> Tensor:
        raise NotImplementedError


@runtime_checkable
class Imputer(Protocol):
    """A model that predicts side fields: ``impute(items, hidden)`` with (B, n) item ids and
    (B, n, 1 + F) hidden flags -> field name -> predictions per position: probabilities over
    value ids (B, n, V + 2) for categorical, numeric and multi-valued fields (independent
    sigmoids for multi-valued ones), vectors (B, n, D) for text."""

    def impute(self, items: Tensor, hidden: Tensor | None = None) -> dict[str, Tensor]: ...


@runtime_checkable
class AttentionMaps(Protocol):
    """A model that returns the attention weights of the pass that scores: ``attention(history)``
    -> (layers, B, heads, T, T)."""

    def attention(self, history: Tensor) -> Tensor: ...
