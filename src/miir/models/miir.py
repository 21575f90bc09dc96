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
and items are ranked by the ID head at that position.

Choices where the paper is silent (each is an option of :class:`MIIRConfig`):

- **Left padding.** Sequences are right-aligned, so the appended query item always sits at the
  last position and has the same position embedding in training and at inference. Positions
  count from the right, so columns that are padding in every row of a batch can be cut
  (:func:`trim_left_padding`, used at inference), and short training windows can share a row
  (:func:`pack_windows`: each window attends only to itself and keeps its positions; the loss
  is computed per window, so it is the loss of the padded batch).
- **The query pattern in training.** Per-field masking with p = 0.5 hides all F fields of an
  item with probability p**F (1/16 for four fields): that is how often plain MII meets the
  inference query. ``item_mask_prob`` adds whole-item masking on top (every field of a
  position hidden, which is exactly what the appended query looks like). Default 0.2; the
  authors' code has none (0.0). Measured on amazon-beauty (bench/results/options.md, 30
  epochs, one seed each): 0.2 gives test full-ranking NDCG@10 0.0293 against 0.0239 with 0.0,
  and sampled NDCG@10 0.3598 against 0.3376 (paired t-test over users, p < 1e-12).
- **Missing values** are learned vectors: row 1 of each categorical table (id 1 is "missing" in
  every vocabulary), and one learned vector per text field (the paper used BERT's encoding of
  "[CLS][SEP]"). A field hidden by MII and a field missing in the data look the same to the
  model; only the loss tells them apart (really missing fields are never supervised).
- **Numeric fields** (not in the paper) are embedded and predicted as their quantile bucket.
- **Loss normalisation** follows Eq. 13: per sequence, the sum of masked-field losses divided by
  the number of items in it, then the batch mean. Per-field weights default to 1.
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
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from miir.data.schema import FIRST_VALUE_ID, MISSING_ID, FieldKind
from miir.models.layers import Block, Dropout

ID_FIELD = "item_id"


class MIIRConfig(BaseModel):
    """Hyper-parameters of MIIR and its variants (paper defaults). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_size: int = Field(64, ge=8, description="e: the size of every field embedding.")
    n_heads: int = Field(4, ge=1, description="Attention heads.")
    n_layers: int = Field(3, ge=1, description="Transformer layers L.")
    dropout: float = Field(
        0.5, ge=0.0, lt=1.0, description="Dropout in DFSA and on the input embeddings."
    )
    max_len: int = Field(
        20, ge=2, description="Items per sequence window, the appended query included."
    )
    mask_prob: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="p: probability of masking a present field (MII) or an item (Eq. 14).",
    )
    item_mask_prob: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Extra whole-item masking in MII training, so that training meets the "
        "all-missing query item (see the module docstring; the authors' code: 0.0).",
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
    fields: tuple[str, ...] | None = Field(
        None, description="Side fields to use (default: all of the artifact's)."
    )
    field_weights: dict[str, float] = Field(
        default_factory=dict, description="Loss weight per field (default 1)."
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


VARIANTS: dict[str, dict[str, object]] = {
    "miir": {},
    "miir-r": {"objective": "rec"},
    "miir-f": {"finetune": True},
    "miir-m": {"mask_missing": True},
    "miir-r-m": {"objective": "rec", "mask_missing": True},
    "sparse-miir": {"attention": "sparse"},
    "sparse-miir-r": {"attention": "sparse", "objective": "rec"},
}


def trim_left_padding(items: Tensor) -> Tensor:
    """(B, n) right-aligned rows -> (B, m): without the leading columns that are padding (0) in
    every row. Positions count from the right, so the model computes the same thing on fewer
    tokens. A batch of only padding keeps no column."""
    filled = (items != 0).any(0)  # (n,)
    if bool(filled[0]):
        return items
    first = int(filled.to(torch.int8).argmax()) if bool(filled.any()) else items.shape[1]
    return items[:, first:]


@dataclass
class Packing:
    """Where the windows of a batch sit once :func:`pack_windows` has packed them into shared
    rows: each slot's position id and window, and where it came from."""

    positions: Tensor  # (R, n) position id of each slot (0 in empty slots)
    windows: Tensor  # (R, n) index of the window a slot holds, -1 in empty slots
    source: Tensor  # (R, n) flat index into the (B, n) input of the slot's item, -1 if empty
    n_windows: int

    def move(self, values: Tensor) -> Tensor:
        """Per-position values of the unpacked (B, n, ...) batch (masks, for instance) moved
        to their packed slots: (R, n, ...), zero (False) in empty slots."""
        out = values.new_zeros((*self.source.shape, *values.shape[2:]))
        filled = self.source >= 0
        out[filled] = values.reshape(-1, *values.shape[2:])[self.source[filled]]
        return out


