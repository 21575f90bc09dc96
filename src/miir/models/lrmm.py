"""LRMM: learning to recommend with missing modalities.

Paper: C. Wang, M. Niepert and H. Li, "LRMM: Learning to Recommend with Missing Modalities",
EMNLP 2018 (arXiv:1808.06791). The MIIR paper uses it as the baseline "with missing feature
values" that imputes (Section 4.3; Tables 2-4 as a recommender, Table 11 as an imputer, and
FDSA+LRMM / NOVA+LRMM trained on its imputations, see :mod:`miir.data.derived`).

What LRMM is: every item is a set of modalities, each turned into a modality-specific
embedding; modality dropout (m-drop) drops some of them in training, and an auto-encoder
(m-auto) maps the remaining ones to one fused representation and reconstructs every modality
from it, which is how a missing modality is imputed. The recommendation is made from the fused
representations of users and items, trained jointly with the reconstruction. It is not a
sequential model.

Here, for an item of the catalogue:

- **modalities**: its item ID (an embedding table whose row 1 is the ID's missing vector) and
  every side field, embedded by the shared codecs (:class:`~miir.models.fields.FieldEncoder`:
  categorical and numeric buckets: a table; multi-valued: the sum of its values' embeddings;
  text: a linear map of the prepared text vector); a modality that is missing in the data, or
  dropped, enters as the field's learned missing value;
- **m-drop**: in training, each present modality of each item is dropped with probability
  ``modality_drop`` (:func:`~miir.models.masking.mii_mask`, drawn from the trainer's generator);
- **m-auto**: fused = LayerNorm(MLP([m_1; ...; m_M])) (M = 1 + fields, e each, one hidden
  layer of ``hidden_size``), and the reconstruction MLP(fused) -> M states of size e, one per
  modality, decoded by the modality's head: the item ID by a softmax over the (tied) item
  embeddings, every side field by its codec (softmax over the value table, one sigmoid per
  value for multi-valued fields, a linear map back to the text vector scored by squared error);
- **recommendation**: the user after slot t is the mean of the fused representations of the
  last ``user_items`` items up to t (0: every item the model reads), through a linear map,
  scored against the item ID embeddings: full-softmax cross-entropy over all items, as the MIIR
  paper unifies every model's loss; every slot of a window predicts the item after it. The
  mean ignores order: the model is not sequential, as the MIIR paper stresses;
- **loss**: next-item cross-entropy (mean over predictions) + ``recon_weight`` x the
  reconstruction loss (per real item of the batch: the sum of its dropped modalities' losses);
- **imputation** (:meth:`LRMM.impute`, the :class:`~miir.models.base.Imputer` protocol with
  MIIR's output format): each item alone, its missing or hidden modalities reconstructed from
  the present ones; the sequence around it plays no part.

Deviations from the paper, and where it leaves details open (choices made here):

- **Modalities and their encoders**: the paper's items have an image (CNN features), item
  metadata and review texts (LSTMs), and users their review texts; the catalogue has the item
  ID and typed side fields, each through its codec, and text arrives as one prepared vector.
  There is no user-side modality: a user is the items of their history.
- **Reconstruction targets**: the paper's m-auto reconstructs the modality-specific
  embeddings; here each reconstructed state is decoded into the modality's values (value
  probabilities, a text vector) and scored by the codec's loss, so that imputations are values
  (what Table 11 of the MIIR paper scores and what the derived FDSA+LRMM artifacts need).
- **Which reconstructions count**: the decoder reconstructs every modality, but the loss
  counts the modalities m-drop removed (and that are present in the data): copying a visible
  input teaches nothing about imputing a missing one, and counting it would make the loss fall
  on data that holds nothing to learn (the contract's target-leakage test). A value missing in
  the data is never supervised, so no hidden value can leak into the imputer.
- **A dropped modality** enters as its learned missing value (the library's one convention for
  missing values), not as zeros.
- **The recommender**: the paper predicts ratings from user and item representations; the MIIR
  paper ranks the next item with it, without saying how the user is represented. We take the
  mean of the history items' fused representations (``user_items``), score with full softmax
  against the item ID embeddings, and let every slot of a window predict the next item.
- **Sizes** (the paper's are for its encoders): e = 64 as every model here, ``hidden_size``
  128, dropout 0.1 on the auto-encoder's input and hidden layer, ``modality_drop`` 0.5 (the
  MIIR paper's rate of artificial missingness, its mask probability p), ``recon_weight`` 1.
- **Initialisation**: Xavier-normal matrices, zero biases (the MIIR paper, for every method).
- **Reconstruction per occurrence**: the auto-encoder is trained on the items of the training
  windows, so an item weighs as often as it occurs (the paper trains on user-item pairs too).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from miir.data.schema import FIRST_VALUE_ID, MISSING_ID
from miir.models.base import SequenceModel, SideInfoConfig
from miir.models.batch import Batch, gather_positions
from miir.models.fields import ID_FIELD, FieldEncoder, ItemCatalogue
from miir.models.layers import Dropout, xavier_init
from miir.models.masking import mii_mask
from miir.models.sasrec import next_item_scores, nonempty_history
from miir.models.softmax import softmax_cross_entropy

__all__ = ["LRMM", "LRMMConfig"]

NEXT_ITEM = "next_item"


class LRMMConfig(SideInfoConfig):
    """Hyper-parameters of LRMM (see the module docstring for the choices). Unknown keys are
    errors."""

    dropout: float = Field(
        0.1, ge=0.0, lt=1.0, description="Dropout on the auto-encoder's input and hidden layer."
    )
    hidden_size: int = Field(128, ge=8, description="Width of the auto-encoder's hidden layers.")
    modality_drop: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="m-drop: probability that training drops a present modality of an item "
        "(ID or side field); the dropped ones are reconstructed and scored.",
    )
    recon_weight: float = Field(
        1.0, ge=0.0, description="Weight of the reconstruction loss beside the next-item loss."
    )
    user_items: int = Field(
        0,
        ge=0,
        description="The user is the mean of the fused representations of the last "
        "user_items history items (0: every history item read).",
    )


class LRMM(SequenceModel):
    """LRMM over item IDs plus every side field of its catalogue (see the module docstring).
    Side information sits in buffers, so a checkpoint scores and imputes without the
    artifact."""

    Config: ClassVar[type[LRMMConfig]] = LRMMConfig
    uses_side_info: ClassVar[bool] = True
    batch_mode: ClassVar = "trim"

    def __init__(self, config: LRMMConfig, catalogue: ItemCatalogue) -> None:
        super().__init__(config, catalogue)
        e, h = config.embedding_size, config.hidden_size
        self.fields = list(catalogue.fields)
        self.n_modalities = 1 + len(self.fields)
        M = self.n_modalities
        self.item_emb = nn.Embedding(self.n_items + FIRST_VALUE_ID, e)  # row 1: missing ID
        self.encoder = FieldEncoder(catalogue, e)
        self.drop = Dropout(config.dropout)
        self.fuse_net = nn.Sequential(
            nn.Linear(M * e, h), nn.GELU(), Dropout(config.dropout), nn.Linear(h, e)
        )
        self.fuse_norm = nn.LayerNorm(e)
        self.decode_net = nn.Sequential(
            nn.Linear(e, h), nn.GELU(), Dropout(config.dropout), nn.Linear(h, M * e)
        )
        self.user_proj = nn.Linear(e, e)
        xavier_init(self)

    def set_item_tables(self, present: dict[str, Tensor], values: dict[str, Tensor]) -> None:
        """Load the observed side information of every item (rows = item ids)."""
        self.encoder.features.load_tables(present, values)

    # ------------------------------------------------------------------ the auto-encoder
    def present(self, items: Tensor) -> Tensor:
        """(...,) item ids -> (..., M) bool: the modalities present in the data (ID first)."""
        return self.encoder.present(items)

    def modalities(self, items: Tensor, visible: Tensor) -> Tensor:
        """(...,) item ids, (..., M) visibility -> (..., M, e) modality embeddings; a modality
        that is not visible enters as its learned missing value."""
        ids = torch.where(visible[..., 0], items, torch.full_like(items, MISSING_ID))
        x = self.item_emb(ids)[..., None, :]  # (..., 1, e)
        if self.fields:
            x = torch.cat([x, self.encoder.embed(items, visible[..., 1:])], dim=-2)  # (..., M, e)
        return x

    def fuse(self, x: Tensor) -> Tensor:
        """(..., M, e) modality embeddings -> (..., e) fused item representations."""
        return self.fuse_norm(self.fuse_net(self.drop(x.flatten(-2))))

    def reconstruct(self, z: Tensor) -> Tensor:
        """(..., e) fused representations -> (..., M, e) one state per modality."""
        return self.decode_net(z).unflatten(-1, (self.n_modalities, -1))

    def reconstruction_losses(
        self, items: Tensor, out: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        """Summed losses of the ``targets`` (B, n, M) modalities, from the reconstructed
        states ``out`` (B, n, M, e): modality name -> scalar."""
        sel = targets[..., 0]  # (B, n)
        table = self.item_emb.weight[FIRST_VALUE_ID:]
        ce = softmax_cross_entropy(out[..., 0, :][sel], table, items[sel] - FIRST_VALUE_ID).sum()
        losses = {ID_FIELD: ce}
        for j, f in enumerate(self.fields, start=1):
            sel = targets[..., j]  # (B, n)
            losses[f.name] = self.encoder.loss(f.name, out[..., j, :][sel], items[sel]).sum()
        return losses

    # ------------------------------------------------------------------ the recommender
    def user_states(self, items: Tensor, z: Tensor) -> Tensor:
        """(B, n) right-aligned item ids, (B, n, e) fused representations -> (B, n, e): the
        user after each slot, the mean of the last ``user_items`` real items' representations
        up to it (every one when 0), through a linear map. Order plays no part."""
        real = (items >= FIRST_VALUE_ID).to(z.dtype)[..., None]  # (B, n, 1)
        total = torch.cumsum(z * real, dim=1)  # (B, n, e)
        count = torch.cumsum(real, dim=1)  # (B, n, 1)
        k = self.config.user_items
        if k:  # the last k slots of a right-aligned row are its last k real items
            total = total - F.pad(total, (0, 0, k, 0))[:, :-k]
            count = count - F.pad(count, (0, 0, k, 0))[:, :-k]
        return self.user_proj(total / count.clamp(min=1))  # (B, n, e)

    def next_item_loss(self, items: Tensor, users: Tensor) -> Tensor:
        """Every real slot predicts the real item after it: full-softmax cross-entropy over all
        items, averaged over the predictions of the batch."""
        sel = (items[:, :-1] >= FIRST_VALUE_ID) & (items[:, 1:] >= FIRST_VALUE_ID)  # (B, n-1)
        if not sel.any():
            return users.sum().float() * 0.0  # keeps the graph
        b, t, w = gather_positions(sel)  # (P,) each, P a multiple of SELECT_BLOCK
        table = self.item_emb.weight[FIRST_VALUE_ID:]
        ce = softmax_cross_entropy(users[b, t], table, items[b, t + 1] - FIRST_VALUE_ID)  # (P,)
        return (ce * w).sum() / w.sum()

    # ------------------------------------------------------------------ the contract
    def loss(
        self, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Next-item loss + ``recon_weight`` x reconstruction loss of the modalities m-drop
        removed (drawn from ``generator``); the parts are logged per name."""
        items = batch.items  # (B, n)
        present = self.present(items)  # (B, n, M)
        dropped = mii_mask(present, self.config.modality_drop, generator=generator)
        z = self.fuse(self.modalities(items, present & ~dropped.hidden))  # (B, n, e)
        rec = self.next_item_loss(items, self.user_states(items, z))
        per = self.reconstruction_losses(items, self.reconstruct(z), dropped.targets)
        n_real = (items >= FIRST_VALUE_ID).sum().clamp(min=1)
        recon = sum(per.values()) / n_real
        parts = {NEXT_ITEM: rec.detach(), **{k: (v / n_real).detach() for k, v in per.items()}}
        return rec + self.config.recon_weight * recon, parts

    def score(self, history: Tensor, candidates: Tensor | None = None) -> Tensor:
        """Next-item scores from the user after the last history slot: (B, N + 2) with ids 0
        and 1 at -inf, or (B, C) for ``candidates``. Nothing is dropped."""
        history = nonempty_history(history)  # (B, T)
        z = self.fuse(self.modalities(history, self.present(history)))  # (B, T, e)
        users = self.user_states(history, z)[:, -1]  # (B, e)
        return next_item_scores(users, self.item_emb, candidates)

    @torch.no_grad()
    def impute(self, items: Tensor, hidden: Tensor | None = None) -> dict[str, Tensor]:
        """Reconstruct every side field of every item from its visible modalities (the
        :class:`~miir.models.base.Imputer` capability, MIIR's output format): (B, n) item ids
        and (B, n, M) hidden flags (default: none hidden) -> name -> predictions:
        categorical and numeric (B, n, V + 2) probabilities over value ids (softmax),
        multi-valued (B, n, V + 2) independent probabilities, ids 0 and 1 at 0; text (B, n, D)
        vectors. Each item is reconstructed alone: its neighbours play no part."""
        visible = self.present(items)  # (B, n, M)
        if hidden is not None:
            visible = visible & ~hidden
        out = self.reconstruct(self.fuse(self.modalities(items, visible)))  # (B, n, M, e)
        return {
            f.name: self.encoder.codecs[f.name].predict(out[..., j, :])
            for j, f in enumerate(self.fields, start=1)
        }
