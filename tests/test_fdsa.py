"""FDSA: every field kind through the field codecs (missing values as the field's missing
value), no side fields, causality, packed == unpacked loss, scoring as training predicts, and a
planted task that only a side field solves (FDSA beats SASRec on items never trained on)."""

from __future__ import annotations

import pytest
import torch

from helpers import (
    N_ITEMS,
    assert_attention_is_causal,
    assert_batch_modes_give_one_loss,
    assert_score_is_last_training_state,
    random_catalogue,
    random_windows,
    small_model,
)
from miir.data.schema import FieldKind
from miir.models.batch import make_batch
from miir.models.fdsa import FDSA
from miir.models.fields import FieldInfo, ItemCatalogue

MAX_LEN = 8


def make_model(cat: ItemCatalogue | None = None, seed: int = 0, **overrides) -> FDSA:
    """Over every field kind (about 30% of the values missing) unless given a catalogue."""
    return small_model("fdsa", cat, seed, n_layers=2, max_len=MAX_LEN, **overrides)


def windows(B: int = 6, n: int = MAX_LEN, seed: int = 0) -> torch.Tensor:
    """(B, n) right-aligned windows of different lengths (2 .. n items)."""
    return random_windows(B, n, seed, pad=torch.arange(B) * 3 % (n - 1))


@pytest.mark.parametrize("norm_first", [True, False])
def test_shapes_and_finite_loss_with_every_field_kind(norm_first: bool) -> None:
    model = make_model(dropout=0.5, norm_first=norm_first)
    loss, parts = model.loss(make_batch(windows(), "packed", MAX_LEN))
    assert torch.isfinite(loss) and loss > 0 and set(parts) == {"item_id"}
    loss.backward()
    for name in ("brand", "cats", "title", "price"):  # every field reaches the loss
        grads = [p.grad for n, p in model.named_parameters() if f"codecs.{name}." in n]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    model.eval()
    scores = model.score(windows()[:, 1:])
    assert scores.shape == (6, N_ITEMS + 2)
    assert torch.isinf(scores[:, :2]).all() and torch.isfinite(scores[:, 2:]).all()
    cands = torch.tensor([[2, 5, 9]]).expand(6, 3)
    assert torch.allclose(model.score(windows()[:, 1:], cands), scores.gather(1, cands))


def test_fields_fused_by_vanilla_attention() -> None:
    model = make_model().eval()
    items = windows()
    fields = model.encoder.embed(items)  # (B, n, F, e)
    fused, alpha = model.fuse(fields)
    assert fields.shape == (6, MAX_LEN, 4, 16) and alpha.shape == (6, MAX_LEN, 4)
    assert torch.allclose(alpha.sum(-1), torch.ones(6, MAX_LEN))
    assert torch.allclose(fused, (alpha[..., None] * fields).sum(-2))
    assert torch.allclose(model.features(items), fused)


def test_a_missing_value_enters_as_the_fields_missing_value() -> None:
    """The stored value of a missing field is never read; a present one is."""
    cat = random_catalogue()
    missing = int(torch.nonzero(~cat.present["brand"][2:])[0]) + 2
    shown = int(torch.nonzero(cat.present["brand"][2:])[0]) + 2
    model = make_model(cat).eval()
    history = torch.tensor([[0, 5, missing, shown]])
    before = model.score(history)
    table = model.encoder.features.table("brand")
    table[missing] = 3 if table[missing] != 3 else 4
    assert torch.equal(model.score(history), before)
    table[shown] = 3 if table[shown] != 3 else 4
    assert not torch.allclose(model.score(history), before)


def test_works_without_side_fields() -> None:
    model = make_model(ItemCatalogue([], N_ITEMS))
    assert model.fuse is None
    loss, _ = model.loss(make_batch(windows(), "packed", MAX_LEN))
    assert torch.isfinite(loss)
    loss.backward()
    assert model.score(windows()[:, 1:]).shape == (6, N_ITEMS + 2)


def test_causal_a_later_item_does_not_change_earlier_outputs() -> None:
    assert_attention_is_causal(make_model().eval(), windows(), MAX_LEN)