def pack_windows(items: Tensor, max_len: int | None = None) -> tuple[Tensor, Packing]:
    """Pack the right-aligned windows of a batch into as few rows of the same width as
    first-fit decreasing finds: (B, n) item ids -> (R, n) item ids and their :class:`Packing`.

    A window keeps its items in order and their position ids (counted from the right, as in
    the unpacked batch, over ``max_len`` positions, default n); :meth:`MIIR.forward` lets a
    slot attend only to slots of its own window, and :meth:`MIIR.loss` normalises per window,
    so a packed batch has the loss of the unpacked one on about a third of the tokens
    (amazon-beauty's windows hold 6.5 items out of 20)."""
    B, n = items.shape
    max_len = max_len or n
    lengths = (items != 0).sum(1).tolist()
    free: list[int] = []  # free slots left in each row
    row_of, col_of = [0] * B, [0] * B
    for w in sorted(range(B), key=lambda i: -lengths[i]):
        length = lengths[w]
        r = next((r for r, f in enumerate(free) if f >= length), len(free))
        if r == len(free):
            free.append(n)
        row_of[w], col_of[w] = r, n - free[r]
        free[r] -= length
    R = max(len(free), 1)
    lens = torch.tensor(lengths, dtype=torch.long)
    w_of_item = torch.repeat_interleave(torch.arange(B), lens)  # (I,) window of each item
    starts = torch.cumsum(lens, 0) - lens
    i_in_w = torch.arange(len(w_of_item)) - starts[w_of_item]  # (I,) index within its window
    rows = torch.tensor(row_of, dtype=torch.long)[w_of_item]
    cols = torch.tensor(col_of, dtype=torch.long)[w_of_item] + i_in_w
    L = lens[w_of_item]
    slot = rows * n + cols  # (I,) flat slot in the (R, n) output
    source = torch.full((R * n,), -1, dtype=torch.long)
    source[slot] = w_of_item * n + (n - L + i_in_w)
    positions = torch.zeros(R * n, dtype=torch.long)
    positions[slot] = max_len - L + i_in_w
    windows = torch.full((R * n,), -1, dtype=torch.long)
    windows[slot] = w_of_item
    packed = torch.zeros(R * n, dtype=items.dtype)
    packed[slot] = items.reshape(-1)[source[slot]].cpu()
    dev = items.device
    return packed.view(R, n).to(dev), Packing(
        positions=positions.view(R, n).to(dev),
        windows=windows.view(R, n).to(dev),
        source=source.view(R, n).to(dev),
        n_windows=B,
    )


@dataclass(frozen=True)
class FieldInfo:
    """What the model needs to know of one field (the checkpoint stores these)."""

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


@dataclass
class Masked:
    """The output of a masking function: what the model may not see, and what it must predict."""

    hidden: Tensor  # (B, n, F) bool: fields replaced by their missing value
    targets: Tensor  # (B, n, F) bool: fields supervised (hidden and present in the data)


