"""NOVA-BERT: non-invasive self-attention for side information fusion.

Paper: C. Liu, X. Li, G. Cai, Z. Dong, H. Zhu, L. Shang, "Non-invasive Self-attention for
Side Information Fusion in Sequential Recommendation", AAAI 2021 (arXiv:2103.03578),
Sections 3.3-3.6.

NOVA-BERT is BERT4Rec (:mod:`miir.models.bert4rec`: cloze training, output head, inference by
an appended mask token) with every self-attention layer replaced by a NOVA layer:

- the item representations R^(ID) start as the pure item ID embeddings and are the only thing
  the layers carry forward (values, residuals, feed-forward, output head);
- the side information (every side field of the catalogue, embedded by
  :class:`~miir.models.fields.FieldEncoder`, and the position, which the paper treats as
  behaviour-related side information) is given, identical, to every layer and enters only the
  queries and keys: R = F(R^(ID), f_1, ..., f_p, pos), Q = R W_Q, K = R W_K, V = R^(ID) W_V,
  NOVA(R, R^(ID)) = softmax(Q K^T / sqrt(d)) V (Section 3.4);
- fusion functions F (Section 3.5): ``"sum"`` (F = sum_i f_i), ``"concat"`` (F = FC([f_1; ...;
  f_m])) and ``"gating"`` (F = sum_i G_i f_i with G = softmax(F W^F), F = [f_1, ..., f_m] in
  R^{m x h}, W^F in R^{h x 1}), the paper's best and the default.

Hidden items: in the cloze task a hidden item enters with the mask id (1) AND with all its side
fields hidden (their learned missing values, ``visible=False``), because the inference query
appended after the history has no side information either; only its position is known.

Hyper-parameters: NOVA-BERT keeps BERT4Rec's architecture and training; the paper adds only
the fusion function (gating best). We keep BERT4Rec's defaults
(:class:`~miir.models.bert4rec.BERT4RecConfig`: e = 64, 2 layers, 2 heads, dropout 0.1, mask
proportion 0.6 for Beauty, last-item examples 0.1) and the MIIR paper's max_len 20; the sizes
the NOVA paper tuned on its own datasets were not checked against the paper's text here.

Choices where the paper is silent, and deviations:

- the gating's sigma is a softmax over the m fused features (the paper uses sigma for the
  softmax in its attention equation, and the gate weights a sum of the features);
- each layer has its own fusion parameters (the paper does not say whether layers share
  them);
- the ID stream gets BERT's embedding LayerNorm and dropout, and so does each side embedding
  (fields and position; one LayerNorm shared by them), so that the fused features share one
  scale: without it the side embeddings start ~5x smaller than the normalised ID vectors and,
  on a planted task where the next item is decided by a side field of items never seen in
  training, gating fusion reached 0.66 accuracy instead of 1.0 after 150 steps (sum 0.71,
  concat 1.0);
- fusion is applied to the layer's current item representation, not to the input ID
  embedding only (Figure 4: "each NOVA layer takes two inputs, item representations and side
  information");
- the paper's commercial data has behaviour-related side information (action type, time); the
  catalogue's fields are all item-related, so only the position is behaviour-related here;
- every field kind enters through :class:`~miir.models.fields.FieldEncoder` (a multi-valued
  field as the sum of its values' embeddings, text as a linear map of its vector, numeric as
  its quantile bucket); a value missing in the data enters as the field's learned missing value.
Everything else (loss normalisation, last-item examples, initialisation, packing) is
BERT4Rec's, see :mod:`miir.models.bert4rec`.

NOVA+RFS (the MIIR paper's baseline with random feature sampling, its reference 18, Shi et al.,
CIKM 2019; registry name ``nova-rfs``): with ``rfs_prob`` > 0, each training step drops each
present side value of each item of the window with that probability
(:func:`~miir.models.masking.rfs_drop`, drawn from the trainer's generator after the cloze
mask); a dropped value enters as the field's learned missing value, exactly like a value
missing in the data. Scoring drops nothing. The preset's rate is
:data:`~miir.models.masking.RFS_DEFAULT_PROB` (see there why).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from miir.data.schema import MISSING_ID
from miir.models.base import SideInfoConfig
from miir.models.batch import Batch, gather_positions
from miir.models.bert4rec import BERT4Rec, BERT4RecConfig, additive_mask, cloze_loss
from miir.models.fields import FieldEncoder, ItemCatalogue
from miir.models.layers import Block, dropout
from miir.models.masking import rfs_drop

__all__ = ["NOVA", "Fusion", "NOVABlock", "NOVAConfig"]

FusionKind = Literal["gating", "sum", "concat"]


class NOVAConfig(BERT4RecConfig, SideInfoConfig):
    """BERT4Rec's options plus the side fields and the fusion function."""

    fusion: FusionKind = Field(
        "gating",
        description="Fusion of item representation, side fields and position "
        "for queries and keys: 'gating' (the paper's best), 'sum' or 'concat'.",
    )
    rfs_prob: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="RFS: probability that training drops a present side value of an item "
        "(entered as missing); scoring drops nothing. 0: plain NOVA.",
    )

    def variant_name(self) -> str:
        return "NOVA+RFS" if self.rfs_prob > 0 else "NOVA"


