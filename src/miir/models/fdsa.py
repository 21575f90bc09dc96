"""FDSA: feature-level deeper self-attention network.

Paper: T. Zhang, P. Zhao, Y. Liu, V. S. Sheng, J. Xu, D. Wang, G. Liu and X. Zhou,
"Feature-level Deeper Self-Attention Network for Sequential Recommendation", IJCAI 2019
(Section 3); reference implementation: RecBole's FDSA.

Architecture:

- item-level stack (Section 3.3): item embeddings plus learned position embeddings through
  causal self-attention blocks, exactly SASRec's stack (:class:`~miir.models.sasrec.CausalStack`);
- feature-level stack (Section 3.2): the side fields of each item, each embedded by its field
  codec (:class:`~miir.models.fields.FieldEncoder`, every field kind; a missing value is the
  field's learned missing value), fused into one vector by vanilla attention over the fields,
  ``alpha = softmax_f(w2 . ReLU(W1 a_f + b1) + b2)``, ``f = sum_f alpha_f a_f`` (RecBole's
  ``feature_att_layer``), plus position embeddings, through a second causal stack;
- fully connected layer (Section 3.4): ``O = [O_s ; O_f] W + b`` (2e -> e) at every position,
  scored against the item embeddings (``y = O M^T``, tied as in the paper and RecBole);
- training: every position predicts the next item, as in SASRec (inputs ``window[:-1]``,
  targets ``window[1:]``), full-softmax cross-entropy averaged over all predictions; packed
  batches attend within each window (see :mod:`miir.models.sasrec`).

Hyper-parameters: the paper tunes e, blocks and heads per data set without a single setting
for Beauty; we use RecBole's FDSA defaults, which are its SASRec defaults (e = 64, 2 blocks,
2 heads, dropout 0.5), and ``max_len`` 20 as the MIIR paper sets for every method.

Deviations, and why:

- **Fields**: the paper embeds category and brand and averages the word vectors of the text;
  here every side field of the catalogue goes through its codec (categorical and numeric
  buckets: a table; multi-valued: a sum of value embeddings; text: a linear map of the
  prepared text vector), as for every side-information model of this library.
- **Blocks and loss**: SASRec's (see :mod:`miir.models.sasrec`: pre-LN blocks with a final
  LayerNorm, 4e GELU feed-forward, full-softmax cross-entropy instead of the paper's). With
  ``norm_first=False``, RecBole's layout: LayerNorm then dropout on both stacks' inputs,
  post-LN blocks, and a LayerNorm after the output layer.
- **Positions**: each stack has its own position embeddings (RecBole shares one table), and
  item embeddings are scaled by sqrt(e) as in SASRec (feature vectors are not: they come from
  small tables and linear maps, not from one row in 12,000).
- **No side fields**: the feature-level stack then reads position embeddings only.

FDSA+RFS (the MIIR paper's baseline with random feature sampling, its reference 18, Shi et al.,
CIKM 2019; registry name ``fdsa-rfs``): with ``rfs_prob`` > 0, each training step drops each
present side value of each item of the window with that probability
(:func:`~miir.models.masking.rfs_drop`, drawn from the trainer's generator); a dropped value
enters as the field's learned missing value, exactly like a value missing in the data. Scoring
drops nothing. The preset's rate is :data:`~miir.models.masking.RFS_DEFAULT_PROB` (see there
why).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from miir.models.base import SideInfoConfig
from miir.models.batch import Batch
from miir.models.fields import FieldEncoder, ItemCatalogue
from miir.models.layers import xavier_init
from miir.models.masking import rfs_drop
from miir.models.sasrec import (
    CausalNextItemModel,
    CausalStack,
    SelfAttentionOptions,
    attention_mask,
    next_item_loss,
    window_positions,
)

__all__ = ["FDSA", "FDSAConfig", "VanillaAttention"]


class FDSAConfig(SideInfoConfig, SelfAttentionOptions):
    """Hyper-parameters of FDSA: SASRec's, for both stacks, plus the side fields to read and
    the RFS drop rate (FDSA+RFS)."""

    rfs_prob: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="RFS: probability that training drops a present side value of an item "
        "(entered as missing); scoring drops nothing. 0: plain FDSA.",
    )

    def variant_name(self) -> str:
        return "FDSA+RFS" if self.rfs_prob > 0 else "FDSA"


class VanillaAttention(nn.Module):
    """Fuse the fields of an item into one vector: (..., F, e) -> (..., e), weights (..., F)."""

    def __init__(self, e: int) -> None:
        super().__init__()
        self.energy = nn.Sequential(nn.Linear(e, e), nn.ReLU(), nn.Linear(e, 1))

    def forward(self, fields: Tensor) -> tuple[Tensor, Tensor]:
        alpha = torch.softmax(self.energy(fields).squeeze(-1), dim=-1)  # (..., F)
        return (alpha[..., None] * fields).sum(-2), alpha  # (..., e)


class FDSA(CausalNextItemModel):
    """FDSA over item IDs and every side field of its catalogue (see the module docstring)."""

    Config: ClassVar[type[FDSAConfig]] = FDSAConfig
    uses_side_info: ClassVar[bool] = True

    def __init__(self, config: FDSAConfig, catalogue: ItemCatalogue) -> None:
        super().__init__(config, catalogue)
        e = config.embedding_size
        self.encoder = FieldEncoder(catalogue, e)
        self.fuse = VanillaAttention(e) if len(self.encoder) else None
        stack = (e, config.n_heads, config.n_layers, config.dropout, config.max_len)
        self.item_stack = CausalStack(*stack, config.norm_first)
        self.feature_stack = CausalStack(*stack, config.norm_first)
        self.out = nn.Linear(2 * e, e)
        self.out_norm = nn.Identity() if config.norm_first else nn.LayerNorm(e)
        xavier_init(self)

    def display_name(self) -> str:
        return self.config.variant_name()

    def features(self, items: Tensor, side_visible: Tensor | None = None) -> Tensor:
        """(B, T) item ids -> (B, T, e): each item's side fields fused by vanilla attention
        (zeros when the catalogue has no side field). ``side_visible`` (B, T, F): the side
        values to enter (default: those present in the data; RFS passes fewer)."""
        if self.fuse is None:
            return self.item_emb.weight.new_zeros(*items.shape, self.config.embedding_size)
        return self.fuse(self.encoder.embed(items, side_visible))[0]  # (B, T, F, e) -> (B, T, e)

    def rfs_visible(self, items: Tensor, generator: torch.Generator | None) -> Tensor | None:
        """The side values a training step sees: (B, T, F) bool with RFS's drops, or None
        (every present value) when ``rfs_prob`` is 0 or there is no side field."""
        if self.config.rfs_prob == 0.0 or self.fuse is None:
            return None
        present = self.encoder.present(items)[..., 1:]  # (B, T, F)
        return rfs_drop(present, self.config.rfs_prob, generator)

    def forward(
        self,
        items: Tensor,
        positions: Tensor,
        same_window: Tensor | None = None,
        side_visible: Tensor | None = None,
    ) -> Tensor:
        """(B, T) right-aligned item ids and position ids -> (B, T, e) states; the state of
        slot t reads slots <= t of its window and predicts the item after slot t.
        ``side_visible``: see :meth:`features`."""
        x = self.item_emb(items) * self.scale  # (B, T, e)
        mask = attention_mask(items, same_window, x.dtype)  # (B, 1, T, T)
        h_item = self.item_stack(x, positions, mask)  # (B, T, e)
        h_feat = self.feature_stack(self.features(items, side_visible), positions, mask)
        return self.out_norm(self.out(torch.cat([h_item, h_feat], dim=-1)))  # (B, T, e)

    def loss(
        self, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """SASRec's next-item loss, the side values seen after RFS's drops (if any)."""
        positions = window_positions(batch, self.config.max_len)
        visible = self.rfs_visible(batch.items, generator)  # (R, n, F) or None
        states = self(batch.items, positions, batch.same_window(), visible)  # (R, n, e)
        return next_item_loss(states, batch, self.item_emb.weight)