class MIIR(nn.Module):
    """The MIIR model over ``fields[0] = item_id`` plus the side fields.

    Item side information is held in buffers (the artifact's observed tables, after any
    discard), so a checkpoint can score and impute without the artifact.
    """

    def __init__(self, config: MIIRConfig, fields: list[FieldInfo], n_items: int) -> None:
        super().__init__()
        self.config = config
        self.fields = fields  # side fields, in order
        self.n_items = n_items
        self.n_fields = 1 + len(fields)
        e = config.embedding_size
        n_rows = n_items + FIRST_VALUE_ID
        self.item_emb = nn.Embedding(n_rows, e)
        self.field_emb = nn.Embedding(self.n_fields, e)
        self.pos_emb = nn.Embedding(config.max_len, e)
        self.tables = nn.ModuleDict()
        self.text_in = nn.ModuleDict()
        self.text_out = nn.ModuleDict()
        self.text_missing = nn.ParameterDict()
        for f in fields:
            if f.kind == FieldKind.TEXT:
                self.text_in[f.name] = nn.Linear(f.dim, e)
                self.text_out[f.name] = nn.Linear(e, f.dim)
                self.text_missing[f.name] = nn.Parameter(torch.zeros(e))
                self.register_buffer(f"{f.name}__values", torch.zeros(n_rows, f.dim))
            elif f.kind == FieldKind.MULTI_CATEGORICAL:
                self.tables[f.name] = nn.Embedding(f.cardinality, e)
                self.register_buffer(
                    f"{f.name}__values", torch.zeros(n_rows, f.width, dtype=torch.long)
                )
            else:  # categorical, numeric (buckets)
                self.tables[f.name] = nn.Embedding(f.cardinality, e)
                self.register_buffer(f"{f.name}__values", torch.zeros(n_rows, dtype=torch.long))
            self.register_buffer(f"{f.name}__present", torch.zeros(n_rows, dtype=torch.bool))
        self.blocks = nn.ModuleList(
            [Block(e, config.n_heads, config.dropout) for _ in range(config.n_layers)]
        )
        self.drop = Dropout(config.dropout)
        if config.attention == "sparse":
            self.register_buffer(
                "sparse_allowed", self._sparse_mask(config.max_len, self.n_fields), persistent=False
            )
        self.reset_parameters()

    # ------------------------------------------------------------------ setup
    def reset_parameters(self) -> None:
        """Xavier-normal initialisation of every matrix (embeddings included), zero biases."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.xavier_normal_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.startswith("text_missing"):
                nn.init.normal_(p, std=0.02)

    def set_item_tables(self, present: dict[str, Tensor], values: dict[str, Tensor]) -> None:
        """Load the observed side information of every item (rows = item ids)."""
        for f in self.fields:
            getattr(self, f"{f.name}__present").copy_(present[f.name])
            getattr(self, f"{f.name}__values").copy_(values[f.name])

    @staticmethod
    def _sparse_mask(n: int, n_fields: int) -> Tensor:
        item = torch.arange(n).repeat_interleave(n_fields)  # (T,)
        field = torch.arange(n_fields).repeat(n)  # (T,)
        return (item[:, None] == item[None, :]) | (field[:, None] == field[None, :])  # (T, T)

    # ------------------------------------------------------------------ forward
    def present(self, items: Tensor) -> Tensor:
        """Which fields of each position exist in the data: (B, n, F) bool (ID: a real item)."""
        cols = [items >= FIRST_VALUE_ID] + [
            getattr(self, f"{f.name}__present")[items] for f in self.fields
        ]
        return torch.stack(cols, dim=-1)  # (B, n, F)

    def embed(self, items: Tensor, visible: Tensor, positions: Tensor | None = None) -> Tensor:
        """Eq. 1-3: (B, n) item ids and (B, n, F) visibility -> (B, n, F, e) token embeddings.
        ``positions`` (B, n): position ids of packed rows (default: right-aligned columns)."""
        ids = torch.where(visible[..., 0], items, torch.full_like(items, MISSING_ID))
        cols = [self.item_emb(ids)]  # (B, n, e)
        for j, f in enumerate(self.fields, start=1):
            vis = visible[..., j]  # (B, n)
            if f.kind == FieldKind.TEXT:
                vec = self.text_in[f.name](getattr(self, f"{f.name}__values")[items])  # (B, n, e)
                cols.append(torch.where(vis[..., None], vec, self.text_missing[f.name]))
            elif f.kind == FieldKind.MULTI_CATEGORICAL:
                vals = getattr(self, f"{f.name}__values")[items]  # (B, n, K)
                table = self.tables[f.name]
                summed = (table(vals) * (vals >= FIRST_VALUE_ID)[..., None]).sum(-2)  # (B, n, e)
                cols.append(torch.where(vis[..., None], summed, table.weight[MISSING_ID]))
            else:
                vals = getattr(self, f"{f.name}__values")[items]  # (B, n)
                cols.append(
                    self.tables[f.name](torch.where(vis, vals, torch.full_like(vals, MISSING_ID)))
                )
        x = torch.stack(cols, dim=2)  # (B, n, F, e)
        if positions is not None:
            pos = self.pos_emb(positions)  # (B, n, e)
        else:
            n = items.shape[1]
            pos = self.pos_emb.weight[self.config.max_len - n :][None]  # (1, n, e): right-aligned
        return x + self.field_emb.weight[None, None] + pos[:, :, None]

    def attention_mask(
        self, items: Tensor, present: Tensor, windows: Tensor | None = None
    ) -> Tensor | None:
        """Boolean mask (True = may attend) broadcastable to (B, h, T, T), T = n * F.
        ``windows`` (B, n): the window of each slot of packed rows (see :func:`pack_windows`)."""
        B, n = items.shape
        T = n * self.n_fields
        key_ok = (items != 0)[..., None].expand(
            B, n, self.n_fields
        )  # (B, n, F): padding never attended
        if self.config.mask_missing:
            # Eq. 15: side fields missing in the input (not hidden by MII masking) are not attended.
            side_missing = ~present.clone()
            side_missing[..., 0] = False
            key_ok = key_ok & ~side_missing
        key_ok = key_ok.reshape(B, 1, 1, T)  # (B, 1, 1, T)
        if self.config.attention == "dense" and not self.config.mask_missing and windows is None:
            return key_ok
        allowed = key_ok.expand(B, 1, T, T)
        if windows is not None:
            # packed rows: a token attends only to the tokens of its own window
            win = windows.repeat_interleave(self.n_fields, dim=1)  # (B, T)
            allowed = allowed & (win[:, None, :, None] == win[:, None, None, :])
        if self.config.attention == "sparse":
            offset = (self.config.max_len - n) * self.n_fields
            allowed = allowed & self.sparse_allowed[offset:, offset:]
        # Every token may attend to itself, so no row is empty (an empty row gives NaN).
        return allowed | torch.eye(T, dtype=torch.bool, device=items.device)

    def forward(self, items: Tensor, hidden: Tensor, packing: Packing | None = None) -> Tensor:
        """(B, n) item ids and (B, n, F) hidden flags -> (B, n, F, e) output states (Eq. 4-7).
        With ``packing``, the rows are packed windows (see :func:`pack_windows`)."""
        present = self.present(items)  # (B, n, F)
        positions = packing.positions if packing is not None else None
        x = self.drop(self.embed(items, present & ~hidden, positions))  # (B, n, F, e)
        B, n, Fn, e = x.shape
        h = x.reshape(B, n * Fn, e)  # (B, T, e): Eq. 4, fields of each item stacked in order
        allowed = self.attention_mask(
            items, present, packing.windows if packing is not None else None
        )
        # additive form, built once for all layers: 0 where allowed, -inf elsewhere
        mask = torch.zeros(allowed.shape, dtype=h.dtype, device=h.device).masked_fill_(
            ~allowed, float("-inf")
        )
        for block in self.blocks:
            h = block(h, mask)
        return h.view(B, n, Fn, e)

    # ------------------------------------------------------------------ losses (Eq. 11-14)
    def field_losses(
        self, items: Tensor, out: Tensor, targets: Tensor, owner: Tensor, n_seqs: int
    ) -> dict[str, Tensor]:
        """Per-sequence loss sums of each field on the supervised positions: name -> (S,).
        ``owner`` (B, n): the sequence (0 .. S - 1) each position belongs to."""
        S = n_seqs
        losses: dict[str, Tensor] = {}
        sel = targets[..., 0]  # (B, n)
        row = owner[sel]  # (M,)
        if sel.any():
            logits = (
                out[..., 0, :][sel] @ self.item_emb.weight[FIRST_VALUE_ID:].T
            )  # (M, N): real items only
            ce = F.cross_entropy(
                logits.float(), items[sel] - FIRST_VALUE_ID, reduction="none"
            )  # (M,)
            losses[ID_FIELD] = torch.zeros(S, device=items.device).index_add(0, row, ce)
        else:
            losses[ID_FIELD] = out.new_zeros(S).float()
        for j, f in enumerate(self.fields, start=1):
            sel = targets[..., j]  # (B, n)
            if not sel.any():
                losses[f.name] = out.new_zeros(S).float()
                continue
            row = owner[sel]  # (M,)
            h = out[..., j, :][sel]  # (M, e)
            tgt_items = items[sel]  # (M,)
            if f.kind == FieldKind.TEXT:
                pred = self.text_out[f.name](h).float()  # (M, D)
                truth = getattr(self, f"{f.name}__values")[tgt_items]  # (M, D)
                per = ((pred - truth) ** 2).sum(-1)  # (M,): Eq. 12, squared error
            elif f.kind == FieldKind.MULTI_CATEGORICAL:
                table = self.tables[f.name].weight[FIRST_VALUE_ID:]  # (V, e)
                logits = (h @ table.T).float()  # (M, V)
                vals = getattr(self, f"{f.name}__values")[tgt_items]  # (M, K)
                multi_hot = torch.zeros_like(logits)
                multi_hot.scatter_(
                    1, (vals - FIRST_VALUE_ID).clamp(min=0), (vals >= FIRST_VALUE_ID).float()
                )
                per = F.binary_cross_entropy_with_logits(logits, multi_hot, reduction="none").mean(
                    -1
                )  # (M,)
            else:
                logits = (h @ self.tables[f.name].weight[FIRST_VALUE_ID:].T).float()  # (M, V)
                truth = getattr(self, f"{f.name}__values")[tgt_items] - FIRST_VALUE_ID  # (M,)
                per = F.cross_entropy(logits, truth, reduction="none")  # (M,)
            losses[f.name] = torch.zeros(S, device=items.device).index_add(0, row, per)
        return losses

    def loss(
        self, items: Tensor, masked: Masked, packing: Packing | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 13 (or Eq. 14 when only ID targets are set): returns the loss and per-field means.
        Per sequence (a row, or a window of packed rows), the masked-field losses are summed
        and divided by the number of items; the loss is the mean over sequences."""
        out = self(items, masked.hidden, packing)  # (B, n, F, e)
        B, n = items.shape
        if packing is None:
            owner = torch.arange(B, device=items.device)[:, None].expand(B, n)  # (B, n)
            n_seqs = B
        else:
            owner, n_seqs = packing.windows.clamp(min=0), packing.n_windows
        per_field = self.field_losses(items, out, masked.targets, owner, n_seqs)
        real = items >= FIRST_VALUE_ID  # (B, n)
        n_items = (
            torch.zeros(n_seqs, device=items.device)
            .index_add(0, owner[real], torch.ones(int(real.sum()), device=items.device))
            .clamp(min=1)
        )  # (S,)
        weights = self.config.field_weights
        total = sum(weights.get(name, 1.0) * v for name, v in per_field.items()) / n_items  # (S,)
        return total.mean(), {name: (v / n_items).mean().detach() for name, v in per_field.items()}

    # ------------------------------------------------------------------ inference
    def query_states(self, history: Tensor) -> Tensor:
        """Append the all-missing query item to right-aligned histories and run DFSA.

        history: (B, n - 1) item ids (0 = padding). Returns (B, n, F, e) states; the query
        item is the last position. The query's item id is 1 (unknown): nothing about the
        target is ever looked up.
        """
        history = trim_left_padding(history)
        B = history.shape[0]
        query = torch.full((B, 1), MISSING_ID, dtype=history.dtype, device=history.device)
        items = torch.cat([history, query], dim=1)  # (B, n)
        hidden = torch.zeros(*items.shape, self.n_fields, dtype=torch.bool, device=items.device)
        hidden[:, -1] = True
        return self(items, hidden)

    def score(self, history: Tensor, candidates: Tensor | None = None) -> Tensor:
        """Next-item scores. Full catalogue: (B, N + 2) with ids 0 and 1 at -inf; with
        ``candidates`` (B, C) item ids: (B, C)."""
        h = self.query_states(history)[:, -1, 0]  # (B, e)
        if candidates is not None:
            return torch.einsum("be,bce->bc", h, self.item_emb(candidates)).float()  # (B, C)
        scores = (h @ self.item_emb.weight.T).float()  # (B, N + 2)
        scores[:, :FIRST_VALUE_ID] = -math.inf
        return scores

    @torch.no_grad()
    def impute(self, items: Tensor, hidden: Tensor | None = None) -> dict[str, Tensor]:
        """Predict every side field at every position: name -> predictions.

        Categorical and numeric: (B, n) value ids; multi-valued: (B, n, V + 2) probabilities
        (ids 0 and 1 at 0); text: (B, n, D) vectors. Fields hidden by ``hidden`` (or missing
        in the data) are what the caller will want to read.
        """
        if hidden is None:
            hidden = torch.zeros(*items.shape, self.n_fields, dtype=torch.bool, device=items.device)
        out = self(items, hidden)  # (B, n, F, e)
        preds: dict[str, Tensor] = {}
        for j, f in enumerate(self.fields, start=1):
            h = out[..., j, :]  # (B, n, e)
            if f.kind == FieldKind.TEXT:
                preds[f.name] = self.text_out[f.name](h)
            elif f.kind == FieldKind.MULTI_CATEGORICAL:
                probs = torch.sigmoid(h @ self.tables[f.name].weight.T)  # (B, n, V + 2)
                probs[..., :FIRST_VALUE_ID] = 0.0
                preds[f.name] = probs
            else:
                logits = h @ self.tables[f.name].weight.T  # (B, n, V + 2)
                logits[..., :FIRST_VALUE_ID] = -math.inf
                preds[f.name] = logits.argmax(-1)
        return preds