class Fusion(nn.Module):
    """A fusion function F of Section 3.5 over m feature vectors: (..., m, e) -> (..., e)."""

    def __init__(self, e: int, m: int, kind: FusionKind) -> None:
        super().__init__()
        self.kind = kind
        if kind == "gating":
            self.gate = nn.Linear(e, 1, bias=False)  # W^F in R^{h x 1}
        elif kind == "concat":
            self.fc = nn.Linear(m * e, e)

    def forward(self, f: Tensor) -> Tensor:
        if self.kind == "sum":
            return f.sum(-2)
        if self.kind == "concat":
            return self.fc(f.flatten(-2))
        g = torch.softmax(self.gate(f), dim=-2)  # (..., m, 1): G = softmax(F W^F)
        return (g * f).sum(-2)  # (..., e)


class NOVABlock(Block):
    """A post-LN transformer layer whose queries and keys come from the fused representation
    F(x, side) and whose values, residual and feed-forward carry the item representation x
    only (Section 3.4). Reuses :class:`~miir.models.layers.Block`'s parameters (the
    fused QKV projection is split: Q, K read the fusion, V reads x) and its attention."""

    def __init__(self, e: int, heads: int, dropout_p: float, m: int, fusion: FusionKind) -> None:
        super().__init__(e, heads, dropout_p)
        self.fuse = Fusion(e, m, fusion)

    def forward(  # type: ignore[override]
        self, x: Tensor, side: Tensor, mask: Tensor | None
    ) -> Tensor:
        """x (B, T, e) item representations, side (B, T, m - 1, e) side embeddings (fields
        and position), ``mask`` additive, broadcastable to (B, h, T, T) -> (B, T, e)."""
        B, T, E = x.shape
        h, d = self.heads, E // self.heads
        r = self.fuse(torch.cat([x[:, :, None], side], dim=2))  # (B, T, e): integrated R
        w, b = self.qkv.weight, self.qkv.bias
        q, k = F.linear(r, w[: 2 * E], b[: 2 * E]).view(B, T, 2, h, d).permute(2, 0, 3, 1, 4)
        v = F.linear(x, w[2 * E :], b[2 * E :]).view(B, T, h, d).transpose(1, 2)  # (B, h, T, d)
        a = self.attend(q, k, v, mask).transpose(1, 2).reshape(B, T, E)  # (B, T, e)
        x = self.ln1(x + dropout(self.proj(a), self.p, self.training))
        hidden = dropout(F.gelu(self.ff1(x)), self.p, self.training)  # (B, T, 4e)
        return self.ln2(x + dropout(self.ff2(hidden), self.p, self.training))


