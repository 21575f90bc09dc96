"""GRU4Rec: config, left alignment, shapes, causality, left-padding invariance, scores equal to
the training-time predictions, bf16, and learning a planted rule (next item = item + 1)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import (
    N_ITEMS,
    assert_recurrence_is_causal,
    pad_left,
    random_windows,
    recurrent_scores_are_training_predictions,
    small_model,
)
from miir.errors import ConfigError
from miir.models import model_config
from miir.models.batch import Batch, make_batch
from miir.models.fields import ItemCatalogue
from miir.models.gru4rec import GRU4Rec, left_align, right_align

MAX_LEN = 6


def make_model(dropout: float = 0.0, seed: int = 0, n_items: int = N_ITEMS, **kw) -> GRU4Rec:
    options = {"dropout": dropout, "max_len": MAX_LEN, "hidden_size": 24} | kw
    return small_model("gru4rec", ItemCatalogue([], n_items), seed, **options).eval()


def windows(B: int = 8, n: int = MAX_LEN, seed: int = 0, min_len: int = 1) -> torch.Tensor:
    """(B, n) right-aligned windows of random items and random lengths (min_len .. n)."""
    return random_windows(B, n, seed, min_len=min_len)


def test_config_defaults_and_unknown_keys() -> None:
    cfg = model_config("gru4rec")
    assert (cfg.embedding_size, cfg.hidden_size, cfg.n_layers, cfg.dropout) == (64, 128, 1, 0.3)
    with pytest.raises(ConfigError, match="hidden"):
        model_config("gru4rec", {"hiden_size": 64})
    model = make_model()
    assert isinstance(model, GRU4Rec) and model.registry_name == "gru4rec"
    assert GRU4Rec.batch_mode == "trim" and not GRU4Rec.uses_side_info


def test_left_align_round_trip() -> None:
    items = torch.tensor([[0, 0, 5, 6, 7], [2, 3, 4, 5, 6], [0, 0, 0, 0, 0], [0, 0, 0, 0, 9]])
    left, pad = left_align(items)
    assert left.tolist() == [[5, 6, 7, 0, 0], [2, 3, 4, 5, 6], [0] * 5, [9, 0, 0, 0, 0]]
    assert pad.tolist() == [2, 0, 5, 4]
    assert torch.equal(right_align(left, pad), items)
    values = torch.randn(4, 5, 3)
    assert torch.equal(right_align(left_align_values(values, pad), pad), values)


def left_align_values(values: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    n = values.shape[1]
    src = (torch.arange(n)[None] + pad[:, None]) % n
    return values.gather(1, src[..., None].expand_as(values))


def test_score_shapes_and_candidates() -> None:
    model = make_model()
    history = windows(5, MAX_LEN - 1)
    scores = model.score(history)
    assert scores.shape == (5, N_ITEMS + 2) and scores.dtype == torch.float32
    assert torch.isinf(scores[:, :2]).all() and (scores[:, :2] < 0).all()
    assert torch.isfinite(scores[:, 2:]).all()
    candidates = torch.randint(2, N_ITEMS + 2, (5, 7))
    picked = model.score(history, candidates)
    assert picked.shape == (5, 7)
    torch.testing.assert_close(picked, scores.gather(1, candidates))


def test_causal_no_leakage() -> None:
    """Changing the items after slot t leaves the states up to slot t unchanged."""
    assert_recurrence_is_causal(make_model(), windows(6, MAX_LEN, min_len=MAX_LEN))


def test_left_padding_invariance() -> None:
    """The same history scores the same whatever its left padding and its batch-mates."""
    model = make_model()
    history = torch.tensor([[7, 3, 12]])
    ref = model.score(history)
    for width in (4, 5):
        torch.testing.assert_close(model.score(pad_left(history, width)), ref, rtol=0, atol=1e-6)
    mates = torch.cat([pad_left(history, 5), torch.tensor([[4, 5, 6, 7, 8], [0, 0, 0, 0, 9]])])
    torch.testing.assert_close(model.score(mates)[:1], ref, rtol=0, atol=1e-6)
    # an all-padding history scores from the state before any item, also at width 0
    empty = model.score(torch.zeros(2, 5, dtype=torch.long))
    torch.testing.assert_close(empty, model.score(torch.zeros(2, 0, dtype=torch.long)))
    assert not torch.allclose(empty[0, 2:], ref[0, 2:])


def test_score_is_the_training_time_prediction() -> None:
    """score(prefix) equals the prediction that training makes after that prefix, and the loss
    is the mean cross-entropy of those predictions."""
    model = make_model(seed=3)
    items = windows(8, MAX_LEN, seed=1)
    expected = recurrent_scores_are_training_predictions(model, items)
    loss, parts = model.loss(make_batch(items, "trim", MAX_LEN))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["item_id"], expected, rtol=1e-5, atol=1e-6)


def test_loss_ignores_left_padding_columns() -> None:
    model = make_model()
    items = windows(6, 4, seed=2)
    trimmed, _ = model.loss(make_batch(items, "trim", MAX_LEN))
    padded, _ = model.loss(Batch(pad_left(items, MAX_LEN), None, MAX_LEN))
    torch.testing.assert_close(trimmed, padded, rtol=1e-6, atol=1e-6)


def test_no_targets_and_gradients() -> None:
    model = make_model(dropout=0.3).train()
    lone = torch.tensor([[0, 0, 5], [0, 0, 9]])  # windows of one item: nothing to predict
    loss, _ = model.loss(make_batch(lone, "trim", MAX_LEN))
    assert float(loss.detach()) == 0.0
    loss.backward()
    model.zero_grad()
    loss, _ = model.loss(make_batch(windows(4), "trim", MAX_LEN))
    assert math.isfinite(loss.item())
    loss.backward()
    assert model.gru.weight_hh_l0.grad.abs().sum() > 0
    assert model.item_emb.weight.grad.abs().sum() > 0


def test_bf16_autocast() -> None:
    model = make_model()
    items = windows(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.loss(make_batch(items, "trim", MAX_LEN))
        scores = model.score(items[:, :-1])
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert scores.dtype == torch.float32


def successor(items: torch.Tensor, n_items: int) -> torch.Tensor:
    return (items - 2 + 1) % n_items + 2


def plus_one_windows(B: int, n: int, n_items: int, g: torch.Generator) -> torch.Tensor:
    """Right-aligned windows of consecutive items (cyclic): next item = item + 1."""
    start = torch.randint(0, n_items, (B, 1), generator=g)
    items = (start + torch.arange(n)[None]) % n_items + 2
    lengths = torch.randint(2, n + 1, (B,), generator=g)
    items[torch.arange(n)[None] < (n - lengths)[:, None]] = 0
    return items


def test_learns_next_is_item_plus_one() -> None:
    n_items = 20
    model = make_model(n_items=n_items, dropout=0.1).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = make_batch(plus_one_windows(64, MAX_LEN, n_items, g), "trim", MAX_LEN)
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    history = plus_one_windows(200, MAX_LEN - 1, n_items, g)
    predicted = model.score(history).argmax(1)
    accuracy = (predicted == successor(history[:, -1], n_items)).float().mean()
    assert accuracy > 0.95, accuracy
