"""LRMM: an item auto-encoder with modality dropout that imputes side fields and recommends
from the mean of the history. The contract tests run on it through the registry; these check
what is its own: imputation learnt on planted data, the output format, and a user who is the
last ``user_items`` items of the history."""

from __future__ import annotations

import pytest
import torch

from helpers import gen, random_windows, small_model
from miir.data.schema import FieldKind
from miir.models.base import Imputer
from miir.models.batch import make_batch
from miir.models.fields import FieldInfo, ItemCatalogue
from miir.models.lrmm import LRMM
from miir.models.masking import mii_mask

MAX_LEN = 6
N_ITEMS = 80
N_CODES = 12
HELD_OUT = torch.arange(62, N_ITEMS + 2)  # items whose planted fields are all missing


def planted_catalogue() -> tuple[ItemCatalogue, dict[str, torch.Tensor]]:
    """Every item has a ``code`` (12 values, always present). The other fields are functions
    of it: ``color`` = code % 4 (categorical), ``tags`` = {code % 3, 'common'} (multi-valued),
    ``vec`` = a prototype per colour plus noise (text), ``level`` = code % 2 (numeric bucket).
    The held-out items have all four missing; every code occurs among the observed items.
    Returns the catalogue and the true values."""
    g = gen(0)
    rows = N_ITEMS + 2
    code = torch.randint(0, N_CODES, (rows,), generator=g)
    observed_codes = torch.arange(60) % N_CODES  # items 2 .. 61: each code five times
    code[2:62] = observed_codes[torch.randperm(60, generator=g)]
    color = 2 + code % 4
    tags = torch.stack([2 + code % 3, torch.full_like(code, 5)], dim=1)  # 'common' is id 5
    protos = torch.randn(4, 8, generator=g)
    vec = protos[code % 4] + 0.1 * torch.randn(rows, 8, generator=g)
    level = 2 + code % 2
    truth = {"color": color, "tags": tags, "vec": vec, "level": level}
    present = torch.ones(rows, dtype=torch.bool)
    present[:2] = False
    observed = present.clone()
    observed[HELD_OUT] = False
    values = {"code": 2 + code}
    for name, v in truth.items():
        v = v.clone()
        v[~observed] = 0 if v.dim() > 1 else 1
        values[name] = v
    fields = [
        FieldInfo("code", FieldKind.CATEGORICAL, cardinality=N_CODES + 2),
        FieldInfo("color", FieldKind.CATEGORICAL, cardinality=6),
        FieldInfo("tags", FieldKind.MULTI_CATEGORICAL, cardinality=6, width=2),
        FieldInfo("vec", FieldKind.TEXT, dim=8),
        FieldInfo("level", FieldKind.NUMERIC, cardinality=4),
    ]
    flags = {f.name: (present if f.name == "code" else observed) for f in fields}
    return ItemCatalogue(fields, N_ITEMS, present=flags, values=values), truth