@pytest.mark.parametrize("norm_first", [True, False])
def test_packed_loss_equals_unpacked_loss(norm_first: bool) -> None:
    model = make_model(norm_first=norm_first)
    assert_batch_modes_give_one_loss(model, windows(B=12, seed=3), MAX_LEN)


def test_score_is_how_training_predicts_the_next_item() -> None:
    assert_score_is_last_training_state(make_model().eval(), windows(), MAX_LEN)


# ---------------------------------------------------------------------- planted task

N_COLORS, PER_COLOR, HELD_OUT = 4, 12, 3  # items of each color never seen in training


def color_catalogue() -> tuple[ItemCatalogue, torch.Tensor, torch.Tensor]:
    """Item id i has color (i - 2) % 4; the last HELD_OUT items of each color are held out.
    A numeric noise field, missing for a third of the items, rides along."""
    n = N_COLORS * PER_COLOR
    ids = torch.arange(n + 2)
    color = (ids - 2) % N_COLORS
    held = (ids - 2) // N_COLORS >= PER_COLOR - HELD_OUT
    held[:2] = False
    g = torch.Generator().manual_seed(0)
    noise_present = torch.rand(n + 2, generator=g) > 0.33
    noise_present[:2] = False
    present = {"color": ids >= 2, "noise": noise_present}
    values = {
        "color": torch.where(ids >= 2, color + 2, 1),
        "noise": torch.where(noise_present, torch.randint(2, 6, (n + 2,), generator=g), 1),
    }
    fields = [
        FieldInfo("color", FieldKind.CATEGORICAL, cardinality=N_COLORS + 2),
        FieldInfo("noise", FieldKind.NUMERIC, cardinality=6),
    ]
    return ItemCatalogue(fields, n, present=present, values=values), color, held


def color_walks(color: torch.Tensor, pool: torch.Tensor, B: int, g: torch.Generator):
    """(B, MAX_LEN) windows of 2 .. MAX_LEN items: each next item is drawn at random among the
    ``pool`` items whose color is the last item's color + 1 (mod 4)."""
    by_color = torch.stack([pool[color[pool] == c] for c in range(N_COLORS)])  # (4, K)
    cur = pool[torch.randint(len(pool), (B,), generator=g)]  # (B,)
    cols = [cur]
    for _ in range(MAX_LEN - 1):
        pick = torch.randint(by_color.shape[1], (B,), generator=g)
        cur = by_color[(color[cur] + 1) % N_COLORS, pick]
        cols.append(cur)
    items = torch.stack(cols, 1)
    lengths = torch.randint(2, MAX_LEN + 1, (B, 1), generator=g)
    items[torch.arange(MAX_LEN) < MAX_LEN - lengths] = 0
    return items


def train_on_colors(name: str, cat: ItemCatalogue, color: torch.Tensor, held: torch.Tensor):
    model = small_model(name, cat, embedding_size=32, dropout=0.5, max_len=MAX_LEN)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    pool = torch.nonzero(~held[2:]).squeeze(1) + 2  # training items only
    for _ in range(150):
        loss, _ = model.loss(make_batch(color_walks(color, pool, 64, g), "packed", MAX_LEN))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_fdsa_reads_a_side_field_that_ids_cannot_give() -> None:
    """The next item's color is the last item's color + 1. After an item never seen in
    training, only its color field tells which items come next: FDSA puts most of its
    probability on them, SASRec (IDs only) about a quarter."""
    cat, color, held = color_catalogue()
    unseen = torch.nonzero(held).squeeze(1)  # (U,) item ids
    history = torch.zeros(len(unseen), MAX_LEN - 1, dtype=torch.long)
    history[:, -1] = unseen
    right = color[None, :] == ((color[unseen] + 1) % N_COLORS)[:, None]  # (U, N + 2)
    mass = {}
    for name in ("fdsa", "sasrec"):
        model = train_on_colors(name, cat, color, held)
        with torch.no_grad():
            probs = torch.softmax(model.score(history), dim=1)
        mass[name] = (probs * right).sum(1).mean().item()
    assert mass["fdsa"] > 0.6, mass
    assert mass["fdsa"] > mass["sasrec"] + 0.3, mass
