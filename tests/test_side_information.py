"""Side information decides the next item: every feature-aware model beats every ID-only one.

The planted task (seeded): ids 2 .. 5 are one hub item per colour; the other items are noise
items with a random colour, 300 seen in training and 100 never seen. A history holds the four
hubs (shuffled) and three noise items; the next item is the hub of the last item's colour.
Tested on histories of unseen noise items, only the ``colour`` field tells which hub comes
next: an ID-only model is at chance (1/4). The hubs sit in every history, so a model that
reads side information only to decide where to attend (NOVA) can solve it too.

MIIR's default scores the next item from the last history item's state (causal attention plus
a next-item loss); that state carries the item's own ID embedding, and an ID never seen in
training has an untrained one, which misleads it (measured at 1200 steps: 0.01 on unseen ids).
So the comparison runs MIIR as the paper scores it (an appended all-missing query item), and a
second test checks the default where the product meets new items: as inline records whose ID
is unknown and whose fields are known."""

from __future__ import annotations

import pytest
import torch

from miir.data.schema import FieldKind
from miir.models import REGISTRY, build_model, model_config
from miir.models.batch import make_batch
from miir.models.fields import FieldInfo, ItemCatalogue

G, N_TRAIN, N_COLD, L = 4, 300, 100, 8
LR = 1e-3
MODELS = ["gru4rec", "sasrec", "bert4rec", "prnn", "fdsa", "nova", "miir"]


def planted_catalogue() -> ItemCatalogue:
    n = G + N_TRAIN + N_COLD
    g = torch.Generator().manual_seed(0)
    color = torch.ones(n + 2, dtype=torch.long)
    color[2 : 2 + G] = 2 + torch.arange(G)
    color[2 + G :] = 2 + torch.randint(0, G, (n - G,), generator=g)
    present = torch.ones(n + 2, dtype=torch.bool)
    present[:2] = False
    size_present = present & (torch.arange(n + 2) % 3 == 0)  # a noisy, partly missing field
    size = torch.where(size_present, torch.randint(2, 6, (n + 2,), generator=g), 1)
    fields = [
        FieldInfo("color", FieldKind.CATEGORICAL, cardinality=G + 2),
        FieldInfo("size", FieldKind.NUMERIC, cardinality=6),
    ]
    return ItemCatalogue(
        fields,
        n,
        present={"color": present, "size": size_present},
        values={"color": color, "size": size},
    )


def planted_windows(cat: ItemCatalogue, cold: bool, B: int, g: torch.Generator) -> torch.Tensor:
    """[the G hubs shuffled, L - 2 - G noise items, x, hub of x's colour]: the next item is
    decided by the colour of the last item (noise items have random colours)."""
    first = 2 + G + (N_TRAIN if cold else 0)
    pool = torch.arange(first, first + (N_COLD if cold else N_TRAIN))
    hubs = torch.arange(2, 2 + G).expand(B, G)
    hubs = hubs.gather(1, torch.rand(B, G, generator=g).argsort(1))
    noise = pool[torch.randint(len(pool), (B, L - 1 - G), generator=g)]  # (B, L - 1 - G)
    target = cat.values["color"][noise[:, -1]]  # hub ids are 2 + colour - 2 = colour value
    return torch.cat([hubs, noise, target[:, None]], 1)  # (B, L)


def train_planted(name: str, steps: int, **overrides) -> tuple[torch.nn.Module, ItemCatalogue]:
    fields = REGISTRY[name].cls.Config.model_fields
    wanted = {
        "dropout": 0.0,
        "max_len": L,
        "embedding_size": 32,
        "hidden_size": 32,
        "n_heads": 2,
        "n_layers": 2,
        "last_item_prob": 1.0,  # cloze models: train on the query they are tested on
    }
    torch.manual_seed(0)
    cat = planted_catalogue()
    wanted = {k: v for k, v in wanted.items() if k in fields}
    config = model_config(name, {**wanted, **overrides})
    model = build_model(name, config, cat)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(1)
    model.train()
    for step in range(steps):
        batch = make_batch(planted_windows(cat, False, 64, g), model.batch_mode, L)
        loss, _ = model.loss(batch, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), cat


def accuracy_on_unseen_items(name: str, steps: int = 600, **overrides) -> float:
    model, cat = train_planted(name, steps, **overrides)
    test = planted_windows(cat, True, 400, torch.Generator().manual_seed(2))
    with torch.no_grad():
        picked = model.score(test[:, :-1]).argmax(1)
    return float((picked == test[:, -1]).float().mean())


@pytest.fixture(scope="module")
def accuracy() -> dict[str, float]:
    paper_scoring = {"miir": {"causal": False}}  # see the module docstring
    return {
        name: accuracy_on_unseen_items(name, **paper_scoring.get(name, {}))
        for name in MODELS
        if name in REGISTRY
    }


def test_default_miir_predicts_from_the_fields_of_new_inline_items() -> None:
    """The default MIIR (next-item head) on the same task, the unseen items given as inline
    records (ID unknown, colour and size known), as ``Recommender.recommend`` passes them."""
    model, cat = train_planted("miir", 1200)
    assert model.config.causal and model.config.next_item_weight > 0
    test = planted_windows(cat, True, 400, torch.Generator().manual_seed(2))
    history = test[:, :-1]
    side = model.side_inputs(history)  # the fields, looked up before the ids are hidden
    inline = torch.where(history >= 2 + G + N_TRAIN, torch.ones_like(history), history)
    with torch.no_grad():
        picked = model.score(inline, side=side).argmax(1)
        blind = model.score(inline).argmax(1)  # same ids, no fields: nothing to go on
    accuracy = float((picked == test[:, -1]).float().mean())
    assert accuracy > 0.9, accuracy
    assert float((blind == test[:, -1]).float().mean()) < 0.5


def test_every_feature_aware_model_beats_every_id_only_model(accuracy) -> None:
    aware = {n: a for n, a in accuracy.items() if REGISTRY[n].cls.uses_side_info}
    blind = {n: a for n, a in accuracy.items() if not REGISTRY[n].cls.uses_side_info}
    assert set(aware) >= {"miir"} and blind, accuracy
    assert min(aware.values()) > max(blind.values()) + 0.1, accuracy
    # chance is 1/4 (0.30 for a model that always names the most frequent colour's hub)
    assert max(blind.values()) < 0.4, accuracy
    # the attention models read the colour almost perfectly; PRNN, whose ID subnet memorises
    # the 300 training items first, is slower (measured at 600 steps: 0.44; 1200 steps: 0.62)
    for name in ("miir", "fdsa", "nova"):
        if name in aware:
            assert aware[name] > 0.9, accuracy
