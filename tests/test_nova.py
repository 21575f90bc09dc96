"""NOVA-BERT: every field kind, each fusion, packed == unpacked loss, hidden items leak neither
their id nor their side fields, side information enters only queries and keys, the appended
query, zero side fields, and a planted task decided by a side field."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import (
    FIELDS,
    N_ITEMS,
    assert_packed_cloze_loss_is_unpacked,
    random_catalogue,
    random_windows,
    small_model,
)
from miir.data.schema import FieldKind
from miir.models import build_model, model_config
from miir.models.base import SideInfoConfig
from miir.models.batch import Batch, make_batch
from miir.models.bert4rec import BERT4Rec, BERT4RecConfig
from miir.models.fields import FieldInfo, ItemCatalogue
from miir.models.masking import last_of_sequence
from miir.models.nova import NOVA, NOVAConfig

MAX_LEN = 6
FUSIONS = ["gating", "sum", "concat"]


def make_model(seed: int = 0, fields: list[FieldInfo] = FIELDS, **kw) -> NOVA:
    """Over random side information of ``fields``, about 30% of the values missing."""
    cat = random_catalogue(fields=fields)
    return small_model("nova", cat, seed, n_layers=2, max_len=MAX_LEN, **kw)


def test_config_and_registry() -> None:
    cfg = model_config("nova", {"fields": ["brand"]})
    assert isinstance(cfg, SideInfoConfig) and isinstance(cfg, BERT4RecConfig)
    assert (cfg.fusion, cfg.dropout, cfg.mask_prob, cfg.n_layers) == ("gating", 0.1, 0.6, 2)
    model = build_model("nova", cfg, random_catalogue())
    assert isinstance(model, NOVA) and [f.name for f in model.fields] == ["brand"]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_shapes_scores_and_finite_loss(fusion: str) -> None:
    model = make_model(fusion=fusion)
    items = random_windows(5, MAX_LEN, seed=1)
    loss, parts = model.loss(Batch(items, None, MAX_LEN), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and set(parts) == {"item_id"}
    loss.backward()
    for name in ("brand", "cats", "title", "price"):  # every field kind gets gradients
        grads = [p.grad for p in model.encoder.codecs[name].parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, name
    model.eval()
    scores = model.score(items[:, 1:])
    assert scores.shape == (5, N_ITEMS + 2) and torch.isinf(scores[:, :2]).all()
    cands = torch.randint(2, N_ITEMS + 2, (5, 4))
    assert torch.allclose(model.score(items[:, 1:], cands), scores.gather(1, cands), atol=1e-5)


@pytest.mark.parametrize(
    ("fusion", "fields"), [(f, FIELDS) for f in FUSIONS] + [("gating", []), ("concat", [])]
)
def test_packed_windows_have_the_loss_of_the_unpacked_batch(
    fusion: str, fields: list[FieldInfo]
) -> None:
    model = make_model(fusion=fusion, fields=fields)
    assert_packed_cloze_loss_is_unpacked(model, random_windows(11, MAX_LEN, seed=4), MAX_LEN)


def test_hidden_items_leak_neither_id_nor_side_fields() -> None:
    """Replacing a hidden item by another item (other id, other side values) changes no logit;
    replacing a visible one does."""
    model = make_model()
    items = random_windows(6, MAX_LEN, seed=5)
    batch = Batch(items, None, MAX_LEN)
    hidden = model.draw_mask(batch, torch.Generator().manual_seed(1))
    logits = model.masked_logits(batch, hidden)
    other = (items - 2 + 7) % N_ITEMS + 2
    tables = model.encoder.features
    assert (tables.values("brand", other) != tables.values("brand", items))[hidden].any()
    changed = torch.where(hidden, other, items)
    assert torch.equal(model.masked_logits(Batch(changed, None, MAX_LEN), hidden), logits)
    visible = (items >= 2) & ~hidden
    changed = torch.where(visible & (torch.rand(items.shape) < 0.5), other, items)
    assert not torch.allclose(model.masked_logits(Batch(changed, None, MAX_LEN), hidden), logits)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_side_information_enters_only_queries_and_keys(fusion: str) -> None:
    """Non-invasive: a window of one item attends only to itself, whatever its query and key,
    so its output cannot depend on side information; in longer windows it does."""
    model = make_model(fusion=fusion).eval()
    blank = copy.deepcopy(model)  # the same model with every side value missing
    for f in FIELDS:
        getattr(blank.encoder.features, f"{f.name}__present").zero_()

    def states(m: NOVA, items: torch.Tensor) -> torch.Tensor:
        no_hidden = torch.zeros_like(items, dtype=torch.bool)
        return m.encode(items, no_hidden, Batch(items, None, MAX_LEN).positions(), None)

    single = torch.randint(2, N_ITEMS + 2, (8, MAX_LEN), generator=torch.Generator().manual_seed(2))
    single[:, :-1] = 0  # windows of one item
    assert torch.allclose(states(blank, single)[:, -1], states(model, single)[:, -1], atol=1e-5)
    full = random_windows(8, MAX_LEN, seed=3)
    assert not torch.allclose(states(blank, full), states(model, full), atol=1e-3)


@pytest.mark.parametrize("fields", [FIELDS, []])
def test_score_is_the_training_time_last_item_example(fields: list[FieldInfo]) -> None:
    model = make_model(seed=3, fields=fields).eval()
    windows = random_windows(7, MAX_LEN, seed=6)
    windows[:, -1] = torch.randint(2, N_ITEMS + 2, (7,))
    logits = model.masked_logits(Batch(windows, None, MAX_LEN), last_of_sequence(windows))
    history = windows[:, :-1]
    assert torch.allclose(model.score(history)[:, 2:], logits, atol=1e-5)
    short = history[:, -2:]
    padded = torch.cat([torch.zeros(7, MAX_LEN - 3, dtype=short.dtype), short], 1)
    assert torch.allclose(model.score(padded), model.score(short), atol=1e-5)


def test_works_with_zero_side_fields() -> None:
    model = build_model("nova", model_config("nova", {"max_len": MAX_LEN}), ItemCatalogue([], 30))
    items = random_windows(4, MAX_LEN, seed=7)
    loss, _ = model.loss(make_batch(items, "packed", MAX_LEN), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and model.score(items[:, 1:]).shape == (4, N_ITEMS + 2)


def test_bf16_autocast_gives_float_loss_and_scores() -> None:
    model = make_model()
    items = random_windows(4, MAX_LEN, seed=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.loss(make_batch(items, "packed", MAX_LEN), torch.Generator())
        scores = model.eval().score(items[:, 1:])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert scores.dtype == torch.float32 and torch.isfinite(scores[:, 2:]).all()


# ---------------------------------------------------------------------- planted side-field task
G, N_TRAIN, N_COLD, L = 4, 300, 100, 8


def planted_catalogue() -> ItemCatalogue:
    """Ids 2 .. G + 1 are one hub per colour; then N_TRAIN noise items seen in training and
    N_COLD never seen, each with a random colour."""
    n = G + N_TRAIN + N_COLD
    color = torch.ones(n + 2, dtype=torch.long)
    color[2 : 2 + G] = 2 + torch.arange(G)
    color[2 + G :] = 2 + torch.randint(0, G, (n - G,), generator=torch.Generator().manual_seed(0))
    present = torch.ones(n + 2, dtype=torch.bool)
    present[:2] = False
    info = FieldInfo("color", FieldKind.CATEGORICAL, cardinality=G + 2)
    return ItemCatalogue([info], n, present={"color": present}, values={"color": color})


def planted_windows(cat: ItemCatalogue, cold: bool, B: int, g: torch.Generator) -> torch.Tensor:
    """A history of the G hubs and L - 1 - G noise items of one colour, shuffled; the next item
    is the hub of that colour: decided by the noise items' colour field only."""
    first = 2 + G + (N_TRAIN if cold else 0)
    pool = torch.arange(first, first + (N_COLD if cold else N_TRAIN))
    color = cat.values["color"][pool] - 2
    target = torch.randint(0, G, (B,), generator=g)  # (B,)
    k = L - 1 - G
    weights = (color[None] == target[:, None]).float()  # (B, P): this colour's noise items
    noise = pool[torch.multinomial(weights, k, replacement=True, generator=g)]  # (B, k)
    hist = torch.cat([torch.arange(2, 2 + G).expand(B, G), noise], 1)  # (B, L - 1)
    order = torch.rand(hist.shape, generator=g).argsort(1)
    return torch.cat([hist.gather(1, order), 2 + target[:, None]], 1)  # (B, L)


def train_planted(cls: type[BERT4Rec], cat: ItemCatalogue, steps: int = 80) -> BERT4Rec:
    torch.manual_seed(0)
    config_cls = NOVAConfig if cls is NOVA else BERT4RecConfig
    cfg = config_cls(embedding_size=32, n_heads=2, dropout=0.0, max_len=L, last_item_prob=1.0)
    model = cls(cfg, cat if cls is NOVA else cat.without_side_fields())
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = make_batch(planted_windows(cat, False, 64, g), "packed", L)
        loss, _ = model.loss(batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_nova_learns_a_task_decided_by_a_side_field() -> None:
    """On histories of items never seen in training, only the colour field tells which hub
    comes next: NOVA reads it, BERT4Rec (IDs only) is at chance (1 / G)."""
    cat = planted_catalogue()
    g = torch.Generator().manual_seed(2)
    test = planted_windows(cat, True, 400, g)
    accuracy = {}
    for cls in (BERT4Rec, NOVA):
        model = train_planted(cls, cat)
        accuracy[cls.__name__] = (model.score(test[:, :-1]).argmax(1) == test[:, -1]).float().mean()
    assert accuracy["NOVA"] > 0.9, accuracy
    assert accuracy["BERT4Rec"] < 0.45, accuracy