def trained_lrmm(cat: ItemCatalogue, steps: int = 200) -> LRMM:
    torch.manual_seed(0)
    model = small_model("lrmm", cat, seed=0, max_len=MAX_LEN, embedding_size=32, hidden_size=64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        items = random_windows(64, MAX_LEN, seed=100 + step, n_items=N_ITEMS, min_len=MAX_LEN)
        loss, _ = model.loss(make_batch(items, model.batch_mode, MAX_LEN), gen(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def majority_share(values: torch.Tensor) -> float:
    return values.unique(return_counts=True)[1].max().item() / len(values)


def test_lrmm_imputes_planted_fields_of_held_out_items_from_their_code() -> None:
    cat, truth = planted_catalogue()
    model = trained_lrmm(cat)
    assert isinstance(model, Imputer)
    out = model.impute(HELD_OUT[:, None])  # each item alone: (B, 1)
    for name in ("color", "level"):
        true = truth[name][HELD_OUT]
        acc = (out[name][:, 0].argmax(-1) == true).float().mean().item()
        assert acc >= 0.9 and acc > majority_share(true) + 0.3, (name, acc, majority_share(true))
    # multi-valued: the set {code % 3, common} at threshold 0.5
    predicted = out["tags"][:, 0] >= 0.5  # (B, V + 2)
    want = torch.zeros_like(predicted).scatter_(1, truth["tags"][HELD_OUT], True)
    exact = (predicted == want).all(1).float().mean().item()
    assert exact >= 0.85, exact
    # text: far closer than the mean vector of the observed items
    vec = out["vec"][:, 0]
    mean_vec = truth["vec"][2:62].mean(0)
    mse = ((vec - truth["vec"][HELD_OUT]) ** 2).mean().item()
    baseline = ((mean_vec - truth["vec"][HELD_OUT]) ** 2).mean().item()
    assert mse < 0.3 * baseline, (mse, baseline)


def test_imputation_format_is_miirs() -> None:
    cat, _ = planted_catalogue()
    model = small_model("lrmm", cat, max_len=MAX_LEN).eval()
    items = random_windows(3, 4, seed=1, n_items=N_ITEMS)
    out = model.impute(items)
    assert set(out) == {"code", "color", "tags", "vec", "level"}
    for name, v in (("code", 14), ("color", 6), ("level", 4)):
        assert out[name].shape == (3, 4, v)
        assert torch.allclose(out[name].sum(-1), torch.ones(3, 4), atol=1e-5)
        assert (out[name][..., :2] == 0).all()
    assert out["tags"].shape == (3, 4, 6) and (out["tags"][..., :2] == 0).all()
    assert ((out["tags"] >= 0) & (out["tags"] <= 1)).all()
    assert out["vec"].shape == (3, 4, 8) and out["vec"].dtype == torch.float32


def test_an_item_is_imputed_alone_and_hidden_flags_hide_modalities() -> None:
    cat, _ = planted_catalogue()
    model = small_model("lrmm", cat, max_len=MAX_LEN).eval()
    items = random_windows(4, 5, seed=2, n_items=N_ITEMS, min_len=5)
    out = model.impute(items)
    alone = model.impute(items[:, 2:3])
    assert torch.allclose(out["color"][:, 2:3], alone["color"], atol=1e-6)
    hidden = torch.zeros(4, 5, 6, dtype=torch.bool)
    hidden[..., 1] = True  # hide the code: the imputation changes
    assert not torch.allclose(model.impute(items, hidden)["color"], out["color"])
    # the same as taking the code out of the item tables (set_item_tables: another artifact)
    no_code = {**cat.present, "code": torch.zeros_like(cat.present["code"])}
    model.set_item_tables(no_code, cat.values)
    assert torch.equal(model.impute(items)["color"], model.impute(items, hidden)["color"])


def test_the_loss_supervises_only_what_modality_dropout_removed() -> None:
    """At a low m-drop rate some modalities of the batch are dropped somewhere and some
    nowhere: exactly the former have a reconstruction loss (a visible input is not scored)."""
    cat, _ = planted_catalogue()
    items = random_windows(32, MAX_LEN, seed=3, n_items=60, min_len=MAX_LEN)  # observed items
    model = small_model("lrmm", cat, max_len=MAX_LEN, modality_drop=0.004).train()
    _, parts = model.loss(make_batch(items, "trim", MAX_LEN), gen(2))
    dropped = mii_mask(model.present(items), 0.004, generator=gen(2)).targets  # (B, n, M)
    names = ["item_id", "code", "color", "tags", "vec", "level"]
    assert set(parts) == {"next_item", *names}
    some = dropped.flatten(0, 1).any(0).tolist()  # (M,): dropped somewhere in the batch
    assert any(some) and not all(some), some
    assert [bool(parts[k] > 0) for k in names] == some


@pytest.mark.parametrize("k", [1, 2])
def test_the_user_is_the_last_k_items_and_their_order_does_not_matter(k: int) -> None:
    model = small_model("lrmm", max_len=MAX_LEN, user_items=k).eval()
    history = random_windows(5, MAX_LEN - 1, seed=4, min_len=MAX_LEN - 1)
    scores = model.score(history)
    earlier = history.clone()
    earlier[:, :-k] = (earlier[:, :-k] + 5) % 30 + 2  # items before the last k
    assert torch.allclose(model.score(earlier), scores, atol=1e-5)
    changed = history.clone()
    changed[:, -1] = (changed[:, -1] + 5) % 30 + 2
    assert not torch.allclose(model.score(changed), scores, atol=1e-3)
    whole = small_model("lrmm", max_len=MAX_LEN).eval()  # user_items = 0: every item, no order
    reversed_ = history.flip(1)
    assert torch.allclose(whole.score(reversed_), whole.score(history), atol=1e-5)
    assert not torch.allclose(whole.score(earlier), whole.score(history), atol=1e-3)
