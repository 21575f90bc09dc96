"""PRNN: parallel recurrent networks over item IDs and item features.

Paper: B. Hidasi, M. Quadrana, A. Karatzoglou and D. Tikk, "Parallel Recurrent Neural Network
Architectures for Feature-rich Session-based Recommendations", RecSys 2016 (Section 3). The
recurrent part, the left padding, the loss and the scores are GRU4Rec's
(:mod:`miir.models.gru4rec`, RecBole's layout), shared by import.

Architecture (the paper's parallel architecture, p-RNN, with one subnet per representation):

- the ID subnet: item embedding ``E[s_t]``, dropout, a GRU (as in GRU4Rec) -> ``h^id_t``;
- the feature subnet: every side field of the catalogue embedded with
  :meth:`~miir.models.fields.FieldEncoder.embed` (one codec per field kind; a value missing in
  the data enters as the field's learned missing value), the F field vectors concatenated into
  one (F e)-vector per item, dropout, a second GRU -> ``h^f_t`` (the paper feeds image and text
  feature vectors of the item to their own subnets; we feed all fields to one);
- combination: the hidden states are concatenated, ``[h^id_t; h^f_t]``, and one dense layer
  maps them to e; the next-item scores are its dot products with the item embeddings (shared
  with the ID subnet's input, as in GRU4Rec). This is the paper's architecture whose output is
  computed from the concatenated hidden layers. Its weighted-output alternative (a weighted sum
  of per-subnet outputs) computes functions of the same form: a linear layer over a
  concatenation is the sum of one linear map per subnet, the weights folding into the maps.

Training: simultaneous training, the paper's baseline schedule (every parameter updated at every
step), with GRU4Rec's loss: every position predicts the next item, full-softmax cross-entropy
over all items averaged over the predictions of the batch. The paper's other schedules
(alternating: one subnet trained at a time, switching per epoch; residual: subnets trained in
turn on the residual of the ones before; interleaving: alternating per mini-batch) are left out:
they need the trainer to freeze parameters by epoch or step, which the model contract has no
hook for, and the MIIR paper's comparison does not say that it used them.

Hyper-parameters. The paper tunes subnet sizes per data set and trains with ranking losses and
Adagrad; it gives no setting for our data. Our defaults are GRU4Rec's (RecBole's settings):
e = 64 for the item and field embeddings, 128 hidden units per subnet (``feature_hidden_size``
sets the feature subnet's), one layer, dropout 0.3 on the inputs of both subnets, Xavier-normal
matrices and zero biases (the MIIR paper, Section 4.3).

Deviations from the paper, and why: GRU4Rec's (full-softmax cross-entropy, windows instead of
session-parallel mini-batches, embeddings instead of one-hot inputs, tied output), plus:

- the side fields are embedded and learned with the model (categorical, multi-valued and
  numeric fields through embedding tables, text through a linear map of its precomputed vector)
  instead of fixed pretrained feature vectors;
- missing values enter as the field's learned missing value (the MIIR paper's setting for every
  baseline with side information);
- with zero side fields there is no feature subnet and the model is GRU4Rec.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from miir.data.schema import FIRST_VALUE_ID
from miir.models.base import SideInfoConfig
from miir.models.fields import FieldEncoder, ItemCatalogue
from miir.models.gru4rec import RecurrentRecommender, make_gru
from miir.models.layers import Dropout, xavier_init

__all__ = ["PRNN", "PRNNConfig"]


class PRNNConfig(SideInfoConfig):
    """Hyper-parameters of PRNN (GRU4Rec's settings for each subnet). Unknown keys are errors.
    ``embedding_size`` is e, the size of the item and of every field embedding; ``dropout``
    applies to the inputs of both subnets."""

    dropout: float = Field(
        0.3, ge=0.0, lt=1.0, description="Dropout on the inputs of both subnets."
    )
    hidden_size: int = Field(128, ge=1, description="GRU hidden units of the ID subnet.")
    feature_hidden_size: int | None = Field(
        None, ge=1, description="GRU hidden units of the feature subnet (default hidden_size)."
    )
    n_layers: int = Field(1, ge=1, description="Stacked GRU layers in each subnet.")


class PRNN(RecurrentRecommender):
    """Parallel GRUs over item IDs and item side fields (see the module docstring)."""

    Config: ClassVar[type[PRNNConfig]] = PRNNConfig
    uses_side_info: ClassVar[bool] = True

    def __init__(self, config: PRNNConfig, catalogue: ItemCatalogue) -> None:
        super().__init__(config, catalogue)
        e, hidden = config.embedding_size, config.hidden_size
        self.item_emb = nn.Embedding(self.n_items + FIRST_VALUE_ID, e)
        self.encoder = FieldEncoder(catalogue, e)
        self.drop = Dropout(config.dropout)
        self.gru = make_gru(e, hidden, config.n_layers)
        size = hidden
        if len(self.encoder):
            feature_hidden = config.feature_hidden_size or hidden
            self.feature_gru = make_gru(len(self.encoder) * e, feature_hidden, config.n_layers)
            size += feature_hidden
        self.dense = nn.Linear(size, e)
        xavier_init(self)

    def item_features(self, items: Tensor) -> Tensor:
        """(B, n) item ids -> (B, n, F e): the side fields of each item embedded by their codecs
        (learned missing values where the data has none) and concatenated in catalogue order."""
        return self.encoder.embed(items).flatten(-2)

    def recurrent(self, items: Tensor) -> Tensor:
        h = self.gru(self.drop(self.item_emb(items)))[0]  # (B, n, H)
        if not len(self.encoder):
            return h
        h_feat = self.feature_gru(self.drop(self.item_features(items)))[0]  # (B, n, H_f)
        return torch.cat([h, h_feat], dim=-1)  # (B, n, H + H_f)
