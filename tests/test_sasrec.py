"""SASRec: the pre-LN block, causality, packed == unpacked loss, scoring as training predicts,
padding invariance, and learning a planted rule (next item = item + 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import (
    N_ITEMS,
    assert_attention_is_causal,
    assert_batch_modes_give_one_loss,
    assert_score_is_last_training_state,
    random_windows,
    small_model,
)
from miir.models.batch import make_batch
from miir.models.fields import ItemCatalogue
from miir.models.sasrec import PreLNBlock, SASRec

MAX_LEN = 8


def make_model(seed: int = 0, n_items: int = N_ITEMS, **overrides) -> SASRec:
    options = {"n_layers": 2, "max_len": MAX_LEN, **overrides}
    return small_model("sasrec", ItemCatalogue([], n_items), seed, **options)


def windows(B: int = 6, n: int = MAX_LEN, seed: int = 0) -> torch.Tensor:
    """(B, n) right-aligned windows of different lengths (2 .. n items)."""
    return random_windows(B, n, seed, pad=torch.arange(B) * 3 % (n - 1))


def test_pre_ln_block_matches_transformer_encoder_layer() -> None:
    torch.manual_seed(0)
    ours = PreLNBlock(16, 4, 0.0).eval()
    ref = nn.TransformerEncoderLayer(
        16, 4, 64, 0.0, activation="gelu", batch_first=True, norm_first=True
    ).eval()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(ours.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(ours.qkv.bias)
        ref.self_attn.out_proj.load_state_dict(ours.proj.state_dict())
        for a, b in (("linear1", "ff1"), ("linear2", "ff2"), ("norm1", "ln1"), ("norm2", "ln2")):
            getattr(ref, a).load_state_dict(getattr(ours, b).state_dict())
    x = torch.randn(3, 10, 16)
    causal = torch.triu(torch.full((10, 10), float("-inf")), diagonal=1)
    assert torch.allclose(ours(x, causal), ref(x, src_mask=causal), atol=1e-5)
    # the training path (manual attention with dropout) agrees with SDPA when p -> 0
    ours.train()
    ours.p = 1e-12
    assert torch.allclose(ours(x, causal), ref(x, src_mask=causal), atol=1e-5)


@pytest.mark.parametrize("norm_first", [True, False])
def test_shapes_and_finite_loss(norm_first: bool) -> None:
    model = make_model(dropout=0.5, norm_first=norm_first)
    loss, parts = model.loss(make_batch(windows(), "packed", MAX_LEN))
    assert torch.isfinite(loss) and loss > 0 and set(parts) == {"item_id"}
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    scores = model.score(windows()[:, 1:])
    assert scores.shape == (6, N_ITEMS + 2)
    assert torch.isinf(scores[:, :2]).all() and torch.isfinite(scores[:, 2:]).all()
    cands = torch.tensor([[2, 5, 9]]).expand(6, 3)
    assert torch.allclose(model.score(windows()[:, 1:], cands), scores.gather(1, cands))


@pytest.mark.parametrize("norm_first", [True, False])
def test_causal_a_later_item_does_not_change_earlier_outputs(norm_first: bool) -> None:
    model = make_model(norm_first=norm_first).eval()
    assert_attention_is_causal(model, windows(), MAX_LEN)


@pytest.mark.parametrize("norm_first", [True, False])
def test_packed_loss_equals_unpacked_loss(norm_first: bool) -> None:
    model = make_model(norm_first=norm_first)
    assert_batch_modes_give_one_loss(model, windows(B=12, seed=3), MAX_LEN)


def test_score_is_how_training_predicts_the_next_item() -> None:
    """score(window[:-1]) equals the training logits at the last input of the window, for a
    full window and a short one, whatever the left padding and the rows beside it."""
    assert_score_is_last_training_state(make_model().eval(), windows(), MAX_LEN)


def test_loss_counts_only_real_targets_within_a_window() -> None:
    """Windows of one item have nothing to predict; the loss ignores them."""
    model = make_model()
    items = windows(B=4)
    single = torch.zeros(3, MAX_LEN, dtype=torch.long)
    single[:, -1] = torch.tensor([4, 5, 6])
    both = torch.cat([items, single])
    for mode in ("none", "packed"):
        a = model.loss(make_batch(items, mode, MAX_LEN))[0]
        b = model.loss(make_batch(both, mode, MAX_LEN))[0]
        assert torch.allclose(a, b, atol=1e-6)


def test_learns_next_item_is_item_plus_one() -> None:
    torch.manual_seed(0)
    model = make_model(embedding_size=32, dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        start = torch.randint(0, N_ITEMS, (32, 1), generator=g)
        items = (start + torch.arange(MAX_LEN)) % N_ITEMS + 2  # (32, MAX_LEN)
        lengths = torch.randint(2, MAX_LEN + 1, (32, 1), generator=g)
        items[torch.arange(MAX_LEN) < MAX_LEN - lengths] = 0
        loss, _ = model.loss(make_batch(items, "packed", MAX_LEN))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    last = torch.arange(N_ITEMS)  # every item as the last of a 3-item history
    history = torch.stack([(last - 2) % N_ITEMS, (last - 1) % N_ITEMS, last], 1) + 2
    with torch.no_grad():
        top = model.score(history).argmax(1)
    accuracy = (top == (last + 1) % N_ITEMS + 2).float().mean().item()
    assert accuracy > 0.95, accuracy
