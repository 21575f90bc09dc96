"""PRNN: every field kind through FieldEncoder, missing values, zero side fields, causality,
left-padding invariance, scores equal to the training-time predictions, and a planted task that
only the side fields solve (PRNN beats GRU4Rec on it)."""

from __future__ import annotations

import math

import torch

from helpers import (
    N_ITEMS,
    assert_recurrence_is_causal,
    pad_left,
    random_catalogue,
    random_windows,
    recurrent_scores_are_training_predictions,
    small_model,
)
from miir.data.schema import FieldKind
from miir.models import model_config
from miir.models.batch import make_batch
from miir.models.fields import FieldInfo, ItemCatalogue
from miir.models.gru4rec import GRU4Rec
from miir.models.prnn import PRNN

MAX_LEN = 6


def make_model(cat: ItemCatalogue | None = None, dropout: float = 0.0, seed: int = 0, **kw) -> PRNN:
    """Over every field kind (about 30% of the values missing) unless given a catalogue."""
    options = {"dropout": dropout, "max_len": MAX_LEN, "hidden_size": 24} | kw
    return small_model("prnn", cat, seed, **options).eval()


def windows(B: int = 8, n: int = MAX_LEN, seed: int = 0, min_len: int = 1) -> torch.Tensor:
    return random_windows(B, n, seed, min_len=min_len)


def test_config_and_every_field_kind_learns() -> None:
    cfg = model_config("prnn")
    assert (cfg.hidden_size, cfg.n_layers, cfg.dropout, cfg.fields) == (128, 1, 0.3, None)
    model = make_model(dropout=0.3, feature_hidden_size=10).train()
    assert PRNN.uses_side_info and PRNN.batch_mode == "trim"
    assert model.feature_gru.input_size == 4 * 16 and model.feature_gru.hidden_size == 10
    assert model.item_features(windows(2)).shape == (2, MAX_LEN, 4 * 16)
    loss, parts = model.loss(make_batch(windows(6), "trim", MAX_LEN))
    assert math.isfinite(loss.item()) and set(parts) == {"item_id"}
    loss.backward()
    codecs = model.encoder.codecs
    for p in (
        codecs["brand"].table.weight,
        codecs["cats"].table.weight,
        codecs["title"].into.weight,
        codecs["title"].missing,
        codecs["price"].table.weight,
        model.feature_gru.weight_ih_l0,
        model.gru.weight_ih_l0,
    ):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_fields_option_selects_fields() -> None:
    model = make_model(fields=("brand", "title"))
    assert [f.name for f in model.encoder.fields] == ["brand", "title"]
    assert model.feature_gru.input_size == 2 * 16


def test_missing_values_enter_as_the_fields_missing_value() -> None:
    """A value missing in the data is the codec's missing vector: the stored value behind it is
    never read, while a present value is."""
    cat = random_catalogue()
    model = make_model(cat)
    absent = int((~cat.present["brand"][2:]).nonzero()[0]) + 2
    present = int(cat.present["brand"][2:].nonzero()[0]) + 2
    feats = model.item_features(torch.tensor([[absent]]))[0, 0, :16]
    torch.testing.assert_close(feats, model.encoder.codecs["brand"].table.weight[1])
    history = torch.tensor([[0, 3, absent, 5, present]])
    before = model.score(history)
    table = model.encoder.features.table("brand")
    table[absent] = 6  # changes nothing: the value is missing
    torch.testing.assert_close(model.score(history), before, rtol=0, atol=0)
    table[present] = 2 if int(table[present]) != 2 else 3  # changes the scores
    assert not torch.allclose(model.score(history), before)


def test_zero_side_fields() -> None:
    for model in (make_model(ItemCatalogue([], N_ITEMS)), make_model(fields=())):
        assert len(model.encoder) == 0 and not hasattr(model, "feature_gru")
        assert model.dense.in_features == 24
        items = windows(5)
        loss, _ = model.loss(make_batch(items, "trim", MAX_LEN))
        assert math.isfinite(loss.item())
        loss.backward()
        scores = model.score(items[:, :-1])
        assert scores.shape == (5, N_ITEMS + 2) and torch.isfinite(scores[:, 2:]).all()


