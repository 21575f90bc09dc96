"""Helpers shared by the model tests (imported as ``from helpers import ...``): a random item
catalogue with every field kind, random right-aligned windows, small models built through the
registry, checks that several models' tests make, the options of a short ``miir train``
run, and the bench scripts as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from miir.data.schema import FieldKind
from miir.models import build_model, get_entry, model_config
from miir.models.base import SequenceModel
from miir.models.batch import make_batch
from miir.models.fields import FieldInfo, ItemCatalogue

N_ITEMS = 30
BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str) -> ModuleType:
    """The script ``bench/<name>.py`` as a module (``bench/`` is not a package); ``bench/`` goes
    on the path, as when a script runs, so that it imports its siblings (``childproc``)."""
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIELDS = [
    FieldInfo("brand", FieldKind.CATEGORICAL, cardinality=7),
    FieldInfo("cats", FieldKind.MULTI_CATEGORICAL, cardinality=9, width=3),
    FieldInfo("title", FieldKind.TEXT, dim=12),
    FieldInfo("price", FieldKind.NUMERIC, cardinality=6),
]
VOCABS = {
    "brand": ["<pad>", "<missing>", *[f"b{i}" for i in range(5)]],
    "cats": ["<pad>", "<missing>", *[f"c{i}" for i in range(7)]],
    "title": [],
    "price": ["<pad>", "<missing>", *[f"p{i}" for i in range(4)]],
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_catalogue(
    n_items: int = N_ITEMS,
    present_rate: float = 0.7,
    seed: int = 1,
    fields: list[FieldInfo] = FIELDS,
) -> ItemCatalogue:
    """Random side information for ``fields`` (a subset of :data:`FIELDS`), each value present
    with probability ``present_rate``, with vocabularies and item names."""
    g = gen(seed)
    rows = n_items + 2
    present = {f.name: torch.rand(rows, generator=g) < present_rate for f in fields}
    for p in present.values():
        p[:2] = False
    cats = torch.randint(2, 9, (rows, 3), generator=g)
    cats[:, 2] = 0  # lists of two values, zero-padded
    values = {
        "brand": torch.randint(2, 7, (rows,), generator=g),
        "cats": cats,
        "title": torch.randn(rows, 12, generator=g),
        "price": torch.randint(2, 6, (rows,), generator=g),
    }
    values = {f.name: values[f.name] for f in fields}
    for name, v in values.items():
        v[~present[name]] = 1 if v.dim() == 1 else 0
    vocabs = {f.name: VOCABS[f.name] for f in fields}
    item_names = ["<pad>", "<missing>", *[f"item{i}" for i in range(n_items)]]
    return ItemCatalogue(list(fields), n_items, vocabs, item_names, present, values)


def random_windows(
    B: int,
    n: int,
    seed: int = 0,
    n_items: int = N_ITEMS,
    min_len: int = 1,
    pad: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, n) right-aligned windows of random items: row r is left-padded by ``pad[r]`` columns,
    or by a random number of columns that leaves it ``min_len`` .. n items."""
    g = gen(seed)
    items = torch.randint(2, n_items + 2, (B, n), generator=g)
    if pad is None:
        pad = torch.randint(0, n - min_len + 1, (B,), generator=g)
    items[torch.arange(n)[None] < pad[:, None]] = 0
    return items


SMALL_MODEL = {"embedding_size": 16, "dropout": 0.0, "n_heads": 2, "n_layers": 1, "hidden_size": 16}


def small_model(
    name: str, catalogue: ItemCatalogue | None = None, seed: int = 0, **options
) -> SequenceModel:
    """Model ``name`` through the registry: the :data:`SMALL_MODEL` options it has, then
    ``options`` (an unknown one is an error), its parameters drawn after
    ``torch.manual_seed(seed)``; over :func:`random_catalogue` unless given one."""
    known = get_entry(name).cls.Config.model_fields
    config = model_config(name, {k: v for k, v in SMALL_MODEL.items() if k in known} | options)
    torch.manual_seed(seed)
    return build_model(name, config, random_catalogue() if catalogue is None else catalogue)