class NOVA(BERT4Rec):
    """NOVA-BERT over item IDs plus every side field of its catalogue (see the module
    docstring). Side information sits in buffers, so a checkpoint scores without the artifact."""

    Config: ClassVar[type[NOVAConfig]] = NOVAConfig
    uses_side_info: ClassVar[bool] = True
    batch_mode: ClassVar = "packed"

    def __init__(self, config: NOVAConfig, catalogue: ItemCatalogue) -> None:
        super().__init__(config, catalogue)
        self.fields = list(catalogue.fields)
        self.encoder = FieldEncoder(catalogue, config.embedding_size)
        self.side_norm = nn.LayerNorm(config.embedding_size)
        self.reset_parameters()

    def make_blocks(self) -> list[nn.Module]:
        cfg = self.config
        m = len(self.catalogue.fields) + 2  # item representation, side fields, position
        return [
            NOVABlock(cfg.embedding_size, cfg.n_heads, cfg.dropout, m, cfg.fusion)
            for _ in range(cfg.n_layers)
        ]

    def set_item_tables(self, present: dict[str, Tensor], values: dict[str, Tensor]) -> None:
        """Load the observed side information of every item (rows = item ids)."""
        self.encoder.features.load_tables(present, values)

    def display_name(self) -> str:
        return self.config.variant_name()

    def rfs_visible(self, items: Tensor, generator: torch.Generator | None) -> Tensor | None:
        """The side values a training step sees: (R, n, F) bool with RFS's drops, or None
        (every present value) when ``rfs_prob`` is 0 or there is no side field."""
        if self.config.rfs_prob == 0.0 or not self.fields:
            return None
        present = self.encoder.present(items)[..., 1:]  # (R, n, F)
        return rfs_drop(present, self.config.rfs_prob, generator)

    def loss(
        self, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The cloze loss (:meth:`BERT4Rec.loss`), the side values seen after RFS's drops."""
        hidden = self.draw_mask(batch, generator)  # (R, n)
        return self.masked_loss(batch, hidden, self.rfs_visible(batch.items, generator))

    def masked_logits(
        self,
        batch: Batch,
        hidden: Tensor,
        at: tuple[Tensor, Tensor] | None = None,
        side_visible: Tensor | None = None,
    ) -> Tensor:
        """:meth:`BERT4Rec.masked_logits`, with ``side_visible`` (R, n, F) passed to
        :meth:`encode`."""
        positions = self._positions(batch)
        h = self.encode(batch.items, hidden, positions, batch.same_window(), side_visible)
        return self.head.logits(h[hidden] if at is None else h[at], self.item_emb)  # (M, N)

    def masked_loss(
        self, batch: Batch, hidden: Tensor, side_visible: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`BERT4Rec.masked_loss` (the same normalisation), the side values restricted
        to ``side_visible`` (R, n, F) where given (RFS)."""
        b, t, w = gather_positions(hidden)  # (M,) each, M a multiple of SELECT_BLOCK
        logits = self.masked_logits(batch, hidden, (b, t), side_visible)  # (M, N)
        return cloze_loss(batch, logits, b, t, w, self.config.loss_norm)

    def encode(
        self,
        items: Tensor,
        hidden: Tensor,
        positions: Tensor,
        same_window: Tensor | None,
        side_visible: Tensor | None = None,
    ) -> Tensor:
        """As :meth:`BERT4Rec.encode`; the hidden items' side fields are hidden too, and so
        are the side values outside ``side_visible`` (R, n, F) where given (RFS)."""
        ids = items.masked_fill(hidden, MISSING_ID)  # (R, n)
        x = self.drop(self.emb_norm(self.item_emb(ids)))  # (R, n, e): pure ID representation
        side = self.pos_emb(positions)[:, :, None]  # (R, n, 1, e)
        if self.fields:
            visible = self.encoder.present(items)[..., 1:] & ~hidden[..., None]  # (R, n, F)
            if side_visible is not None:
                visible = visible & side_visible
            side = torch.cat([self.encoder.embed(items, visible), side], dim=2)  # (R, n, F+1, e)
        side = self.drop(self.side_norm(side))  # (R, n, m - 1, e): on the ID stream's scale
        mask = additive_mask(items, same_window, x.dtype)
        for block in self.blocks:
            x = block(x, side, mask)
        return x