# ---------------------------------------------------------------------- masking (pure, seeded)


def mii_mask(
    present: Tensor,
    mask_prob: float,
    item_mask_prob: float = 0.0,
    generator: torch.Generator | None = None,
) -> Masked:
    """Eq. 11-13 masking: hide each present field independently with probability ``mask_prob``;
    with ``item_mask_prob``, also hide every field of a position. Only present fields are
    supervised. ``present``: (B, n, F) bool from :meth:`MIIR.present`."""
    u = torch.rand(present.shape, generator=generator, device=present.device)  # (B, n, F)
    hidden = (u < mask_prob) & present
    if item_mask_prob > 0:
        whole = (
            torch.rand(present.shape[:2], generator=generator, device=present.device)
            < item_mask_prob
        )  # (B, n)
        hidden = hidden | (whole[..., None] & present[..., :1])
    return Masked(hidden=hidden, targets=hidden & present)


def rec_mask(present: Tensor, mask_prob: float, generator: torch.Generator | None = None) -> Masked:
    """Eq. 14 masking: hide every field of an item with probability ``mask_prob``; only the
    item IDs of the hidden items are supervised."""
    real = present[..., 0]  # (B, n)
    whole = (
        torch.rand(real.shape, generator=generator, device=present.device) < mask_prob
    ) & real  # (B, n)
    hidden = whole[..., None].expand_as(present).clone()
    targets = torch.zeros_like(present)
    targets[..., 0] = whole
    return Masked(hidden=hidden, targets=targets)
