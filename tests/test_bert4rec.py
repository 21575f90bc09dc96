"""BERT4Rec: shapes, packed == unpacked loss, no leakage of hidden items, the appended query is
the training-time last-item example, the last-item option, and learning a planted rule."""

from __future__ import annotations

import pytest
import torch

from helpers import N_ITEMS, assert_packed_cloze_loss_is_unpacked, random_windows, small_model
from miir.errors import ConfigError
from miir.models import build_model, model_config
from miir.models.batch import Batch, make_batch
from miir.models.bert4rec import BERT4Rec, BERT4RecConfig
from miir.models.fields import ItemCatalogue
from miir.models.masking import last_of_sequence

MAX_LEN = 6


def make_model(seed: int = 0, **kw) -> BERT4Rec:
    options = {"n_layers": 2, "max_len": MAX_LEN, **kw}
    return small_model("bert4rec", ItemCatalogue([], N_ITEMS), seed, **options)


def test_registry_builds_it_with_the_paper_defaults() -> None:
    cfg = model_config("bert4rec")
    assert (cfg.n_layers, cfg.n_heads, cfg.dropout, cfg.mask_prob) == (2, 2, 0.1, 0.6)
    model = build_model("bert4rec", cfg, ItemCatalogue([], N_ITEMS))
    assert isinstance(model, BERT4Rec) and model.history_len == cfg.max_len - 1
    with pytest.raises(ConfigError, match="mask_probability"):
        model_config("bert4rec", {"mask_probability": 0.2})