def test_causal_and_left_padding_invariant() -> None:
    model = make_model()
    assert_recurrence_is_causal(model, windows(6, MAX_LEN, min_len=MAX_LEN))
    history = torch.tensor([[7, 3, 12]])
    ref = model.score(history)
    mates = torch.cat([pad_left(history, 5), torch.tensor([[4, 5, 6, 7, 8], [0, 0, 0, 0, 9]])])
    torch.testing.assert_close(model.score(pad_left(history, 5)), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.score(mates)[:1], ref, rtol=0, atol=1e-6)


def test_score_is_the_training_time_prediction() -> None:
    model = make_model(seed=3)
    items = windows(8, MAX_LEN, seed=1)
    expected = recurrent_scores_are_training_predictions(model, items)
    loss, _ = model.loss(make_batch(items, "trim", MAX_LEN))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_with_text_field() -> None:
    model = make_model()
    items = windows(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.loss(make_batch(items, "trim", MAX_LEN))
        scores = model.score(items[:, :-1])
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert scores.dtype == torch.float32


# ---------------------------------------------------------------------- a side-field task

N_COLORS = 4
HUBS = torch.arange(2, 2 + N_COLORS)  # item 2 + c is the hub of colour c
N_PLANTED = 48  # items 6 .. 49: inputs 6 .. 29 in training, 30 .. 49 never seen before testing


def colour_catalogue() -> ItemCatalogue:
    """``colour`` = (item - 2) % 4 for every item; ``size`` is missing or noise."""
    rows = N_PLANTED + 2
    ids = torch.arange(rows)
    colour = ((ids - 2) % N_COLORS + 2).clamp(min=1)
    colour[:2] = 1
    present = {"colour": ids >= 2, "size": (ids % 3 == 0) & (ids >= 2)}
    size = torch.where(present["size"], ids % 4 + 2, torch.ones_like(ids))
    fields = [
        FieldInfo("colour", FieldKind.CATEGORICAL, cardinality=N_COLORS + 2),
        FieldInfo("size", FieldKind.NUMERIC, cardinality=6),
    ]
    return ItemCatalogue(
        fields, N_PLANTED, present=present, values={"colour": colour, "size": size}
    )


def hub_of(items: torch.Tensor) -> torch.Tensor:
    return HUBS[(items - 2) % N_COLORS]


def colour_windows(B: int, inputs: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """[y, x, hub(colour(x))]: the next item after x is decided by x's colour only."""
    y = inputs[torch.randint(len(inputs), (B,), generator=g)]
    x = inputs[torch.randint(len(inputs), (B,), generator=g)]
    return torch.stack([y, x, hub_of(x)], dim=1)


def hub_accuracy(name: str, cat: ItemCatalogue) -> float:
    """Train on inputs 6 .. 29, then predict the hub after items 30 .. 49, never seen as
    inputs: their IDs say nothing, their colour says everything."""
    model = small_model(name, cat, max_len=3, hidden_size=24)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    seen, unseen = torch.arange(6, 30), torch.arange(30, 2 + N_PLANTED)
    for _ in range(150):
        loss, _ = model.loss(make_batch(colour_windows(64, seen, g), "trim", 3))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    history = colour_windows(400, unseen, g)[:, :2]
    with torch.no_grad():
        picked = model.score(history, HUBS.expand(len(history), -1)).argmax(1)
    return float((HUBS[picked] == hub_of(history[:, -1])).float().mean())


def test_prnn_beats_gru4rec_on_a_side_field_task() -> None:
    cat = colour_catalogue()
    prnn = hub_accuracy("prnn", cat)
    gru4rec = hub_accuracy("gru4rec", cat)
    assert prnn > 0.95, prnn
    assert gru4rec < 0.6, gru4rec  # chance is 0.25


def test_gru4rec_is_prnn_without_fields() -> None:
    """Same seeds, no side fields: PRNN computes what GRU4Rec does."""
    gru = small_model("gru4rec", random_catalogue(), max_len=MAX_LEN, hidden_size=24)
    prnn = small_model("prnn", ItemCatalogue([], N_ITEMS), max_len=MAX_LEN, hidden_size=24)
    assert isinstance(gru, GRU4Rec)
    history = windows(5, MAX_LEN - 1)
    torch.testing.assert_close(prnn.score(history), gru.score(history))