def pad_left(rows: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(rows, (width - rows.shape[1], 0))


# ---------------------------------------------------------------------- checks


def assert_same_gradients(
    model: torch.nn.Module, loss: torch.Tensor, other: torch.Tensor, atol: float = 1e-5
) -> None:
    """The two losses have the same gradients with respect to every parameter of ``model``."""
    params = list(model.parameters())
    for a, b in zip(
        torch.autograd.grad(loss, params, allow_unused=True),
        torch.autograd.grad(other, params, allow_unused=True),
        strict=True,
    ):
        assert (a is None) == (b is None)
        assert a is None or torch.allclose(a, b, atol=atol)


def assert_packed_cloze_loss_is_unpacked(model, items: torch.Tensor, max_len: int) -> None:
    """A cloze model (BERT4Rec, NOVA): windows packed into fewer rows, with the same hidden
    items, have the loss and the gradients of the padded batch."""
    unpacked = make_batch(items, "none", max_len)
    hidden = model.draw_mask(unpacked, gen(0))
    packed = make_batch(items, "packed", max_len)
    assert packed.items.shape[0] < items.shape[0]
    loss, _ = model.masked_loss(unpacked, hidden)
    packed_loss, _ = model.masked_loss(packed, packed.packing.move(hidden))
    assert torch.allclose(loss, packed_loss, atol=1e-5)
    assert_same_gradients(model, loss, packed_loss)


def assert_attention_is_causal(model, items: torch.Tensor, max_len: int, t: int = 5) -> None:
    """A causal self-attention model (SASRec, FDSA), ``model(items, positions)``: changing the
    items at slot t changes the states from slot t on, not those before it."""
    pos = make_batch(items, "none", max_len).positions()
    changed = items.clone()
    changed[:, t] = (changed[:, t] + 7) % N_ITEMS + 2
    a, b = model(items, pos), model(changed, pos)
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-6)
    assert not torch.allclose(a[:, t:], b[:, t:], atol=1e-3)  # and it does change later ones


def assert_batch_modes_give_one_loss(model, items: torch.Tensor, max_len: int) -> None:
    """Padded, trimmed and packed batches of the same windows have the same loss (and packing
    really puts windows in shared rows)."""
    packed = make_batch(items, "packed", max_len)
    assert len(packed.items) < len(items)
    unpacked = model.loss(make_batch(items, "none", max_len))[0]
    assert torch.allclose(model.loss(packed)[0], unpacked, atol=1e-6)
    assert torch.allclose(model.loss(make_batch(items, "trim", max_len))[0], unpacked, atol=1e-6)


def assert_score_is_last_training_state(model, items: torch.Tensor, max_len: int) -> None:
    """score(window[:-1]) equals the training logits at the last input of the window (SASRec,
    FDSA), whatever the left padding and the rows beside it."""
    batch = make_batch(items, "none", max_len)
    train_logits = model(batch.items, batch.positions())[:, -2] @ model.item_emb.weight.T
    scores = model.score(items[:, :-1])
    assert torch.allclose(scores[:, 2:], train_logits[:, 2:], atol=1e-5)
    for r in range(len(items)):  # each row alone (trimmed to its own length)
        alone = model.score(items[r : r + 1, :-1])
        assert torch.allclose(alone[:, 2:], scores[r : r + 1, 2:], atol=1e-5)


def assert_recurrence_is_causal(model, items: torch.Tensor) -> None:
    """A recurrent model (GRU4Rec, PRNN), ``model(items)``: changing the items after slot t
    leaves the states up to slot t unchanged, and changes the state at slot t + 1."""
    states = model(items)
    for t in range(items.shape[1] - 1):
        changed = items.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] - 2 + 7) % N_ITEMS + 2
        after = model(changed)
        torch.testing.assert_close(after[:, : t + 1], states[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(after[:, t + 1], states[:, t + 1])


def recurrent_scores_are_training_predictions(model, items: torch.Tensor) -> torch.Tensor:
    """Checks that a recurrent model's score(prefix) equals the prediction training makes after
    that prefix, for every prefix of ``items``; returns the mean cross-entropy of those
    predictions (what the training loss should be)."""
    n = items.shape[1]
    train_scores = model(items) @ model.item_emb.weight.T  # (B, n, N + 2)
    ces = []
    for t in range(n - 1):
        rows = (items[:, t] != 0).nonzero().squeeze(1)
        if len(rows) == 0:
            continue
        scores = model.score(pad_left(items[rows, : t + 1], n - 1))  # (r, N + 2)
        torch.testing.assert_close(scores[:, 2:], train_scores[rows, t, 2:], rtol=1e-5, atol=1e-5)
        target = items[rows, t + 1]
        ok = target >= 2
        ces.append(F.cross_entropy(scores[ok, 2:], target[ok] - 2, reduction="none"))
    return torch.cat(ces).mean()


#: ``miir train`` options of a short run: one epoch of two batches, quietly, on one thread
SHORT_RUN = [
    *("--epochs", "1", "--limit-train-batches", "2", "--batch-size", "16"),
    *("--no-progress", "--threads", "1"),
]