def test_shapes_scores_and_finite_loss() -> None:
    model = make_model()
    items = random_windows(5, MAX_LEN, seed=1)
    loss, parts = model.loss(Batch(items, None, MAX_LEN), torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and set(parts) == {"item_id"}
    loss.backward()
    assert model.item_emb.weight.grad.abs().sum() > 0
    model.eval()
    history = items[:, 1:]
    scores = model.score(history)  # (B, N + 2)
    assert scores.shape == (5, N_ITEMS + 2) and scores.dtype == torch.float32
    assert torch.isinf(scores[:, :2]).all() and torch.isfinite(scores[:, 2:]).all()
    cands = torch.randint(2, N_ITEMS + 2, (5, 7))
    assert torch.allclose(model.score(history, cands), scores.gather(1, cands), atol=1e-5)


@pytest.mark.parametrize("loss_norm", ["sequence", "position"])
def test_packed_windows_have_the_loss_of_the_unpacked_batch(loss_norm: str) -> None:
    model = make_model(loss_norm=loss_norm)
    assert_packed_cloze_loss_is_unpacked(model, random_windows(11, MAX_LEN, seed=4), MAX_LEN)


def test_loss_norms_weigh_windows_differently() -> None:
    """'sequence' averages per window; 'position' over all hidden items: they differ when
    windows hide different numbers of items."""
    items = random_windows(8, MAX_LEN, seed=2)
    batch = Batch(items, None, MAX_LEN)
    seq, pos = make_model(loss_norm="sequence"), make_model(loss_norm="position")
    hidden = seq.draw_mask(batch, torch.Generator().manual_seed(3))
    a, b = seq.masked_loss(batch, hidden)[0], pos.masked_loss(batch, hidden)[0]
    assert not torch.allclose(a, b)
    # one window: the two norms agree
    one = Batch(items[:1], None, MAX_LEN)
    assert torch.allclose(seq.masked_loss(one, hidden[:1])[0], pos.masked_loss(one, hidden[:1])[0])


def test_hidden_items_do_not_leak() -> None:
    """Changing the id of a hidden item changes no logit; changing a visible one does."""
    model = make_model()
    items = random_windows(6, MAX_LEN, seed=5)
    batch = Batch(items, None, MAX_LEN)
    hidden = model.draw_mask(batch, torch.Generator().manual_seed(1))
    logits = model.masked_logits(batch, hidden)
    changed = items.clone()
    changed[hidden] = (items[hidden] - 2 + 7) % N_ITEMS + 2  # other real items
    assert torch.equal(model.masked_logits(Batch(changed, None, MAX_LEN), hidden), logits)
    visible = (items >= 2) & ~hidden
    r, c = visible.nonzero()[0].tolist()
    changed = items.clone()
    changed[r, c] = (items[r, c] - 2 + 7) % N_ITEMS + 2
    assert not torch.allclose(model.masked_logits(Batch(changed, None, MAX_LEN), hidden), logits)


def test_score_is_the_training_time_last_item_example() -> None:
    """score(history) equals the logits at the hidden last position of the window history +
    target, whatever the history's left padding or width."""
    model = make_model(seed=3).eval()
    windows = random_windows(7, MAX_LEN, seed=6)
    windows[:, -1] = torch.randint(2, N_ITEMS + 2, (7,))  # every window has a target
    hidden = last_of_sequence(windows)
    logits = model.masked_logits(Batch(windows, None, MAX_LEN), hidden)  # (B, N)
    history = windows[:, :-1]
    scores = model.score(history)
    assert torch.allclose(scores[:, 2:], logits, atol=1e-5)
    short = history[:, -2:]  # the last two items only
    padded = torch.cat([torch.zeros(7, MAX_LEN - 3, dtype=short.dtype), short], 1)  # (B, 5)
    assert torch.allclose(model.score(padded), model.score(short), atol=1e-5)
    short_windows = torch.cat([short, windows[:, -1:]], 1)
    short_logits = model.masked_logits(
        Batch(short_windows, None, MAX_LEN), last_of_sequence(short_windows)
    )
    assert torch.allclose(model.score(short)[:, 2:], short_logits, atol=1e-5)


def test_last_item_prob_makes_last_item_examples() -> None:
    items = random_windows(64, MAX_LEN, seed=7)
    batch = make_batch(items, "packed", MAX_LEN)
    last = last_of_sequence(batch.items, batch.packing.windows)
    only_last = make_model(last_item_prob=1.0).draw_mask(batch, torch.Generator().manual_seed(0))
    assert torch.equal(only_last, last)
    cloze = make_model(last_item_prob=0.0, mask_prob=0.6).draw_mask(
        batch, torch.Generator().manual_seed(0)
    )
    real = batch.items >= 2
    assert not (cloze & ~real).any()
    assert 0.5 < cloze.sum() / real.sum() < 0.75  # ~0.6 plus the forced last items


def test_bf16_autocast_gives_float_loss_and_scores() -> None:
    model = make_model()
    items = random_windows(4, MAX_LEN, seed=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.loss(make_batch(items, "packed", MAX_LEN), torch.Generator())
        scores = model.eval().score(items[:, 1:])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert scores.dtype == torch.float32 and torch.isfinite(scores[:, 2:]).all()


def test_learns_next_item_is_item_plus_one() -> None:
    """Windows walk the catalogue (next = item + 1, wrapping): after a few hundred cloze
    steps the appended query ranks the true next item first."""
    torch.manual_seed(0)
    cfg = BERT4RecConfig(embedding_size=32, n_heads=2, dropout=0.0, max_len=8)
    model = BERT4Rec(cfg, ItemCatalogue([], N_ITEMS))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)

    def walks(B: int) -> torch.Tensor:
        start = torch.randint(0, N_ITEMS, (B, 1), generator=g)
        return (start + torch.arange(8)) % N_ITEMS + 2  # (B, 8)

    for _ in range(150):
        items = walks(64)
        items[:16, :3] = 0  # some short windows
        loss, _ = model.loss(make_batch(items, "packed", 8), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = walks(200)
    top = model.score(test[:, 1:-1]).argmax(1)  # (B,): histories of 6 items
    assert (top == test[:, -1]).float().mean() > 0.95
