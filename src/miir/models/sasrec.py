"""SASRec: self-attentive sequential recommendation.

Paper: W.-C. Kang and J. McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018
(Section III); authors' code: github.com/kang205/SASRec; reference settings: RecBole's SASRec.

Architecture (Section III.A-D):

- embedding: ``E = M[s] * sqrt(e) + P`` (item embeddings M, learned positions P; the scale by
  sqrt(e) is in the authors' code, not in the paper), then dropout;
- b causal self-attention blocks, pre-LN as in Section III.C, ``g(x) = x + Dropout(g(LN(x)))``
  for the attention and the feed-forward sub-layers (:class:`PreLNBlock`); position t attends
  only to positions <= t (Section III.B, "Causality");
- a final LayerNorm over the block outputs (the authors' code), and the prediction
  ``r_t = F_t . M^T`` with the item embeddings shared with the input (Section III.D);
- training: every position t of a window predicts item t + 1 (inputs ``window[:-1]``, targets
  ``window[1:]``; only real targets after a real input count).

Contract specifics (see :mod:`miir.models.base`):

- windows are right-aligned and positions count from the right over ``max_len`` positions, so
  the last history item that :meth:`SASRec.score` reads sits at position ``max_len - 2``, the
  position of the last input of a full training window: scoring is exactly how training
  predicts the item after its last input, whatever the left padding;
- packed batches: a slot attends to the earlier-or-same slots of its own window only
  (:meth:`~miir.models.batch.Batch.same_window` and column order), and the loss is a mean
  over predictions, so the packed loss is the unpacked one.

Hyper-parameters (defaults are RecBole's SASRec settings, our reference: e = 64, 2 blocks,
2 heads, dropout 0.5; the paper on Beauty: 2 blocks, 1 head, dropout 0.5, length 50):

- ``max_len`` 20 (the MIIR paper, Section 4.3, for all methods; RecBole and the SASRec paper
  use 50 history items: ``max_len=51``). Beauty sequences hold 8.9 items on average.
- Xavier-normal initialisation (the MIIR paper, for every baseline; the authors' code uses
  Xavier too; RecBole draws N(0, 0.02)).

Deviations, and why:

- **Loss**: full-softmax cross-entropy over all items (the MIIR paper unifies every model to
  it) instead of the paper's binary cross-entropy with one sampled negative. It is averaged
  over all predictions of the batch, as both the authors' code (sum over targets / number of
  targets) and RecBole (one prediction per training prefix) do, not normalised per sequence.
- **Feed-forward**: 4e inner units with GELU (RecBole's inner size 256 = 4 x 64, GELU) instead
  of the paper's e units with ReLU; the attention has an output projection (RecBole and
  ``nn.MultiheadAttention`` do; the authors' code has none).
- **Pre-LN as printed in the paper**: LayerNorm before each sub-layer, on queries, keys and
  values alike, residual from the un-normalised input. The authors' code normalises only the
  queries and adds the residual to the normalised input.
- **Padding** is masked out of attention as keys (every slot may attend to itself so no row
  is empty); the authors' code instead multiplies padded positions by zero after each block.
  Outputs at real positions are the same.
- ``norm_first=False`` switches to RecBole's layout: no sqrt(e) scale, LayerNorm then dropout
  on the input embeddings, post-LN blocks (:class:`~miir.models.layers.Block`), no final
  LayerNorm. Not the default: the paper's layout is.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from miir.data.schema import FIRST_VALUE_ID
from miir.models.base import ModelConfig, SequenceModel
from miir.models.batch import Batch, gather_positions, trim_left_padding
from miir.models.fields import ID_FIELD, ItemCatalogue
from miir.models.layers import Block, Dropout, PreLNBlock, xavier_init
from miir.models.softmax import softmax_cross_entropy

__all__ = [
    "CausalNextItemModel",
    "CausalStack",
    "PreLNBlock",
    "SASRec",
    "SASRecConfig",
    "SelfAttentionOptions",
    "attention_mask",
    "history_positions",
    "next_item_loss",
    "next_item_scores",
    "nonempty_history",
    "window_positions",
]


class SelfAttentionOptions(BaseModel):
    """The options of SASRec's causal self-attention stack (FDSA's two stacks share them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_heads: int = Field(2, ge=1, description="Attention heads (RecBole: 2; the paper: 1).")
    n_layers: int = Field(2, ge=1, description="Self-attention blocks b.")
    norm_first: bool = Field(
        True,
        description="True: the paper's pre-LN blocks, item embeddings scaled by sqrt(e) and a "
        "final LayerNorm; False: RecBole's layout (LayerNorm on the input, post-LN blocks).",
    )


