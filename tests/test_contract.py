"""The model contract, tested for every registered model (a new model gets these for free):
shapes, finite losses and gradients, overfitting one batch, padding invariance, no target
leakage, identical scores after save/load, determinism under a seed."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import N_ITEMS, gen, random_catalogue, random_windows, small_model
from miir.evaluation import evaluate
from miir.models import REGISTRY
from miir.models.base import Imputer, SequenceModel
from miir.models.batch import make_batch
from miir.models.fields import ItemCatalogue
from miir.training.checkpoint import load_checkpoint, save_checkpoint

MAX_LEN = 6
NAMES = list(REGISTRY)


def small(
    name: str, catalogue: ItemCatalogue | None = None, seed: int = 0, config: dict | None = None
) -> SequenceModel:
    """Model ``name`` at a test size: small embeddings, dropout 0 unless given."""
    return small_model(name, catalogue, seed, max_len=MAX_LEN, **(config or {}))


def windows(B: int = 6, n: int = MAX_LEN, seed: int = 0) -> torch.Tensor:
    """(B, n) right-aligned windows of 2 .. n items."""
    return random_windows(B, n, seed, min_len=2)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_finite_losses_and_gradients(name: str) -> None:
    model = small(name, config={"dropout": 0.1})
    model.train()
    items = windows()
    for mode in dict.fromkeys(("none", model.batch_mode)):
        loss, parts = model.loss(make_batch(items, mode, MAX_LEN), gen())
        assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0, mode
        assert parts and all(torch.isfinite(v) and v.dim() == 0 for v in parts.values())
        model.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    history = items[:, 1:]
    scores = model.score(history)
    assert scores.shape == (6, N_ITEMS + 2) and scores.dtype == torch.float32
    assert torch.isinf(scores[:, :2]).all() and (scores[:, :2] < 0).all()
    assert torch.isfinite(scores[:, 2:]).all()
    cand = torch.randint(2, N_ITEMS + 2, (6, 7), generator=gen(3))
    assert torch.allclose(model.score(history, cand), scores.gather(1, cand), atol=1e-5)
    assert model.history_len == MAX_LEN - 1 and model.stages()


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_trains_and_scores(name: str) -> None:
    """What ``--precision auto`` runs on a GPU (or a CPU with native bf16): training and
    validation under bf16 autocast give a float loss and float scores, the inference paths
    that scatter rows into a layout (MIIR's compact pass) included."""
    model = small(name)
    items = windows()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.train().loss(make_batch(items, model.batch_mode, MAX_LEN), gen())
        scores = model.eval().score(items[:, 1:])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert scores.dtype == torch.float32 and torch.isfinite(scores[:, 2:]).all()


@pytest.mark.parametrize("name", NAMES)
def test_overfits_one_batch(name: str) -> None:
    model = small(name)
    items = windows(B=4)
    batch = make_batch(items, model.batch_mode, MAX_LEN)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    first = None
    for _ in range(120):
        loss, _ = model.loss(batch, gen(7))  # the same masks every step: one fixed objective
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first, (first, loss.item())


@pytest.mark.parametrize("name", NAMES)
def test_scores_do_not_depend_on_padding_or_other_rows(name: str) -> None:
    model = small(name).eval()
    history = windows(n=MAX_LEN - 1, seed=4)
    history[:, 0] = 0  # at least one padding column everywhere: it can be cut
    scores = model.score(history)
    assert torch.allclose(model.score(history[:, 1:]), scores, atol=1e-5)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.allclose(model.score(history[perm]), scores[perm], atol=1e-5)
    assert torch.allclose(model.score(history[:1]), scores[:1], atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_chunked_ranking_is_the_same_ranking(name: str, monkeypatch) -> None:
    """Evaluation scores and ranks a batch in passes of SCORE_CHUNK rows (issue 9: memory); the
    ranks are those of one pass over the whole batch, whatever the chunks' padding."""
    model = small(name).eval()
    B = 7
    history = windows(B=B, n=MAX_LEN - 1, seed=5)
    g = torch.Generator().manual_seed(3)
    target = torch.randint(1, N_ITEMS + 1, (B,), generator=g)
    negatives = torch.randint(1, N_ITEMS + 1, (B, 5), generator=g)
    seen = history.clone()
    with torch.no_grad():
        whole = evaluate.ProtocolRanks()
        whole.update(model.score(history).float(), target, negatives, seen)
        monkeypatch.setattr(evaluate, "SCORE_CHUNK", 3)  # chunks of 3, 3 and 1 rows
        chunked = evaluate.ProtocolRanks()
        evaluate.rank_in_chunks(chunked, model.score, history, target, negatives, seen)
    for protocol, ranks in whole.ranks().items():
        assert len(ranks) == B
        assert torch.equal(chunked.ranks()[protocol], ranks), protocol


@pytest.mark.parametrize("name", NAMES)
def test_no_target_leakage_in_training(name: str) -> None:
    """On sequences of i.i.d. uniform items (and no side information) nothing can be learned:
    a model whose training loss keeps falling on fresh batches sees what it predicts."""
    n_items = 12
    empty = random_catalogue(n_items, present_rate=0.0)
    model = small(name, catalogue=empty)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    losses = []
    for step in range(100):
        items = torch.randint(2, n_items + 2, (16, MAX_LEN), generator=gen(100 + step))
        loss, _ = model.loss(make_batch(items, model.batch_mode, MAX_LEN), gen(step))
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    early = sum(losses[10:30]) / 20
    late = sum(losses[-20:]) / 20
    assert late > 0.75 * early, (early, late)
    assert math.isfinite(late)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_gives_identical_scores(name: str, tmp_path) -> None:
    model = small(name, config={"dropout": 0.2}).eval()
    history = windows(n=MAX_LEN - 1, seed=5)
    path = save_checkpoint(model, tmp_path / "ckpt", extra={"note": "x"})
    loaded, meta = load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert meta["model"] == name and meta["note"] == "x"
    assert torch.equal(model.score(history), loaded.score(history))
    # the vocabularies travel with the checkpoint: an imputed id turns back into a value
    assert loaded.catalogue.item_names == model.catalogue.item_names
    assert loaded.catalogue.vocabs == model.catalogue.vocabs
    if isinstance(model, Imputer):
        a, b = model.impute(windows(seed=6)), loaded.impute(windows(seed=6))
        assert set(a) == set(b) == {f.name for f in loaded.catalogue.fields}
        for key in a:
            assert torch.equal(a[key], b[key])
        assert loaded.catalogue.vocabs["brand"][2] == "b0"


def test_a_checkpoint_saved_before_an_option_existed_loads_as_it_was_trained(tmp_path) -> None:
    """A saved config that lacks an option predates it: the option is filled in at the value
    that reproduces the old behaviour (:data:`miir.options.NEUTRAL_OPTIONS`), not at today's
    default. A model saved before ``multi_loss`` trained with Eq. 11's mean, one saved before
    ``causal`` attended both ways; an option the config holds is read as saved."""
    import json

    model = small("miir", config={"causal": False, "next_item_weight": 0.0}).eval()
    assert model.config.multi_loss == "per_value"  # today's default
    path = save_checkpoint(model, tmp_path / "old")
    meta = json.loads((path / "model.json").read_text())
    for option in ("multi_loss", "causal", "next_item_weight"):
        del meta["config"][option]
    (path / "model.json").write_text(json.dumps(meta))
    loaded, _ = load_checkpoint(path)
    assert loaded.config.multi_loss == "mean" and loaded.config.causal is False
    assert loaded.config.next_item_weight == 0.0
    history = windows(n=MAX_LEN - 1, seed=5)
    assert torch.equal(model.score(history), loaded.score(history))
    # today's checkpoints hold every option: nothing is filled in
    again, _ = load_checkpoint(save_checkpoint(model, tmp_path / "new"))
    assert again.config == model.config and again.config.multi_loss == "per_value"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_a_seed(name: str) -> None:
    a, b = small(name, seed=3), small(name, seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    items = windows()
    batch = make_batch(items, a.batch_mode, MAX_LEN)
    a.train()
    b.train()
    assert torch.equal(a.loss(batch, gen(1))[0], b.loss(batch, gen(1))[0])
    c = small(name, seed=4)
    assert any(
        not torch.equal(va, vc) for va, vc in zip(a.parameters(), c.parameters(), strict=True)
    )


@pytest.mark.parametrize("name", NAMES)
def test_loss_blocks_do_not_change_the_loss(name: str, monkeypatch) -> None:
    """Losses gather their positions in blocks of SELECT_BLOCK (repeats weighted 0): the same
    loss and gradients as gathering the positions one by one."""
    import miir.models.batch as mb

    items = windows(B=7)
    results = []
    for block in (1, 64):
        monkeypatch.setattr(mb, "SELECT_BLOCK", block)
        model = small(name, seed=5)
        model.train()
        loss, _ = model.loss(make_batch(items, model.batch_mode, MAX_LEN), gen(2))
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((loss.detach(), grads))
    (la, ga), (lb, gb) = results
    assert torch.allclose(la, lb, atol=1e-6), (la, lb)
    assert len(ga) == len(gb)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(ga, gb, strict=True))


def test_registry_is_one_name_space() -> None:
    assert {
        "miir",
        "miir-r",
        "miir-f",
        "miir-m",
        "miir-r-m",
        "sparse-miir",
        "sparse-miir-r",
    } <= set(REGISTRY)
    for name, entry in REGISTRY.items():
        assert issubclass(entry.cls, SequenceModel) and entry.name == name
        assert entry.cls.batch_mode in ("packed", "trim", "none")
    assert small("miir-f").stages() == ("pretrain", "main")


def test_leakage_test_catches_a_leaking_model(monkeypatch) -> None:
    """The leakage test above is real: MIIR that lets masked fields through fails it."""
    from miir.models.masking import Masked

    model = small("miir")
    real = model.draw_mask

    def leaky(items, generator=None, packing=None):
        m = real(items, generator, packing)
        return Masked(hidden=torch.zeros_like(m.hidden), targets=m.targets)

    monkeypatch.setattr(model, "draw_mask", leaky)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for step in range(100):
        items = torch.randint(2, 14, (16, MAX_LEN), generator=gen(100 + step))
        loss, _ = model.loss(make_batch(items, "packed", MAX_LEN), gen(step))
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sum(losses[-20:]) / 20 < 0.75 * sum(losses[10:30]) / 20


def test_empty_inputs_are_handled() -> None:
    from miir.models.batch import trim_left_padding
    from miir.models.fields import FieldEncoder

    assert trim_left_padding(torch.zeros(3, 0, dtype=torch.long)).shape == (3, 0)
    assert trim_left_padding(torch.zeros(3, 4, dtype=torch.long)).shape == (3, 0)
    enc = FieldEncoder(random_catalogue().without_side_fields(), 8)
    assert enc.embed(torch.ones(2, 5, dtype=torch.long)).shape == (2, 5, 0, 8)
