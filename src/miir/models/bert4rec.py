"""BERT4Rec: bidirectional transformer over item IDs, trained with the cloze task.

Paper: F. Sun, J. Liu, J. Wu, C. Pei, X. Lin, W. Ou, P. Jiang, "BERT4Rec: Sequential
Recommendation with Bidirectional Encoder Representations from Transformer", CIKM 2019
(Section 3: model architecture and training), and the authors' code
(github.com/FeiSun/BERT4Rec: ``modeling.py``, ``run.py``, ``gen_data_fin.py``).

Architecture:

- input: h0_i = LayerNorm(item_emb(v_i) + pos_emb(i)), then dropout (the paper's embedding
  layer plus BERT's embedding post-processing in ``modeling.py``);
- L post-LN transformer layers (multi-head self-attention without a causal mask, residual,
  LayerNorm, GELU feed-forward of width 4e): :class:`~miir.models.layers.Block`;
- output (the paper's output layer and ``get_masked_lm_output`` in ``run.py``): a projection
  with GELU and LayerNorm, then the softmax over items with the input item embeddings as
  weights (tied) plus an output-only bias per item:
  P(v) = softmax(LayerNorm(GELU(h W_P + b_P)) E^T + b_O).

Training (the cloze task): items of a window are hidden with probability ``mask_prob``
(:func:`~miir.models.masking.cloze_mask`), replaced by the mask token (item id 1,
"missing/unknown" in every vocabulary, plays [MASK]), and predicted with a full softmax
cross-entropy over all items. As in the authors' data generator (``mask_last`` in
``gen_data_fin.py``), some windows become examples whose only hidden item is the last one,
which is exactly the inference query (``last_item_prob``).

Inference: the mask token is appended after the history and the items are ranked by the
output at that position. ``history_len`` is therefore ``max_len - 1`` and a training window
holds ``max_len`` items, so the query sits at the position that the last item of a full
training window has.

Hyper-parameters (the paper's implementation details and ``run_beauty.sh``; the MIIR paper
takes the baselines' settings from their papers): e = 64, L = 2 layers, h = 2 heads, dropout
0.1 (the released ``bert_config_beauty_64.json`` uses 0.5 on hidden states and 0.2 on
attention weights), mask proportion 0.6 for Beauty (the released scripts: 0.2 for ML-1m, 0.4
for Steam). The paper uses max length 50 for Beauty; the MIIR paper sets 20 for every
method, the :class:`~miir.models.base.ModelConfig` default. The optimiser (Adam, lr 1e-4)
belongs to the trainer.

Choices and deviations:

- **Last-item examples** (``last_item_prob``, default 0.1): ``gen_data_fin.py`` writes
  ``dupe_factor`` = 10 cloze copies of every window plus one copy with only its last item
  masked, so 1/11 of the original training examples are last-item examples; 0.1 is that share
  rounded (each window becomes one independently with that probability at every step).
- **Masking** draws each item independently (Bernoulli with ``mask_prob``); the original picks
  exactly round(len * 0.6) items (at least 1, at most ``max_predictions_per_seq`` = 30) and
  always substitutes [MASK] (``mask_prob=1.0`` in ``run_beauty.sh``, no 80/10/10 rule), so
  the expected count is the same and the substitution rule is the original's. A window with
  nothing hidden gets its last item hidden.
- **Softmax over real items only** (ids 2 ..): the original's softmax also covers the special
  tokens of its vocabulary. The MIIR paper unifies every model to this full cross-entropy.
- **Loss normalisation** (``loss_norm``): default ``"sequence"``: per window, the sum of the
  cross-entropies at its hidden positions divided by their number, then the mean over
  windows, so that every window weighs the same whatever its length (the weighting of MIIR's
  Eq. 13, which also averages per sequence). ``"position"`` is the original's global mean over
  all hidden positions of the batch (``numerator / denominator`` in ``run.py``). Both are
  independent of how windows are packed into rows.
- **Right-aligned windows**: positions count from the right (padding on the left), so the
  appended query always has the last position; the original pads on the right.
- **Initialisation**: Xavier-normal matrices and zero biases, as the MIIR paper uses for all
  models (the original: truncated normal with std 0.02).
- **Packed batches** (``batch_mode = "packed"``): windows packed into shared rows attend only
  to their own window and keep their positions (:meth:`~miir.models.batch.Batch.same_window`,
  :meth:`~miir.models.batch.Batch.positions`); the loss equals the padded batch's.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from miir.data.schema import FIRST_VALUE_ID, MISSING_ID
from miir.models.base import ModelConfig, SequenceModel
from miir.models.batch import Batch, gather_positions, trim_left_padding
from miir.models.fields import ID_FIELD, ItemCatalogue
from miir.models.layers import Block, Dropout, xavier_init
from miir.models.masking import cloze_mask, last_of_sequence

__all__ = ["BERT4Rec", "BERT4RecConfig", "ClozeHead", "additive_mask"]


class BERT4RecConfig(ModelConfig):
    """Hyper-parameters of BERT4Rec (defaults: the paper's Beauty setting, max_len from the
    MIIR paper). Unknown keys are errors."""

    dropout: float = Field(
        0.1, ge=0.0, lt=1.0, description="Dropout on embeddings, attention and hidden states."
    )
    n_layers: int = Field(2, ge=1, description="Transformer layers L.")
    n_heads: int = Field(2, ge=1, description="Attention heads h.")
    mask_prob: float = Field(
        0.6, gt=0.0, le=1.0, description="Cloze mask proportion rho (0.6 for Beauty)."
    )
    last_item_prob: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Probability that a window becomes an example with only its last item "
        "hidden (the original generator: 1 such copy per 10 cloze copies).",
    )
    loss_norm: Literal["sequence", "position"] = Field(
        "sequence",
        description="'sequence': mean over windows of each window's mean over its hidden "
        "positions; 'position': the original's mean over all hidden positions.",
    )


def additive_mask(items: Tensor, same_window: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """The additive attention mask (0 = may attend, -inf = not) of right-aligned rows: (R, n)
    item ids, and ``same_window`` (R, n, n) for packed rows (see
    :meth:`~miir.models.batch.Batch.same_window`). Unpacked rows: (B, 1, 1, n), padding keys
    masked (None when there is no padding); packed rows: (R, 1, n, n), own window only."""
    if same_window is not None:
        allowed = same_window[:, None]  # (R, 1, n, n): empty slots share window -1, no empty row
    else:
        key_ok = items != 0  # (B, n)
        if bool(key_ok.all()):
            return None
        key_ok[:, -1] = True  # a row of only padding keeps one key (no NaN); its outputs are unused
        allowed = key_ok[:, None, None, :]  # (B, 1, 1, n)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=items.device)
    return mask.masked_fill_(~allowed, float("-inf"))


class ClozeHead(nn.Module):
    """BERT's masked-LM output layer: GELU(h W + b) -> LayerNorm -> tied item embeddings plus an
    output-only bias per item."""

    def __init__(self, e: int, n_ids: int) -> None:
        super().__init__()
        self.transform = nn.Linear(e, e)
        self.norm = nn.LayerNorm(e)
        self.out_bias = nn.Parameter(torch.zeros(n_ids))  # one per item id (ids 0, 1 unused)

    def forward(self, h: Tensor) -> Tensor:
        """(..., e) states -> (..., e) vectors to score against the item embeddings."""
        return self.norm(F.gelu(self.transform(h)))

    def logits(self, h: Tensor, item_emb: nn.Embedding) -> Tensor:
        """(M, e) states -> (M, N) logits over the real items (ids 2 ..)."""
        return F.linear(self(h), item_emb.weight[FIRST_VALUE_ID:], self.out_bias[FIRST_VALUE_ID:])

    def score(self, h: Tensor, item_emb: nn.Embedding, candidates: Tensor | None) -> Tensor:
        """(B, e) query states -> (B, N + 2) float scores (ids 0 and 1 at -inf), or (B, C)
        scores of the ``candidates`` (B, C) item ids."""
        t = self(h)  # (B, e)
        if candidates is not None:
            scores = torch.einsum("be,bce->bc", t, item_emb(candidates))  # (B, C)
            return (scores + self.out_bias[candidates]).float()
        scores = F.linear(t, item_emb.weight, self.out_bias).float()  # (B, N + 2)
        scores[:, :FIRST_VALUE_ID] = -math.inf
        return scores


def cloze_loss(
    batch: Batch, logits: Tensor, b: Tensor, t: Tensor, w: Tensor, norm: str
) -> tuple[Tensor, dict[str, Tensor]]:
    """Full-softmax cross-entropy of the (M, N) ``logits`` at the positions (``b``, ``t``) of
    ``batch`` (weight ``w``: 0 for a block's repeats), averaged over the positions
    (``norm='position'``) or per sequence and then over sequences."""
    ce = F.cross_entropy(logits.float(), batch.items[b, t] - FIRST_VALUE_ID, reduction="none") * w
    if norm == "position":
        loss = ce.sum() / w.sum().clamp(min=1)
    else:
        owner = batch.owner()[b, t]
        per_seq = ce.new_zeros(batch.n_seqs).index_add(0, owner, ce)  # (S,)
        counts = ce.new_zeros(batch.n_seqs).index_add(0, owner, w).clamp(min=1)  # (S,)
        loss = (per_seq / counts).mean()
    return loss, {ID_FIELD: loss.detach()}


class BERT4Rec(SequenceModel):
    """BERT4Rec over item IDs (see the module docstring). Subclasses (NOVA) replace
    :meth:`encode`; the cloze loss, the head and ``score`` are shared."""

    Config: ClassVar[type[BERT4RecConfig]] = BERT4RecConfig
    uses_side_info: ClassVar[bool] = False
    batch_mode: ClassVar = "packed"

    def __init__(self, config: BERT4RecConfig, catalogue: ItemCatalogue) -> None:
        super().__init__(config, catalogue)
        e = config.embedding_size
        if e % config.n_heads:
            raise ValueError(f"embedding_size {e} is not divisible by n_heads {config.n_heads}")
        self.item_emb = nn.Embedding(self.n_items + FIRST_VALUE_ID, e)
        self.pos_emb = nn.Embedding(config.max_len, e)
        self.emb_norm = nn.LayerNorm(e)
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList(self.make_blocks())
        self.head = ClozeHead(e, self.n_items + FIRST_VALUE_ID)
        self.reset_parameters()

    def make_blocks(self) -> list[nn.Module]:
        cfg = self.config
        return [Block(cfg.embedding_size, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers)]

    def reset_parameters(self) -> None:
        """Xavier-normal matrices (embeddings included), zero biases, LayerNorm at identity
        (:func:`~miir.models.layers.xavier_init`)."""
        xavier_init(self)

    # ------------------------------------------------------------------ forward
    def encode(
        self, items: Tensor, hidden: Tensor, positions: Tensor, same_window: Tensor | None
    ) -> Tensor:
        """(R, n) item ids, (R, n) hidden flags, (R, n) position ids and, for packed rows,
        (R, n, n) same-window flags -> (R, n, e) output states. Hidden items enter as the mask
        token (id 1): nothing of their id is looked up."""
        ids = items.masked_fill(hidden, MISSING_ID)  # (R, n)
        x = self.drop(self.emb_norm(self.item_emb(ids) + self.pos_emb(positions)))  # (R, n, e)
        mask = additive_mask(items, same_window, x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return x

    def _positions(self, batch: Batch) -> Tensor:
        if batch.packing is None and batch.max_len is None:
            batch = Batch(batch.items, None, self.config.max_len)  # right-aligned over max_len
        return batch.positions()

    # ------------------------------------------------------------------ training
    def draw_mask(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """The cloze mask of one step: (R, n) bool, the items to hide and predict."""
        windows = batch.packing.windows if batch.packing is not None else None
        last = last_of_sequence(batch.items, windows)  # (R, n)
        cfg = self.config
        return cloze_mask(
            batch.items,
            batch.owner(),
            batch.n_seqs,
            last,
            cfg.mask_prob,
            cfg.last_item_prob,
            generator=generator,
        )

    def loss(
        self, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The cloze loss of ``batch`` with a mask drawn from ``generator``."""
        return self.masked_loss(batch, self.draw_mask(batch, generator))

    def masked_logits(
        self, batch: Batch, hidden: Tensor, at: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """(M, N) logits over the real items at the M hidden positions of ``batch`` (row-major
        order), with the items marked in ``hidden`` (R, n) replaced by the mask token; at the
        (rows, columns) ``at`` instead where given (the loss's blocks of positions)."""
        h = self.encode(batch.items, hidden, self._positions(batch), batch.same_window())
        return self.head.logits(h[hidden] if at is None else h[at], self.item_emb)  # (M, N)

    def masked_loss(self, batch: Batch, hidden: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Full-softmax cross-entropy at the hidden positions, normalised per ``loss_norm``."""
        b, t, w = gather_positions(hidden)  # (M,) each, M a multiple of SELECT_BLOCK
        logits = self.masked_logits(batch, hidden, (b, t))  # (M, N)
        return cloze_loss(batch, logits, b, t, w, self.config.loss_norm)

    # ------------------------------------------------------------------ inference
    def query_states(self, history: Tensor) -> Tensor:
        """(B, m <= max_len - 1) right-aligned histories -> (B, e) states of the mask token
        appended after them."""
        history = trim_left_padding(history)
        B, m = history.shape
        query = torch.full((B, 1), MISSING_ID, dtype=history.dtype, device=history.device)
        items = torch.cat([history, query], dim=1)  # (B, m + 1)
        hidden = torch.zeros(items.shape, dtype=torch.bool, device=items.device)
        hidden[:, -1] = True
        L = self.config.max_len
        positions = torch.arange(L - m - 1, L, device=items.device)[None].expand(B, m + 1)
        return self.encode(items, hidden, positions, None)[:, -1]  # (B, e)

    def score(self, history: Tensor, candidates: Tensor | None = None) -> Tensor:
        """Next-item scores: (B, N + 2) with ids 0 and 1 at -inf, or (B, C) for ``candidates``."""
        return self.head.score(self.query_states(history), self.item_emb, candidates)