class SASRecConfig(ModelConfig, SelfAttentionOptions):
    """Hyper-parameters of SASRec (RecBole's SASRec settings). Unknown keys are errors."""


# ---------------------------------------------------------------------- shared pieces


class CausalStack(nn.Module):
    """Learned position embeddings, dropout and causal self-attention blocks over (B, T, e)
    inputs: pre-LN blocks and a final LayerNorm (``norm_first``), or RecBole's LayerNorm on the
    input and post-LN blocks. The mask comes from :func:`attention_mask`."""

    def __init__(
        self, e: int, heads: int, layers: int, dropout_p: float, max_len: int, norm_first: bool
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.pos_emb = nn.Embedding(max_len, e)
        block = PreLNBlock if norm_first else Block
        self.blocks = nn.ModuleList([block(e, heads, dropout_p) for _ in range(layers)])
        self.norm = nn.LayerNorm(e)  # after the blocks (pre-LN) or on the input (post-LN)
        self.drop = Dropout(dropout_p)

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """(B, T, e) inputs, (B, T) position ids, additive mask -> (B, T, e) states."""
        x = x + self.pos_emb(positions)
        if not self.norm_first:
            x = self.norm(x)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x) if self.norm_first else x


def attention_mask(items: Tensor, same_window: Tensor | None, dtype: torch.dtype) -> Tensor:
    """The additive (B, 1, T, T) mask of causal attention: a slot attends to the earlier or
    same slots (column order) of its own window (``same_window`` (B, T, T) of packed rows),
    never to padding; every slot may attend to itself, so that no row is empty."""
    B, T = items.shape
    eye = torch.eye(T, dtype=torch.bool, device=items.device)
    causal = torch.ones(T, T, dtype=torch.bool, device=items.device).tril()  # (T, T)
    allowed = causal & (items != 0)[:, None, :]  # (B, T, T)
    if same_window is not None:
        allowed = allowed & same_window
    allowed = allowed | eye
    mask = torch.zeros(B, 1, T, T, dtype=dtype, device=items.device)
    return mask.masked_fill_(~allowed[:, None], float("-inf"))


def window_positions(batch: Batch, max_len: int) -> Tensor:
    """(R, n) position ids of a training batch over the model's ``max_len`` positions: the
    last item of a window at ``max_len - 1``, whatever width the batch was built with."""
    n = batch.items.shape[1]
    if n > max_len:
        raise ValueError(f"training windows of {n} items are longer than max_len = {max_len}")
    return batch.positions() + (max_len - (batch.max_len or n))


def history_positions(history: Tensor, max_len: int) -> Tensor:
    """(B, T) position ids of a right-aligned history: its last item sits where the last input
    of a full training window does (``max_len - 2``)."""
    B, T = history.shape
    pos = torch.arange(max_len - 1 - T, max_len - 1, device=history.device)
    return pos[None].expand(B, T)


