"""MIIR: the missing information imputation recommender.

Paper: "Modeling Sequential Recommendation as Missing Information Imputation" (MIIR),
Section 3 (Eq. 1-14) and Sections 5.2-5.3 (Eq. 15-16).

Every item of a sequence is a group of F fields (the item ID first, then the side fields of
the artifact's schema). The embedding layer (Eq. 1-3) turns each field into an e-dimensional
vector, plus a learned field-type embedding and a position embedding shared by the fields of
one item. Dense fusion self-attention (DFSA, Eq. 4-6) runs one transformer over the F x n
tokens, so any field can attend to any other. The output layer (Eq. 7-10) scores single-valued
fields against their own (tied) embedding tables with a softmax, multi-valued fields with a
sigmoid per value, and projects text fields back to the text vector space. The MII loss
(Eq. 11-13) masks present fields with probability p and sums the per-field losses on them.

Recommendation (Section 3.1): an item whose fields are all missing is appended to the history
and items are ranked by the ID head at that position. That is the paper's model
(``causal=False``, ``--preset paper``). The default recipe differs in three measured ways
(bench/results/recipe.md, three seeds each on amazon-beauty, test full-ranking NDCG@10). The
first two together give 0.0371 against 0.0318: ``causal`` attention (the fields of an item
attend to that item and earlier items only) and ``next_item_weight`` (beside MII, the ID state
of every item predicts its successor through a projection, SASRec's every-prefix signal;
items are then ranked from the last history item's ID state, and no query item is appended).
A window's last position always holds its last item, which has no successor, so that state is
taken with the history placed one position left of the end, where training put the items
whose successors it predicted. MII training, imputation and the whole-item masked query are
unchanged. The third is the loss mean (``loss_mean='item'``, below): 0.0429 against 0.0378
(the grid's three seeds each, both with the first two).

Choices where the paper is silent (each is an option of :class:`MIIRConfig`):

- **Left padding.** Sequences are right-aligned, so the appended query item always sits at the
  last position and has the same position embedding in training and at inference. Positions
  count from the right, so columns that are padding in every row of a batch can be cut
  (:func:`trim_left_padding`, used at inference), and short training windows can share a row
  (:func:`pack_windows`: each window attends only to itself and keeps its positions; the loss
  is computed per window, so it is the loss of the padded batch).
- **The query pattern in training.** Per-field masking with p = 0.5 (the paper's; the default
  is 0.3, see the mask ratio below) hides all F fields of an item with probability p**F (1/16
  for four fields): that is how often plain MII meets the inference query. ``item_mask_prob``
  adds whole-item masking on top (every field of a position hidden, which is exactly what the
  appended query looks like). Default 0.2; the authors' code has none (0.0). Measured on
  amazon-beauty (bench/results/options.md, 30 epochs, one seed each): 0.2 gives test
  full-ranking NDCG@10 0.0293 against 0.0239 with 0.0, and sampled NDCG@10 0.3598 against
  0.3376 (paired t-test over users, p < 1e-12).
- **Missing values** are learned vectors: row 1 of each categorical table (id 1 is "missing" in
  every vocabulary), and one learned vector per text field (the paper used BERT's encoding of
  "[CLS][SEP]"). A field hidden by MII and a field missing in the data look the same to the
  model; only the loss tells them apart (really missing fields are never supervised).
- **Numeric fields** (not in the paper) are embedded and predicted as their quantile bucket.
- **Loss normalisation.** Eq. 13 averages per sequence (the sum of masked-field losses divided
  by the number of items in it, then the mean over sequences), so a 2-item window weighs as
  much as a 20-item one. The default (``loss_mean='item'``) divides the batch's sums by its
  number of items, so that every item weighs the same, as SASRec's mean over all predictions
  does. Measured on amazon-beauty (bench/grids/beauty.yaml, three seeds each, at most 40
  epochs): test NDCG@10 full 0.0429 +- 0.0003 against 0.0378 +- 0.0011 with Eq. 13's mean,
  full with the history masked 0.0490 against 0.0436, sampled 0.3680 against 0.3547; the gain
  is largest on rarely bought targets (bench/results/by_popularity). ``loss_mean='sequence'`` and
  ``--preset paper`` give Eq. 13. Per-field weights default to 1 (the item ID's to 3).
- **Mask ratio.** MII hides each present field with probability 0.3 by default, not the
  paper's 0.5: with the causal next-item head every item's ID state predicts its successor
  from a history that MII has partly hidden, and a lighter mask leaves it closer to the
  unmasked history it reads at inference. Measured on amazon-beauty (bench/recipe.py, three
  seeds each, at most 40 epochs, selected on validation: full NDCG@10 0.0564 against 0.0538):
  test NDCG@10 full 0.0447 +- 0.0003 against 0.0429 +- 0.0006, full with the history masked
  0.0514 against 0.0498, sampled 0.3672 against 0.3683 (inside the noise). MIIR-R's Eq. 14
  item masking reads the same ``mask_prob`` (measured for MIIR only).
- **A multi-valued field's loss.** Eq. 11 divides the field's summed binary cross-entropy by
  its number of values N_c (234 categories on Beauty, 1,123 on Sports), so its gradient is
  hundreds of times smaller than a single-valued field's softmax and the head learns to
  predict the root category alone. The default (``multi_loss='per_value'``) divides the sum by
  the item's number of true values, so each true value weighs what a single-valued field's
  one true value weighs. Measured on both data sets, as given and with half of the side values
  discarded (three seeds each, bench/results/multi-loss): recommendation inside the noise on
  validation everywhere (test full NDCG@10 -0.0009 on Sports D, a small cost beyond the seed
  floor); category imputation on the discarded cells F1@k 0.595 against 0.462 (Beauty D) and
  0.585 against 0.441 (Sports D), above LRMM's. ``multi_loss='mean'`` and ``--preset paper``
  give Eq. 11.
- **Scaled dot-product attention** divides by sqrt(e / h) (the usual per-head scale; Eq. 5
  prints sqrt(e)).
- **Dropout** is applied to the summed input embeddings as well as inside each layer.

Variants (Sections 5.1-5.3) are options, not copies:

- ``objective="rec"``: MIIR-R, trained with Eq. 14 only (whole items masked, IDs predicted);
- ``finetune=True``: MIIR-F, MII training followed by fine-tuning with Eq. 14 (run by the trainer);
- ``mask_missing=True``: MIIR-M, fields missing in the input are masked out of attention (Eq. 15);
- ``attention="sparse"``: Sparse-MIIR, attend only within the same item or field (SFSA, Eq. 16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from miir.data.schema import FIRST_VALUE_ID, MISSING_ID
from miir.models.base import SequenceModel, SideInfoConfig
from miir.models.batch import (
    Batch,
    Packing,
    append_query,
    gather_positions,
    pack_windows,
    padded_rows,
    trim_left_padding,
)
from miir.models.fields import ID_FIELD, FieldEncoder, FieldInfo, ItemCatalogue, MultiLoss
from miir.models.layers import Block, Dropout, PreLNBlock, xavier_init
from miir.models.masking import (
    Masked,
    hide_last_items,
    last_of_sequence,
    mii_mask,
    rec_mask,
    sample_items,
    sample_negatives,
)
from miir.models.softmax import softmax_cross_entropy

__all__ = [
    "ID_FIELD",
    "MIIR",
    "VARIANTS",
    "FieldInfo",
    "MIIRConfig",
    "Masked",
    "Packing",
    "SideInputs",
    "mii_mask",
    "pack_windows",
    "rec_mask",
    "trim_left_padding",
]


class MIIRConfig(SideInfoConfig):
    """Hyper-parameters of MIIR and its variants. Unknown keys are errors. The defaults are the
    measured best recipe (bench/results/recipe.md): the paper's architecture (e = 64, 4 heads,
    3 layers) with MII masking p = 0.3 (the paper: 0.5), dropout 0.1, whole-item masking 0.2,
    N(0, 0.02) embeddings, the item-ID loss weighted 3, causal attention and a next-item loss
    of weight 1 (scored from the last history item); ``--preset paper`` gives the paper's settings
    (:mod:`miir.presets`). ``embedding_size`` is e, the size of every field embedding;
    ``dropout`` applies in DFSA and to the input embeddings; ``max_len`` counts the appended
    query item."""

    dropout: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Dropout probability (the paper: 0.5, which trains far slower; "
        "bench/results/results_beauty_long.md).",
    )

    n_heads: int = Field(4, ge=1, description="Attention heads.")
    n_layers: int = Field(3, ge=1, description="Transformer layers L.")
    mask_prob: float = Field(
        0.3,
        gt=0.0,
        lt=1.0,
        description="p: probability of masking a present field (MII) or an item (Eq. 14) "
        "(the paper: 0.5; 0.3 measured better, bench/results/recipe.md).",
    )
    item_mask_prob: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Extra whole-item masking in MII training, so that training meets the "
        "all-missing query item (see the module docstring; the authors' code: 0.0).",
    )
    last_item_prob: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Probability that a training window's last item is hidden whole: "
        "the inference query (an appended item with every field missing) met in training.",
    )
    last_item_clean: bool = Field(
        False,
        description="A window whose last item is hidden hides nothing else (BERT4Rec's extra "
        "last-item example) instead of adding it to the MII mask.",
    )
    embedding_init: Literal["xavier", "normal"] = Field(
        "normal",
        description="'xavier' (the paper: every table Xavier-normal, so the 12k-row item table "
        "starts 12x smaller than the position table) or 'normal' (every embedding table "
        "N(0, 0.02), as BERT and RecBole).",
    )
    norm_first: bool = Field(
        False,
        description="Pre-LN layers and a final LayerNorm (as SASRec and FDSA here) instead of "
        "the paper's post-LN layers (Eq. 5).",
    )
    objective: Literal["mii", "rec"] = Field(
        "mii", description="'mii' (Eq. 13) or 'rec' (Eq. 14: MIIR-R)."
    )
    finetune: bool = Field(False, description="MIIR-F: after MII training, fine-tune with Eq. 14.")
    attention: Literal["dense", "sparse"] = Field(
        "dense", description="'dense' (DFSA) or 'sparse' (SFSA, Eq. 16)."
    )
    mask_missing: bool = Field(
        False, description="MIIR-M: mask fields missing in the input out of attention (Eq. 15)."
    )
    causal: bool = Field(
        True,
        description="Fields of an item attend only to the fields of that item and of earlier "
        "items (not in the paper, which attends both ways: false): a whole-item-masked "
        "position then predicts the next item from its prefix alone (measured with "
        "next_item_weight: bench/results/recipe.md).",
    )
    next_item_weight: float = Field(
        1.0,
        ge=0.0,
        description="With causal: weight of a next-item loss at every position (the ID "
        "state of item t, through a projection, predicts item t + 1: SASRec's every-prefix "
        "signal, not in the paper); items are then scored from the last history item's ID "
        "state. 0: off (the appended query item scores, as in the paper). Defaults to 0 "
        "when causal is set false.",
    )
    next_item_clean: bool = Field(
        False,
        description="The next-item loss reads a second, unmasked pass over the window (the "
        "input it meets at inference: every given field visible) instead of the MII pass, "
        "whose masks hide half the fields; costs a forward and backward pass per step.",
    )
    next_item_exclude_history: bool = Field(
        False,
        description="The next-item loss leaves the window's earlier items (the user's own "
        "history, up to and including the predicting item) out of its softmax, as serving's "
        "exclude_seen and the history-masked protocol leave them out of the ranking (the "
        "target itself is never left out, so data with repeated items keep their repeats). "
        "Issue 9: SASRec's top position often goes to the user's own items; this spends none "
        "of the next-item loss on them.",
    )

    next_item_fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="With a next-item loss: the fraction of items whose next-item loss a "
        "training step computes, drawn anew at every step; the drawn ones weigh 1 / fraction, "
        "so the loss's expectation is unchanged. The two catalogue-wide softmaxes (the MII "
        "item-ID loss and the next-item loss) are about half of a default step, the next-item "
        "rows two thirds of their rows; measured: 0.5 takes 0.92x the default step, its "
        "quality not yet measured (bench/results/recipe.md). 1: every item (SASRec's "
        "every-prefix signal).",
    )

    sampled_negatives: int = Field(
        0,
        ge=0,
        description="0: the item-ID losses (MII's item-ID loss and the next-item loss) are "
        "softmaxes over the whole catalogue. k > 0: in training, both run over one candidate "
        "set per step, every item of the batch plus k items drawn uniformly from the "
        "catalogue; a drawn item outside the batch has its logit raised by log(N / k) (the "
        "log-Q correction: the softmax's denominator is then an unbiased estimate of the whole "
        "catalogue's). Evaluation and serving always rank the whole catalogue. Measured "
        "(bench/results/recipe.md, 'Speed'): k = 1024 takes 0.71x the default step on "
        "amazon-beauty and 0.62x on amazon-sports, and lands 0.002 lower in full-ranking "
        "NDCG@10 on Beauty (seed 1), reaching SASRec's level no sooner: off by default.",
    )

    readout: Literal["id", "item"] = Field(
        "id",
        description="With a next-item loss: what the next-item head reads at an item, its ID "
        "token's state ('id') or the states of all its field tokens, concatenated ('item', "
        "as FDSA concatenates its item and feature streams).",
    )
    id_stream: bool = Field(
        False,
        description="With a next-item loss: a second causal self-attention stack over the "
        "item IDs alone (SASRec's input: ID embedding and position; no side field ever "
        "enters), as deep and wide as DFSA, whose state at an item is concatenated with "
        "DFSA's before the next-item projection: FDSA's item stream beside its feature "
        "stream, inside MIIR (issue 9: DFSA over every field stays below attention over IDs "
        "alone). It reads the items as given, never MII's masks.",
    )
    loss_mean: Literal["sequence", "item"] = Field(
        "item",
        description="'item' (the weighted loss sums of the batch divided by its number of "
        "items: every item weighs the same, as SASRec's and RecBole's mean over all "
        "predictions of a batch) or 'sequence' (Eq. 13: per sequence, the weighted loss sums "
        "divided by its number of items, then the mean over sequences, so a 2-item window "
        "weighs as much as a 20-item one). Measured on amazon-beauty (bench/grids/beauty.yaml, "
        "three seeds each): 'item' gives test full-ranking NDCG@10 0.0429 against 0.0378, and is "
        "higher under the sampled and history-masked protocols too.",
    )
    fusion: Literal["dense", "item"] = Field(
        "dense",
        description="'dense' (DFSA, the paper: one token per field, n x F tokens, any field "
        "attends to any other) or 'item' (an item's F field embeddings, MII's hidden ones as "
        "the missing value, are averaged into one token before attention, as FDSA's feature "
        "stream fuses an item's features; attention runs over the n items, and each field's "
        "output state is its item's state plus a per-field linear map of it, zero at the "
        "start). Measured on amazon-beauty (bench/results/recipe.md): level with DFSA under "
        "full ranking after three times the epochs, below it sampled.",
    )
    side_output: bool = Field(
        False,
        description="Score candidates by their item ID embedding plus a learnt linear map "
        "(zero at the start) of the sum of their side-field embeddings (the input tables, "
        "every given field), in the item-ID loss, the next-item loss and at inference: rare "
        "items borrow the fields they share with frequent ones (issue 9: MIIR's deficit to "
        "SASRec lies on rare targets).",
    )

    @model_validator(mode="before")
    @classmethod
    def _bidirectional_drops_next_item(cls, data: object) -> object:
        # causal=false alone means the paper's bidirectional DFSA: the next-item loss (which
        # needs causal attention) is then off unless given
        if isinstance(data, dict) and "next_item_weight" not in data:
            causal = data.get("causal", True)
            if isinstance(causal, str):
                causal = causal.strip().lower() not in ("false", "0", "no", "off")
            if not causal:
                data = {**data, "next_item_weight": 0.0}
        # without a next-item loss there is no clean pass to run (and none to key a run by)
        if isinstance(data, dict) and "next_item_clean" not in data:
            weight = data.get("next_item_weight", cls.model_fields["next_item_weight"].default)
            if float(weight) == 0.0:
                data = {**data, "next_item_clean": False}
        return data

    @model_validator(mode="after")
    def _next_item_needs_causal(self) -> MIIRConfig:
        if self.next_item_weight > 0 and not self.causal:
            raise ValueError("next_item_weight > 0 needs causal=true (else item t sees t + 1)")
        if self.readout != "id" and self.next_item_weight == 0:
            raise ValueError(
                f"readout={self.readout!r} needs a next-item head (next_item_weight > 0)"
            )
        if self.next_item_fraction < 1 and self.next_item_weight == 0:
            raise ValueError("next_item_fraction < 1 needs a next-item loss (next_item_weight > 0)")
        if self.next_item_exclude_history and self.sampled_negatives > 0:
            raise ValueError(
                "next_item_exclude_history ranks the whole catalogue: it takes no sampled_negatives"
            )
        if self.next_item_exclude_history and self.next_item_weight == 0:
            raise ValueError(
                "next_item_exclude_history needs a next-item loss (next_item_weight > 0)"
            )
        if self.id_stream and self.next_item_weight == 0:
            raise ValueError("id_stream needs a next-item head (next_item_weight > 0)")
        if self.fusion == "item" and (self.attention == "sparse" or self.mask_missing):
            raise ValueError(
                "fusion='item' has one token per item: sparse attention (SFSA) and "
                "mask_missing (MIIR-M) act on field tokens and need fusion='dense'"
            )
        return self

    multi_loss: MultiLoss = Field(
        "per_value",
        description="A multi-valued field's loss (categories): 'per_value' (the default: the "
        "binary cross-entropy summed over the field's values and divided by the item's number "
        "of true values, so each true value gets the gradient budget a single-valued field's "
        "one true value gets; measured in bench/results/recipe.md: far better imputation, "
        "recommendation level) or 'mean' (Eq. 11, the paper's: the sum divided by the field's "
        "N_c values, so with hundreds of values its gradient is hundreds of times smaller "
        "than a single-valued field's softmax).",
    )
    field_weights: dict[str, float] = Field(
        default_factory=lambda: {ID_FIELD: 3.0},
        description="Loss weight per field: the item ID 3, every side field 1 (measured: "
        "bench/results/recipe.md); a given table replaces the whole default.",
    )

    def variant_name(self) -> str:
        name = "Sparse-MIIR" if self.attention == "sparse" else "MIIR"
        if self.objective == "rec":
            name += "-R"
        if self.finetune:
            name += "-F"
        if self.mask_missing:
            name += "-M"
        return name


#: a sampled softmax's candidate set is padded to a multiple of this many rows (the padding
#: never wins: its logits are -inf), so that steps share matrix shapes (oneDNN keeps a kernel
#: per shape: bench/results/recipe.md, "Memory")
CANDIDATE_BLOCK = 64


@dataclass
class IdSoftmax:
    """The item-ID softmax of one training step, shared by MII's item-ID loss and the
    next-item loss: over the whole catalogue, or (``sampled_negatives``) over candidates."""

    table: Tensor  # (C, e): the candidates' output rows (every item: C = N, in catalogue order)
    #: (N + 2,) item ID -> its row of ``table`` (None: the ID minus FIRST_VALUE_ID)
    column: Tensor | None = None
    bias: Tensor | None = None  # (C,): added to each candidate's logit (log-Q; -inf: padding)

    def loss(self, h: Tensor, ids: Tensor) -> Tensor:
        """(M, e) states, (M,) target item IDs -> (M,) float32 cross-entropy."""
        target = ids - FIRST_VALUE_ID if self.column is None else self.column[ids]
        return softmax_cross_entropy(h, self.table, target, bias=self.bias)


@dataclass
class SideInputs:
    """Side fields given per position instead of looked up in the item tables: how an item
    that is not in the catalogue (an inline record at inference, item id 1) brings its known
    fields. :meth:`MIIR.side_inputs` gives the table values of a batch; a caller replaces the
    positions of its inline items and passes the result to ``forward``, ``score`` or
    ``impute``."""

    present: Tensor  # (B, n, F_side) bool: the value exists (the model may see it)
    values: dict[str, Tensor]  # name -> (B, n) | (B, n, K) | (B, n, D), as in the tables

    def tail(self, n: int) -> SideInputs:
        """The last ``n`` positions (histories whose shared left padding was cut)."""
        start = self.present.shape[1] - n
        return SideInputs(
            self.present[:, start:], {k: v[:, start:] for k, v in self.values.items()}
        )

    def with_query(self) -> SideInputs:
        """One more position on the right with every side field missing (the query item)."""

        def pad(t: Tensor) -> Tensor:
            return torch.cat([t, torch.zeros_like(t[:, :1])], dim=1)

        return SideInputs(pad(self.present), {k: pad(v) for k, v in self.values.items()})


VARIANTS: dict[str, dict[str, object]] = {
    "miir": {},
    "miir-r": {"objective": "rec"},
    "miir-f": {"finetune": True},
    "miir-m": {"mask_missing": True},
    "miir-r-m": {"objective": "rec", "mask_missing": True},
    "sparse-miir": {"attention": "sparse"},
    "sparse-miir-r": {"attention": "sparse", "objective": "rec"},
}


class MIIR(SequenceModel):
    """The MIIR model over ``item_id`` plus the side fields of its catalogue.

    Item side information is held in buffers (the catalogue's observed tables, after any
    discard), so a checkpoint can score and impute without the artifact.
    """

    Config: ClassVar[type[MIIRConfig]] = MIIRConfig
    uses_side_info: ClassVar[bool] = True
    batch_mode: ClassVar = "packed"

    def __init__(self, config: MIIRConfig, catalogue: ItemCatalogue) -> None:
        super().__init__(config, catalogue)
        self.fields = list(catalogue.fields)  # side fields, in order
        self.n_fields = 1 + len(self.fields)
        e = config.embedding_size
        self.item_emb = nn.Embedding(self.n_items + FIRST_VALUE_ID, e)
        self.field_emb = nn.Embedding(self.n_fields, e)
        self.pos_emb = nn.Embedding(config.max_len, e)
        self.encoder = FieldEncoder(catalogue, e, config.multi_loss)
        block = PreLNBlock if config.norm_first else Block
        self.blocks = nn.ModuleList(
            [block(e, config.n_heads, config.dropout) for _ in range(config.n_layers)]
        )
        self.final_norm = nn.LayerNorm(e) if config.norm_first else None
        width = e * (self.n_fields if config.readout == "item" else 1)
        self.id_blocks: nn.ModuleList | None = None
        if config.id_stream:
            self.id_blocks = nn.ModuleList(
                [block(e, config.n_heads, config.dropout) for _ in range(config.n_layers)]
            )
            self.id_pos_emb = nn.Embedding(config.max_len, e)
            self.id_norm = nn.LayerNorm(e) if config.norm_first else None
            width += e
        self.next_proj = nn.Linear(width, e) if config.next_item_weight > 0 else None
        self.side_out = nn.Linear(e, e, bias=False) if config.side_output and self.fields else None
        # fusion='item': one token per item; each field's state is read back through its own map
        self.tokens_per_item = 1 if config.fusion == "item" else self.n_fields
        self.unfuse = (
            nn.Linear(e, self.n_fields * e, bias=False) if config.fusion == "item" else None
        )
        self.drop = Dropout(config.dropout)
        if config.attention == "sparse":
            self.register_buffer(
                "sparse_allowed", self._sparse_mask(config.max_len, self.n_fields), persistent=False
            )
        self.reset_parameters()

    # ------------------------------------------------------------------ description
    def display_name(self) -> str:
        return self.config.variant_name()

    def stages(self) -> tuple[str, ...]:
        """MIIR-F: MII training ('pretrain'), then fine-tuning with Eq. 14 ('main')."""
        return ("pretrain", "main") if self.config.finetune else ("main",)

    @property
    def objective(self) -> str:
        """The loss of the current stage: 'mii' (Eq. 13) or 'rec' (Eq. 14)."""
        if self.config.finetune and self.stage == "main":
            return "rec"
        return self.config.objective

    # ------------------------------------------------------------------ setup
    def reset_parameters(self) -> None:
        """Xavier-normal initialisation of every matrix (embeddings included), zero biases
        (:func:`~miir.models.layers.xavier_init`); with ``embedding_init='normal'``, every
        embedding table N(0, 0.02) instead."""
        xavier_init(self)
        if self.config.embedding_init == "normal":
            for m in self.modules():
                if isinstance(m, nn.Embedding):
                    nn.init.normal_(m.weight, std=0.02)
        if self.side_out is not None:
            nn.init.zeros_(self.side_out.weight)  # starts as the ID-only output table
        if self.unfuse is not None:
            nn.init.zeros_(self.unfuse.weight)  # every field starts reading its item's state

    def set_item_tables(self, present: dict[str, Tensor], values: dict[str, Tensor]) -> None:
        """Load the observed side information of every item (rows = item ids)."""
        self.encoder.features.load_tables(present, values)

    @staticmethod
    def _sparse_mask(n: int, n_fields: int) -> Tensor:
        item = torch.arange(n).repeat_interleave(n_fields)  # (T,)
        field = torch.arange(n_fields).repeat(n)  # (T,)
        return (item[:, None] == item[None, :]) | (field[:, None] == field[None, :])  # (T, T)

    def output_table(self) -> Tensor:
        """(N + 2, e): the embedding each item is scored by (rows 0 and 1: padding and the
        unknown item): its ID embedding, plus with ``side_output`` the linear map of the sum
        of its side-field embeddings (the catalogue's observed fields, missing ones as the
        missing-value embedding)."""
        table = self.item_emb.weight
        if self.side_out is None:
            return table
        items = torch.arange(table.shape[0], device=table.device)[None]  # (1, N + 2)
        side = self.encoder.embed(items)  # (1, N + 2, F_side, e): the observed fields
        extra = self.side_out(side[0].sum(dim=1))  # (N + 2, e)
        return table + extra * (items[0] >= FIRST_VALUE_ID)[:, None]

    def id_softmax(self, items: Tensor, negatives: Tensor | None = None) -> IdSoftmax:
        """The item-ID softmax of a training step on ``items`` (B, n): over the whole
        catalogue, or given ``negatives`` (k,) (drawn uniformly, 0-based: :attr:`Masked.negatives`)
        over the batch's items and the drawn ones, each drawn item outside the batch corrected
        by log(N / k), the inverse of its chance to be drawn."""
        table = self.output_table()[FIRST_VALUE_ID:]  # (N, e)
        if negatives is None:
            return IdSoftmax(table)
        n, k, device = table.shape[0], negatives.numel(), items.device
        in_batch = torch.zeros(n, dtype=torch.bool, device=device)
        in_batch[items[items >= FIRST_VALUE_ID] - FIRST_VALUE_ID] = True
        batch_items = in_batch.nonzero().squeeze(1)
        drawn = negatives[~in_batch[negatives]]
        size = batch_items.numel() + drawn.numel()
        pad = -size % CANDIDATE_BLOCK
        rows = torch.cat([batch_items, drawn, batch_items.new_zeros(pad)])
        bias = torch.zeros(size + pad, device=device)
        bias[batch_items.numel() : size] = math.log(n / k)
        bias[size:] = float("-inf")
        column = torch.full((n + FIRST_VALUE_ID,), -1, dtype=torch.long, device=device)
        column[rows[:size] + FIRST_VALUE_ID] = torch.arange(size, device=device)
        return IdSoftmax(table.index_select(0, rows), column, bias)

    # ------------------------------------------------------------------ forward
    def side_inputs(self, items: Tensor) -> SideInputs:
        """The side fields of (B, n) ``items`` from the item tables, as per-position inputs."""
        features = self.encoder.features
        return SideInputs(
            features.present(items)[..., 1:],  # (B, n, F_side)
            {f.name: features.values(f.name, items) for f in self.fields},
        )

    def present(self, items: Tensor, side: SideInputs | None = None) -> Tensor:
        """Which fields of each position exist in the data: (B, n, F) bool (ID: a real item);
        the side fields from ``side`` where given, else from the item tables."""
        if side is None:
            return self.encoder.present(items)
        return torch.cat([(items >= FIRST_VALUE_ID)[..., None], side.present], dim=-1)

    def embed(
        self,
        items: Tensor,
        visible: Tensor,
        positions: Tensor | None = None,
        side: SideInputs | None = None,
        offset: int = 0,
    ) -> Tensor:
        """Eq. 1-3: (B, n) item ids and (B, n, F) visibility -> (B, n, F, e) token embeddings.
        ``positions`` (B, n): position ids of packed rows (default: right-aligned columns,
        ending ``offset`` positions left of the last); ``side``: side values per position
        instead of the item tables' (inline items)."""
        ids = torch.where(visible[..., 0], items, torch.full_like(items, MISSING_ID))
        x = self.item_emb(ids)[:, :, None]  # (B, n, 1, e)
        if self.fields and side is None:
            x = torch.cat([x, self.encoder.embed(items, visible[..., 1:])], dim=2)  # (B, n, F, e)
        elif self.fields:
            codecs = self.encoder.codecs
            cols = [
                codecs[f.name].embed(side.values[f.name], visible[..., j])  # (B, n, e)
                for j, f in enumerate(self.fields, start=1)
            ]
            x = torch.cat([x, torch.stack(cols, dim=2)], dim=2)  # (B, n, F, e)
        if positions is not None:
            pos = self.pos_emb(positions)  # (B, n, e)
        else:
            end = self.config.max_len - offset
            pos = self.pos_emb.weight[end - items.shape[1] : end][None]  # (1, n, e): right-aligned
        return x + self.field_emb.weight[None, None] + pos[:, :, None]

    def attention_mask(
        self, items: Tensor, present: Tensor, windows: Tensor | None = None
    ) -> Tensor | None:
        """Boolean mask (True = may attend) broadcastable to (B, h, T, T), T = n * F (n with
        ``fusion='item'``). ``windows`` (B, n): the window of each slot of packed rows (see
        :func:`pack_windows`)."""
        B, n = items.shape
        k = self.tokens_per_item
        T = n * k
        key_ok = (items != 0)[..., None].expand(B, n, k)  # (B, n, k): padding never attended
        if self.config.mask_missing:
            # Eq. 15: side fields missing in the input (not hidden by MII masking) are not attended.
            side_missing = ~present.clone()
            side_missing[..., 0] = False
            key_ok = key_ok & ~side_missing
        key_ok = key_ok.reshape(B, 1, 1, T)  # (B, 1, 1, T)
        cfg = self.config
        if cfg.attention == "dense" and not (cfg.mask_missing or cfg.causal) and windows is None:
            return key_ok
        allowed = key_ok.expand(B, 1, T, T)
        if cfg.causal:
            item = torch.arange(n, device=items.device).repeat_interleave(k)  # (T,)
            allowed = allowed & (item[None, :] <= item[:, None])  # key item <= query item
        if windows is not None:
            # packed rows: a token attends only to the tokens of its own window
            win = windows.repeat_interleave(k, dim=1)  # (B, T)
            allowed = allowed & (win[:, None, :, None] == win[:, None, None, :])
        if self.config.attention == "sparse":
            offset = (self.config.max_len - n) * self.n_fields
            allowed = allowed & self.sparse_allowed[offset:, offset:]
        # Every token may attend to itself, so no row is empty (an empty row gives NaN).
        return allowed | torch.eye(T, dtype=torch.bool, device=items.device)

    def forward(
        self,
        items: Tensor,
        hidden: Tensor,
        packing: Packing | None = None,
        record: list[Tensor] | None = None,
        *,
        side: SideInputs | None = None,
        offset: int = 0,
        read: Tensor | None = None,
    ) -> Tensor:
        """(B, n) item ids and (B, n, F) hidden flags -> (B, n, F, e) output states (Eq. 4-7).
        With ``packing``, the rows are packed windows (see :func:`pack_windows`). With
        ``record``, each layer appends its attention weights (B, h, n * F, n * F) to it.
        With ``side``, the side fields of each position come from it, not the item tables.
        ``offset``: unpacked rows end that many positions left of the last position.

        ``read`` (B, n, F) bool, inference only (eval mode, no packing, no record): the tokens
        whose output the caller reads. Then the layers compute the real tokens only (padding
        positions are skipped, :meth:`~miir.models.layers.Block.compact`), the last layer only
        the tokens in ``read``; the other output states are zeros. The states read equal those
        of the full pass (up to float rounding: the matrix products see fewer rows).

        With ``fusion='item'`` the F embeddings of an item are averaged into one token, the
        layers run over the n item tokens (``record``: (B, h, n, n)), and field j's state is
        the item's state plus the field's linear map of it."""
        present = self.present(items, side)  # (B, n, F)
        positions = packing.positions if packing is not None else None
        x = self.embed(items, present & ~hidden, positions, side, offset)  # (B, n, F, e)
        if self.unfuse is not None:
            x = x.mean(dim=2, keepdim=True)  # (B, n, 1, e): one token per item
        x = self.drop(x)
        B, n, Fn, e = x.shape
        h = x.reshape(B, n * Fn, e)  # (B, T, e): Eq. 4, fields of each item stacked in order
        allowed = self.attention_mask(
            items, present, packing.windows if packing is not None else None
        )
        # additive form, built once for all layers: 0 where allowed, -inf elsewhere
        mask = torch.zeros(allowed.shape, dtype=h.dtype, device=h.device).masked_fill_(
            ~allowed, float("-inf")
        )
        if read is not None:
            if self.unfuse is None:
                return self._compact_pass(items, h, mask, read)
            # the items read, then only the fields read of them
            states = self._compact_pass(items, h, mask, read.any(dim=-1, keepdim=True))
            return self._unfused(states) * read[..., None]
        for block in self.blocks:
            h = block(h, mask, record)
        if self.final_norm is not None:
            h = self.final_norm(h)
        return self._unfused(h.view(B, n, Fn, e))

    def _unfused(self, h: Tensor) -> Tensor:
        """``fusion='item'``: (B, n, 1, e) item states -> (B, n, F, e) field states (zeros
        stay zeros); DFSA's (B, n, F, e) states as they are."""
        if self.unfuse is None:
            return h
        B, n, _, e = h.shape
        return h + self.unfuse(h).view(B, n, self.n_fields, e)

    def _compact_pass(self, items: Tensor, h: Tensor, mask: Tensor, read: Tensor) -> Tensor:
        """The layers of :meth:`forward` over the real tokens only (see its ``read``):
        (B, n) items, (B, T, e) embedded tokens, the additive mask and (B, n, F) ``read`` ->
        (B, n, F, e) states, zeros outside ``read`` and at padding."""
        if self.training:
            raise ValueError("the compact pass (read=...) is for inference: call eval() first")
        B, n = items.shape
        Fn, e = self.tokens_per_item, h.shape[-1]
        real = (items != 0)[..., None].expand(B, n, Fn).reshape(-1)  # (B * T,)
        index = real.nonzero().squeeze(1)  # (M,) flat slots of the real tokens
        keep = read.reshape(-1)[index].nonzero().squeeze(1)  # (K,) rows of the M to output
        x = h.reshape(B * n * Fn, e)[index]  # (M, e)
        # zero rows up to one of a few sizes, so that the per-token maps' shapes repeat
        x = F.pad(x, (0, 0, 0, padded_rows(len(x)) - len(x))) if self.blocks else x[keep]
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x = block.compact(x, index, (B, n * Fn), mask, keep if last else None)
        if self.final_norm is not None:
            x = self.final_norm(x)
        out = x.new_zeros(B * n * Fn, e)
        out[index[keep]] = x
        return out.view(B, n, Fn, e)

    def _reads(self, items: Tensor, position: int, tokens: str) -> Tensor | None:
        """The ``read`` mask of a scoring pass: the ID token (``tokens='id'``) or every field
        (``'item'``) at ``position`` of each row; None (the full pass) while tracing for
        export, whose graph keeps static shapes."""
        if torch.jit.is_tracing() or self.training:
            return None
        read = torch.zeros(*items.shape, self.n_fields, dtype=torch.bool, device=items.device)
        if tokens == "id":
            read[:, position, 0] = True
        else:
            read[:, position] = True
        return read

    # ------------------------------------------------------------------ losses (Eq. 11-14)
    def field_losses(
        self,
        items: Tensor,
        out: Tensor,
        targets: Tensor,
        owner: Tensor,
        n_seqs: int,
        skip: frozenset[str] = frozenset(),
        softmax: IdSoftmax | None = None,
    ) -> dict[str, Tensor]:
        """Per-sequence loss sums of each field on the supervised positions: name -> (S,).
        ``owner`` (B, n): the sequence (0 .. S - 1) each position belongs to. The fields in
        ``skip`` (weighted 0) are not computed: zeros. ``softmax``: the step's item-ID
        softmax (default :meth:`id_softmax` over the whole catalogue)."""
        S = n_seqs
        losses: dict[str, Tensor] = {}
        sel = targets[..., 0]  # (B, n)
        if sel.any() and ID_FIELD not in skip:
            b, t, w = gather_positions(sel)  # (M,) each, M a multiple of SELECT_BLOCK
            if softmax is None:
                softmax = self.id_softmax(items)
            ce = softmax.loss(out[b, t, 0], items[b, t])
            losses[ID_FIELD] = torch.zeros(S, device=items.device).index_add(0, owner[b, t], ce * w)
        else:
            losses[ID_FIELD] = out.new_zeros(S).float()
        for j, f in enumerate(self.fields, start=1):
            sel = targets[..., j]  # (B, n)
            if not sel.any() or f.name in skip:
                losses[f.name] = out.new_zeros(S).float()
                continue
            b, t, w = gather_positions(sel)
            per = self.encoder.loss(f.name, out[b, t, j], items[b, t])  # (M,): Eq. 10-12
            losses[f.name] = torch.zeros(S, device=items.device).index_add(0, owner[b, t], per * w)
        return losses

    def draw_mask(
        self,
        items: Tensor,
        generator: torch.Generator | None = None,
        packing: Packing | None = None,
    ) -> Masked:
        """The masks of one training step for the current stage's objective (``packing``: the
        windows of packed rows, for ``last_item_prob``)."""
        present = self.present(items)  # (B, n, F)
        cfg = self.config
        if self.objective == "rec":
            masked = rec_mask(present, cfg.mask_prob, generator=generator)
            masked.next_items = sample_items(items, cfg.next_item_fraction, generator)
            masked.negatives = sample_negatives(
                self.n_items, cfg.sampled_negatives, generator, items.device
            )
            return masked
        masked = mii_mask(present, cfg.mask_prob, cfg.item_mask_prob, generator=generator)
        if cfg.last_item_prob > 0:
            windows = packing.windows if packing is not None else None
            batch = Batch(items, packing)
            masked = hide_last_items(
                masked,
                present,
                last_of_sequence(items, windows),
                batch.owner(),
                batch.n_seqs,
                cfg.last_item_prob,
                clean=cfg.last_item_clean,
                generator=generator,
            )
        masked.next_items = sample_items(items, cfg.next_item_fraction, generator)
        masked.negatives = sample_negatives(
            self.n_items, cfg.sampled_negatives, generator, items.device
        )
        return masked

    def loss(
        self, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss of the current stage on ``batch``, masks drawn with ``generator``."""
        masked = self.draw_mask(batch.items, generator, batch.packing)
        return self.masked_loss(batch.items, masked, batch.packing)

    def masked_loss(
        self, items: Tensor, masked: Masked, packing: Packing | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 13 (or Eq. 14 when only ID targets are set): returns the loss and per-field means.
        Per sequence (a row, or a window of packed rows), the masked-field losses are summed
        and divided by the number of items; the loss is the mean over sequences (with
        ``loss_mean='item'``: the sums over the batch divided by its number of items)."""
        batch = Batch(items, packing)
        owner, n_seqs = batch.owner(), batch.n_seqs
        weights = {**self.config.field_weights}
        names = [ID_FIELD, *(f.name for f in self.fields)]
        clean = self.next_proj is not None and self.config.next_item_clean
        # once per step, shared by both ID losses
        softmax = self.id_softmax(items, masked.negatives)
        if clean and all(weights.get(name, 1.0) == 0 for name in names):
            # every MII loss weighted 0: the masked pass would only be logged (as zeros)
            per_field = {name: torch.zeros(n_seqs, device=items.device) for name in names}
        else:
            out = self(items, masked.hidden, packing)  # (B, n, F, e)
            skip = frozenset(name for name in names if weights.get(name, 1.0) == 0)
            per_field = self.field_losses(items, out, masked.targets, owner, n_seqs, skip, softmax)
        n_items = batch.items_per_sequence()  # (S,)
        if self.next_proj is not None:  # the scoring head, trained in every stage
            if clean:
                out = self(items, torch.zeros_like(masked.hidden), packing)
            per_field["next_item"] = self.next_item_losses(
                items, out, batch, softmax, masked.next_items
            )
            weights["next_item"] = self.config.next_item_weight
        by_item = self.config.loss_mean == "item"

        def mean(v: Tensor) -> Tensor:  # (S,) per-sequence sums -> the batch's loss
            return v.sum() / n_items.sum() if by_item else (v / n_items).mean()

        total = mean(sum(weights.get(name, 1.0) * v for name, v in per_field.items()))
        # the parts under the same mean: the loss is their weighted sum
        return total, {name: mean(v).detach() for name, v in per_field.items()}

    def next_item_losses(
        self,
        items: Tensor,
        out: Tensor,
        batch: Batch,
        softmax: IdSoftmax | None = None,
        sample: Tensor | None = None,
    ) -> Tensor:
        """Per-sequence sums of the next-item loss (causal models): the next-item head's state
        (``readout``) at every item with a successor in its window predicts that successor,
        whatever the masks hid.
        ``softmax``: the step's item-ID softmax (default :meth:`id_softmax` over the whole
        catalogue). ``sample`` (B, n) bool:
        only these items predict their successor, each weighted 1 / ``next_item_fraction``
        (:attr:`Masked.next_items`; None: every item, weight 1)."""
        owner = batch.owner()  # (B, n)
        pair = (items[:, :-1] >= FIRST_VALUE_ID) & (items[:, 1:] >= FIRST_VALUE_ID)  # (B, n - 1)
        pair &= owner[:, :-1] == owner[:, 1:]  # packed rows: the same window
        scale = 1.0
        if sample is not None:
            pair &= sample[:, :-1]
            scale = 1.0 / self.config.next_item_fraction
        losses = out.new_zeros(batch.n_seqs).float()
        if pair.any():
            b, t, w = gather_positions(pair)  # t: the item; t + 1: its successor
            ids = self.id_states(items, batch.packing) if self.id_blocks is not None else None
            h = self._next_state(out[b, t], ids[b, t] if ids is not None else None)  # (M, e)
            if softmax is None:
                softmax = self.id_softmax(items)
            if self.config.next_item_exclude_history:  # never sampled (the config's check)
                target = items[b, t + 1] - FIRST_VALUE_ID  # (M,)
                logits = (h @ softmax.table.T).float()  # (M, N)
                logits = self._without_history(logits, items, owner, b, t, target)
                ce = F.cross_entropy(logits, target, reduction="none")
            else:
                ce = softmax.loss(h, items[b, t + 1])
            losses = losses.index_add(0, owner[b, t], ce * (w * scale))
        return losses

    @staticmethod
    def _without_history(
        logits: Tensor, items: Tensor, owner: Tensor, b: Tensor, t: Tensor, target: Tensor
    ) -> Tensor:
        """``next_item_exclude_history``: (M, N) next-item logits of the items at (b, t) ->
        the same with -inf at every item of the same window at or before t (its history as the
        predicting position sees it), except the target."""
        n = items.shape[1]
        history = items[b] - FIRST_VALUE_ID  # (M, n) catalogue columns of each row's window
        earlier = torch.arange(n, device=items.device)[None, :] <= t[:, None]  # (M, n)
        drop = earlier & (owner[b] == owner[b, t][:, None]) & (history >= 0)
        drop &= history != target[:, None]
        rows, cols = drop.nonzero(as_tuple=True)
        return logits.index_put((rows, history[rows, cols]), logits.new_tensor(float("-inf")))

    def _next_state(self, tokens: Tensor, ids: Tensor | None = None) -> Tensor:
        """(..., F, e) output states of items -> (..., e) next-item query states: the
        projected ID token state, or (``readout='item'``) all field states, concatenated;
        with ``id_stream``, the ID stream's (..., e) states ``ids`` concatenated last."""
        assert self.next_proj is not None
        h = tokens.flatten(-2) if self.config.readout == "item" else tokens[..., 0, :]
        if self.id_blocks is not None:
            assert ids is not None, "id_stream: the ID stream's states are needed"
            h = torch.cat([h, ids], dim=-1)
        return self.next_proj(h)

    def id_states(self, items: Tensor, packing: Packing | None = None, offset: int = 0) -> Tensor:
        """``id_stream``: (B, n) item ids -> (B, n, e) states of the causal attention over the
        IDs alone (padding and, in packed rows, other windows never attended); positions as
        DFSA's (``packing``'s, or right-aligned ending ``offset`` left of the last)."""
        assert self.id_blocks is not None
        n = items.shape[1]
        if packing is not None:
            pos = self.id_pos_emb(packing.positions)  # (B, n, e)
        else:
            end = self.config.max_len - offset
            pos = self.id_pos_emb.weight[end - n : end][None]  # (1, n, e)
        x = self.drop(self.item_emb(items) + pos)  # (B, n, e)
        t = torch.arange(n, device=items.device)
        allowed = (items != 0)[:, None, None, :] & (t[None, :] <= t[:, None])  # (B, 1, n, n)
        if packing is not None:
            win = packing.windows
            allowed = allowed & (win[:, None, :, None] == win[:, None, None, :])
        allowed = allowed | torch.eye(n, dtype=torch.bool, device=items.device)
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill_(
            ~allowed, float("-inf")
        )
        for block in self.id_blocks:
            x = block(x, mask)
        return self.id_norm(x) if self.id_norm is not None else x

    # ------------------------------------------------------------------ inference
    def query_states(
        self,
        history: Tensor,
        record: list[Tensor] | None = None,
        *,
        side: SideInputs | None = None,
        query_only: bool = False,
    ) -> Tensor:
        """Append the all-missing query item to right-aligned histories and run DFSA.

        history: (B, n - 1) item ids (0 = padding). Returns (B, n, F, e) states; the query
        item is the last position. The query's item id is 1 (unknown): nothing about the
        target is ever looked up. ``record``: see :meth:`forward`. ``side``: the history's
        side fields per position (inline items: id 1, their known fields here).
        ``query_only``: only the query item's ID state is computed (the others are zeros).
        """
        trimmed = trim_left_padding(history)
        if side is not None:
            side = side.tail(trimmed.shape[1]).with_query()
        items, hidden = append_query(trimmed, self.n_fields)  # (B, n), (B, n, F)
        read = self._reads(items, -1, "id") if query_only and record is None else None
        return self(items, hidden, None, record, side=side, read=read)

    def score(
        self, history: Tensor, candidates: Tensor | None = None, *, side: SideInputs | None = None
    ) -> Tensor:
        """Next-item scores. Full catalogue: (B, N + 2) with ids 0 and 1 at -inf; with
        ``candidates`` (B, C) item ids: (B, C). ``side``: see :meth:`query_states`."""
        return self._rank(self._scoring_state(history, side=side), candidates)

    def _scoring_state(
        self, history: Tensor, record: list[Tensor] | None = None, *, side: SideInputs | None = None
    ) -> Tensor:
        """(B, e): the appended query item's ID state, or (``next_item_weight`` > 0) the
        next-item head on the last history item (see ``readout``; one pass either way)."""
        if self.next_proj is None:
            return self.query_states(history, record, side=side, query_only=True)[:, -1, 0]
        # the history sits where it sits in training, one position left of the end: a
        # window's last position always holds its last item, which has no successor, so the
        # last position embedding never meets the next-item loss
        trimmed = trim_left_padding(history)[:, -(self.config.max_len - 1) :]
        if side is not None:
            side = side.tail(trimmed.shape[1])
        hidden = torch.zeros(*trimmed.shape, self.n_fields, dtype=torch.bool, device=history.device)
        read = self._reads(trimmed, -1, self.config.readout) if record is None else None
        out = self(trimmed, hidden, None, record, side=side, offset=1, read=read)
        ids = self.id_states(trimmed, offset=1)[:, -1] if self.id_blocks is not None else None
        return self._next_state(out[:, -1], ids)

    @torch.no_grad()
    def score_and_impute(
        self, history: Tensor, *, side: SideInputs | None = None, wanted: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`score` and :meth:`impute` of ``[history, all-missing query item]`` from one
        pass: (B, N + 2) scores and name -> (B, L + 1, ...) predictions (L = the history's
        width, at most ``max_len - 1``). The two passes it replaces see the same tokens: the
        bidirectional query scoring pass *is* the imputation pass; with causal attention the
        history tokens cannot see the appended query, and the history sits one position left
        of the end, as in the scoring pass (``offset=1``), so the last history item's state is
        the one :meth:`score` projects. Sparse attention aligns its pattern to the row's
        width, so there the two passes differ and this runs them both.

        ``wanted`` (B, L + 1, F - 1) bool: the side fields whose predictions the caller reads
        (a server: the missing ones). Then only those are computed, in a pass over the real
        tokens (see :meth:`forward`'s ``read``); the predictions elsewhere are zeros (not
        under sparse attention, whose two passes are full ones)."""
        if history.shape[1] > self.config.max_len - 1:
            raise ValueError(
                f"history of {history.shape[1]} items; at most {self.config.max_len - 1}"
            )
        items, hidden = append_query(history, self.n_fields)  # the query: every field hidden
        with_query = None if side is None else side.with_query()
        if self.config.attention == "sparse":
            return self.score(history, side=side), self.impute(items, hidden, side=with_query)
        read = None
        if wanted is not None:
            if self.next_proj is None:
                read = self._reads(items, -1, "id")
            else:
                read = self._reads(items, -2, self.config.readout)
            if read is not None:
                read[..., 1:] |= wanted
        out = self(items, hidden, side=with_query, read=read)  # (B, L + 1, F, e)
        if self.next_proj is None:
            h = out[:, -1, 0]  # (B, e): the query item's ID state
        else:  # the last history item's state, its ID stream over the history alone
            ids = self.id_states(history, offset=1)[:, -1] if self.id_blocks is not None else None
            h = self._next_state(out[:, -2], ids)  # (B, e)
        preds = {}
        for j, f in enumerate(self.fields, start=1):
            codec = self.encoder.codecs[f.name]
            if read is None:
                preds[f.name] = codec.predict(out[..., j, :])
                continue
            at = wanted[..., j - 1]  # (B, L + 1)
            got = codec.predict(out[..., j, :][at])  # (W, V + 2) | (W, D)
            full = got.new_zeros(*at.shape, got.shape[-1])
            full[at] = got
            preds[f.name] = full
        return self._rank(h, None), preds

    def score_with_attention(
        self, history: Tensor, candidates: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The scores of :meth:`score` and the attention weights of the very pass that
        computed them: (L, B, h, T, T) with T = n * F tokens, n = the history's width once
        the columns that are padding in every row are cut, plus the query item (the last
        position) unless the model scores from the last history item (``next_item_weight``
        > 0: no query item); token t is field t % F of position t // F (fields: the item ID,
        then the side fields in catalogue order); with ``fusion='item'``, T = n and token t is
        position t. Attention is computed explicitly in this pass (the fused kernel keeps its
        weights to itself); the scores equal :meth:`score`'s."""
        record: list[Tensor] = []
        h = self._scoring_state(history, record)  # (B, e)
        return self._rank(h, candidates), torch.stack(record)  # (L, B, h, T, T)

    def attention(self, history: Tensor) -> Tensor:
        """The :class:`~miir.models.base.AttentionMaps` capability: the attention weights
        (L, B, h, T, T) of the scoring pass (see :meth:`score_with_attention`)."""
        return self.score_with_attention(history)[1]

    def _rank(self, h: Tensor, candidates: Tensor | None) -> Tensor:
        """(B, e) query states -> scores over the catalogue or over ``candidates``."""
        table = self.output_table()  # (N + 2, e)
        if candidates is not None:
            return torch.einsum("be,bce->bc", h, table[candidates]).float()  # (B, C)
        scores = (h @ table.T).float()  # (B, N + 2)
        scores[:, :FIRST_VALUE_ID] = -math.inf
        return scores

    @torch.no_grad()
    def impute(
        self, items: Tensor, hidden: Tensor | None = None, *, side: SideInputs | None = None
    ) -> dict[str, Tensor]:
        """Predict every side field at every position (the :class:`~miir.models.base.Imputer`
        capability): name -> predictions.

        Categorical and numeric: (B, n, V + 2) probabilities over value ids (softmax);
        multi-valued: (B, n, V + 2) independent probabilities; ids 0 and 1 at 0. Text:
        (B, n, D) vectors. Fields hidden by ``hidden`` (or missing in the data) are what the
        caller will want to read. ``side``: side fields per position (:class:`SideInputs`).
        """
        if hidden is None:
            hidden = torch.zeros(*items.shape, self.n_fields, dtype=torch.bool, device=items.device)
        out = self(items, hidden, side=side)  # (B, n, F, e)
        return {
            f.name: self.encoder.codecs[f.name].predict(out[..., j, :])
            for j, f in enumerate(self.fields, start=1)
        }
