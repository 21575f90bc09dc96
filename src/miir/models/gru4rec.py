"""GRU4Rec: session-based recommendation with a recurrent network.

Paper: B. Hidasi, A. Karatzoglou, L. Baltrunas and D. Tikk, "Session-based Recommendations with
Recurrent Neural Networks", ICLR 2016 (Section 3); reference implementation for sequential
recommendation: RecBole's ``GRU4Rec`` (which cites Tan et al., DLRS 2016, for its prefix
augmentation), whose layout we follow.

Architecture (RecBole's layout of Section 3.1 of the paper):

- item embedding ``x_t = E[s_t]``, then dropout;
- a GRU (Section 3.1): ``z_t = σ(W_z x_t + U_z h_{t-1})``, ``r_t = σ(W_r x_t + U_r h_{t-1})``,
  ``ĥ_t = tanh(W x_t + U (r_t ⊙ h_{t-1}))``, ``h_t = (1 - z_t) h_{t-1} + z_t ĥ_t``, from
  ``h_0 = 0``; ``n_layers`` GRU layers stacked;
- a dense layer from the hidden size to e, ``o_t = D h_t + b``, and the scores of the next item
  ``o_t · E^T`` against the item embeddings shared with the input (RecBole's output).

Training: every position of a window predicts the next item (inputs ``window[:-1]``, targets
``window[1:]``; only real targets after a real input count), with full-softmax cross-entropy
over all items (the MIIR paper unifies every model to it), averaged over all predictions of the
batch. As a GRU reads left to right, the state after item t of a window is exactly the state
after the prefix ending at t, so this is training on every prefix of every window (RecBole
trains one prediction per prefix, made by "prefix augmentation"; the paper trains
session-parallel mini-batches in which every step predicts the next item), in one pass.

Left padding. Windows and histories arrive right-aligned (padding on the left). A GRU run over
the left padding would start the sequence from a state built on padding, so rows are first
left-aligned (:func:`left_align`: each row rotated so that its items come first, padding after),
the GRU runs over them (the padding now trails and, the GRU being causal, cannot change the
states of the items before it), and the states are moved back to their right-aligned slots
(:meth:`RecurrentRecommender.forward`). A padding slot gets the state before any item
(``h = 0``). ``score(history)`` is the state after the last history item: the same computation
as the training prediction after that prefix, whatever the left padding. We rotate rather than
use ``pack_padded_sequence``: the GRU then runs as one dense kernel over a (B, n) batch (trim
mode keeps n close to the longest row), and rotation is one gather each way.

Hyper-parameters. The paper: one GRU layer (more did not help), 100 hidden units (1000 in its
best configurations), one-hot item inputs (an embedding layer did not help there), dropout on
the hidden layer (0.5 on RSC15), Adagrad. Our defaults are the settings of RecBole's GRU4Rec,
our reference implementation (on our amazon-beauty data it scored full-ranking HR@10 0.0660 /
NDCG@10 0.0372): e = 64, hidden size 128, one layer, dropout 0.3 on the input embeddings. The GRU has no bias
(RecBole); the dense layer has one. Initialisation: Xavier-normal for every matrix and zero
biases (the MIIR paper, Section 4.3, for every baseline; RecBole draws the GRU matrices
Xavier-uniform).

Deviations from the paper, and why:

- **Loss**: full-softmax cross-entropy over all items instead of the paper's ranking losses
  (TOP1, BPR) over mini-batch negatives (the MIIR paper's unified setting).
- **Batches**: windows of at most ``max_len`` items, each starting from ``h_0 = 0`` and trained
  with back-propagation through the whole window, instead of session-parallel mini-batches
  whose hidden state is carried across mini-batches (and reset at session starts).
- **Input and output**: an item embedding and an output layer tied to it through the dense
  layer (RecBole), instead of one-hot inputs and a separate output matrix.
- **GRU gates**: ``torch.nn.GRU``'s form, ``ĥ_t = tanh(W x_t + r_t ⊙ (U h_{t-1}))`` and
  ``h_t = (1 - z_t) ĥ_t + z_t h_{t-1}`` (cuDNN's variant: the reset gate after the recurrent
  product; the update gate's role reversed, which is only a reparametrisation).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from miir.data.schema import FIRST_VALUE_ID
from miir.models.base import ModelConfig, SequenceModel
from miir.models.batch import Batch
from miir.models.fields import ItemCatalogue
from miir.models.layers import Dropout, xavier_init
from miir.models.sasrec import next_item_loss, next_item_scores, nonempty_history

__all__ = ["GRU4Rec", "GRU4RecConfig", "RecurrentRecommender", "left_align", "right_align"]


class GRU4RecConfig(ModelConfig):
    """Hyper-parameters of GRU4Rec (RecBole's GRU4Rec settings). Unknown keys are errors.
    ``embedding_size`` is the item embedding size e; ``dropout`` applies to the input
    embeddings."""

    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="Dropout on the input embeddings.")
    hidden_size: int = Field(128, ge=1, description="GRU hidden units.")
    n_layers: int = Field(1, ge=1, description="Stacked GRU layers.")


# ---------------------------------------------------------------------- shared pieces


def left_align(items: Tensor) -> tuple[Tensor, Tensor]:
    """(B, n) right-aligned rows -> (B, n) the same rows left-aligned (items first, padding
    after, order kept) and (B,) the number of leading padding slots of each input row."""
    n = items.shape[1]
    pad = n - (items != 0).sum(1)  # (B,)
    cols = torch.arange(n, device=items.device)
    src = (cols[None] + pad[:, None]) % n  # (B, n): left slot j holds right slot j + pad
    return items.gather(1, src), pad


def right_align(values: Tensor, pad: Tensor) -> Tensor:
    """Undo :func:`left_align` on per-slot values: (B, n, ...) left-aligned -> right-aligned.
    The first ``pad`` slots of a row get what the left-aligned row held after its items."""
    n = values.shape[1]
    cols = torch.arange(n, device=values.device)
    src = (cols[None] - pad[:, None]) % n  # (B, n): right slot k holds left slot k - pad
    src = src.view(*src.shape, *([1] * (values.dim() - 2))).expand_as(values)
    return values.gather(1, src)


def make_gru(input_size: int, hidden_size: int, n_layers: int) -> nn.GRU:
    """A batch-first GRU without biases (RecBole's GRU4Rec)."""
    return nn.GRU(input_size, hidden_size, n_layers, bias=False, batch_first=True)


class RecurrentRecommender(SequenceModel):
    """Next-item prediction from the states of recurrent networks read left to right (GRU4Rec,
    PRNN). A subclass sets ``item_emb`` (the item embeddings, shared by input and output),
    ``dense`` (hidden states -> e) and :meth:`recurrent` (left-aligned items -> hidden states);
    this class handles the left padding, the loss and the scores."""

    batch_mode: ClassVar = "trim"

    item_emb: nn.Embedding
    dense: nn.Linear

    def recurrent(self, items: Tensor) -> Tensor:
        """(B, n) LEFT-aligned item ids (padding after the items) -> (B, n, H) hidden states,
        slot t having read slots <= t."""
        raise NotImplementedError

    def forward(self, items: Tensor) -> Tensor:
        """(B, n) right-aligned item ids -> (B, n, e) states; the state of slot t has read the
        items up to slot t and predicts the next one. Padding slots hold the state before any
        item (``h = 0``)."""
        left, pad = left_align(items)  # (B, n), (B,)
        hidden = right_align(self.recurrent(left), pad)  # (B, n, H)
        hidden = hidden.masked_fill((items == 0)[..., None], 0.0)
        return self.dense(hidden)  # (B, n, e)

    def loss(
        self, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Every slot predicts the next slot's item; full-softmax cross-entropy averaged over the
        predictions of the batch (no randomness but dropout, so ``generator`` is unused)."""
        return next_item_loss(self(batch.items), batch, self.item_emb.weight)

    def score(self, history: Tensor, candidates: Tensor | None = None) -> Tensor:
        """(B, T) right-aligned histories -> the scores of the state after the last item."""
        if history.shape[1] == 0:  # trim_left_padding needs a column to look at
            history = history.new_zeros(len(history), 1)
        h = self(nonempty_history(history))[:, -1]  # (B, e)
        return next_item_scores(h, self.item_emb, candidates)


# ---------------------------------------------------------------------- the model


class GRU4Rec(RecurrentRecommender):
    """GRU4Rec over item IDs (see the module docstring)."""

    Config: ClassVar[type[GRU4RecConfig]] = GRU4RecConfig
    uses_side_info: ClassVar[bool] = False

    def __init__(self, config: GRU4RecConfig, catalogue: ItemCatalogue) -> None:
        super().__init__(config, catalogue)
        e, hidden = config.embedding_size, config.hidden_size
        self.item_emb = nn.Embedding(self.n_items + FIRST_VALUE_ID, e)
        self.drop = Dropout(config.dropout)
        self.gru = make_gru(e, hidden, config.n_layers)
        self.dense = nn.Linear(hidden, e)
        xavier_init(self)

    def recurrent(self, items: Tensor) -> Tensor:
        x = self.drop(self.item_emb(items))  # (B, n, e)
        return self.gru(x)[0]  # (B, n, H)