def next_item_loss(
    states: Tensor, batch: Batch, item_weight: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """Every slot predicts the item in the next slot of its window: (R, n, e) states, the batch,
    the (N + 2, e) item embeddings -> the full-softmax cross-entropy averaged over all
    predictions (so a packed batch has the loss of the unpacked one), and its parts."""
    items, owner = batch.items, batch.owner()
    inputs, targets = items[:, :-1], items[:, 1:]  # (R, n - 1)
    sel = (inputs != 0) & (targets >= FIRST_VALUE_ID) & (owner[:, :-1] == owner[:, 1:])
    if not sel.any():
        zero = states.sum().float() * 0.0  # keeps the graph (and DDP) happy
        return zero, {ID_FIELD: zero.detach()}
    b, t, w = gather_positions(sel)  # (M,) each, M a multiple of SELECT_BLOCK
    ce = softmax_cross_entropy(
        states[b, t], item_weight[FIRST_VALUE_ID:], targets[b, t] - FIRST_VALUE_ID
    )
    loss = (ce * w).sum() / w.sum()
    return loss, {ID_FIELD: loss.detach()}


def next_item_scores(h: Tensor, item_emb: nn.Embedding, candidates: Tensor | None) -> Tensor:
    """(B, e) states -> (B, N + 2) float scores with ids 0 and 1 at -inf, or (B, C) scores of
    the ``candidates`` ids."""
    if candidates is not None:
        return torch.einsum("be,bce->bc", h, item_emb(candidates)).float()  # (B, C)
    scores = (h @ item_emb.weight.T).float()  # (B, N + 2)
    scores[:, :FIRST_VALUE_ID] = -math.inf
    return scores


def nonempty_history(history: Tensor) -> Tensor:
    """Right-aligned histories without the all-padding columns, keeping at least one."""
    history = trim_left_padding(history)
    if history.shape[1] == 0:
        history = torch.zeros(len(history), 1, dtype=history.dtype, device=history.device)
    return history


class CausalNextItemModel(SequenceModel):
    """What SASRec and FDSA share: a config with the :class:`SelfAttentionOptions`, item
    embeddings (scaled by sqrt(e) with ``norm_first``), packed batches, every position
    predicting the next item, and scores from the state of the last history slot. A subclass
    adds its stacks and ``forward(items, positions, same_window)`` -> (B, T, e) states (see
    :meth:`SASRec.forward`)."""

    batch_mode: ClassVar = "packed"

    def __init__(self, config: ModelConfig, catalogue: ItemCatalogue) -> None:
        super().__init__(config, catalogue)
        e = config.embedding_size
        self.item_emb = nn.Embedding(self.n_items + FIRST_VALUE_ID, e)
        self.scale = math.sqrt(e) if config.norm_first else 1.0

    def loss(
        self, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        positions = window_positions(batch, self.config.max_len)
        states = self(batch.items, positions, batch.same_window())  # (R, n, e)
        return next_item_loss(states, batch, self.item_emb.weight)

    def score(self, history: Tensor, candidates: Tensor | None = None) -> Tensor:
        history = nonempty_history(history)  # (B, T)
        h = self(history, history_positions(history, self.config.max_len))[:, -1]  # (B, e)
        return next_item_scores(h, self.item_emb, candidates)


# ---------------------------------------------------------------------- the model


class SASRec(CausalNextItemModel):
    """SASRec over item IDs (see the module docstring)."""

    Config: ClassVar[type[SASRecConfig]] = SASRecConfig
    uses_side_info: ClassVar[bool] = False

    def __init__(self, config: SASRecConfig, catalogue: ItemCatalogue) -> None:
        super().__init__(config, catalogue)
        e = config.embedding_size
        self.stack = CausalStack(
            e, config.n_heads, config.n_layers, config.dropout, config.max_len, config.norm_first
        )
        xavier_init(self)

    def forward(
        self, items: Tensor, positions: Tensor, same_window: Tensor | None = None
    ) -> Tensor:
        """(B, T) right-aligned item ids and position ids -> (B, T, e) states; the state of
        slot t reads slots <= t of its window and predicts the item after slot t."""
        x = self.item_emb(items) * self.scale  # (B, T, e)
        return self.stack(x, positions, attention_mask(items, same_window, x.dtype))
