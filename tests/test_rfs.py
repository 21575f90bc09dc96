"""RFS (random feature sampling, the MIIR paper's FDSA+RFS and NOVA+RFS baselines): training
drops present side values with ``rfs_prob``, scoring drops nothing. Checked on the pure mask
function, and on the models by recording what their field encoder is asked to enter."""

from __future__ import annotations

import pytest
import torch

from helpers import gen, random_windows, small_model
from miir.errors import ConfigError
from miir.models import REGISTRY, model_config
from miir.models.batch import make_batch
from miir.models.fdsa import FDSA
from miir.models.masking import RFS_DEFAULT_PROB, rfs_drop
from miir.models.nova import NOVA
from miir.models.sasrec import next_item_loss, window_positions

MAX_LEN = 6
NAMES = {"fdsa": "fdsa-rfs", "nova": "nova-rfs"}


# ---------------------------------------------------------------------- the pure function


def test_rfs_drop_drops_only_present_values_at_the_given_rate() -> None:
    present = torch.rand(400, 50, 4, generator=gen(0)) < 0.6  # (B, n, F)
    kept = rfs_drop(present, 0.3, gen(1))
    assert kept.shape == present.shape and kept.dtype == torch.bool
    assert not (kept & ~present).any()  # a missing value never appears
    rate = 1 - kept.sum().item() / present.sum().item()
    assert abs(rate - 0.3) < 0.01, rate
    assert torch.equal(kept, rfs_drop(present, 0.3, gen(1)))  # seeded
    assert not torch.equal(kept, rfs_drop(present, 0.3, gen(2)))


def test_rfs_drop_at_zero_is_the_identity_and_draws_nothing() -> None:
    present = torch.rand(5, 6, 3, generator=gen(0)) < 0.5
    g = gen(9)
    assert rfs_drop(present, 0.0, g) is present
    assert torch.equal(g.get_state(), gen(9).get_state())  # RFS off: the RNG stream is as before
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="rfs prob"):
            rfs_drop(present, bad, g)


# ---------------------------------------------------------------------- registry and config


@pytest.mark.parametrize("plain,name", NAMES.items())
def test_rfs_names_are_presets_of_the_plain_classes(plain: str, name: str) -> None:
    assert REGISTRY[name].cls is REGISTRY[plain].cls
    assert REGISTRY[name].preset == {"rfs_prob": RFS_DEFAULT_PROB}
    assert 0 < RFS_DEFAULT_PROB < 1
    assert model_config(plain).rfs_prob == 0.0
    assert model_config(name).rfs_prob == RFS_DEFAULT_PROB
    assert model_config(name).variant_name() == f"{plain.upper()}+RFS"
    assert small_model(name, max_len=MAX_LEN).display_name() == f"{plain.upper()}+RFS"
    assert small_model(plain, max_len=MAX_LEN).display_name() == plain.upper()
    with pytest.raises(ConfigError, match="rfs_prob"):
        model_config(name, {"rfs_prob": 1.0})


# ---------------------------------------------------------------------- the models


class EncoderSpy:
    """Records the side-value visibility that ``encoder.embed`` resolves on each call."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []  # (visible, present)
        encoder = model.encoder
        real = encoder.embed

        def embed(items: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
            present = encoder.present(items)[..., 1:]
            self.calls.append((present if visible is None else visible, present))
            return real(items, visible)

        encoder.embed = embed


def pair(name: str, rfs_prob: float) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model without RFS and with ``rfs_prob``, with the same parameters."""
    plain = small_model(name, seed=3, max_len=MAX_LEN)
    rfs = small_model(name, seed=3, max_len=MAX_LEN, rfs_prob=rfs_prob)
    for (ka, va), (kb, vb) in zip(
        plain.state_dict().items(), rfs.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)
    return plain, rfs


@pytest.mark.parametrize("name", NAMES)
def test_scores_do_not_depend_on_rfs_prob(name: str) -> None:
    plain, rfs = pair(name, 0.9)
    history = random_windows(8, MAX_LEN - 1, seed=4)
    cand = torch.randint(2, 32, (8, 5), generator=gen(5))
    for mode in ("eval", "train"):  # scoring drops nothing, whatever the module's mode
        for m in (plain, rfs):
            getattr(m, mode)()
        assert torch.equal(plain.score(history), rfs.score(history)), mode
        assert torch.equal(plain.score(history, cand), rfs.score(history, cand)), mode
    spy = EncoderSpy(rfs)
    rfs.score(history)
    assert spy.calls and all(torch.equal(v, p) for v, p in spy.calls)


@pytest.mark.parametrize("name", NAMES)
def test_the_training_loss_sees_the_dropped_values(name: str) -> None:
    plain, rfs = pair(name, 0.9)
    items = random_windows(16, MAX_LEN, seed=6, min_len=3)
    batch = make_batch(items, rfs.batch_mode, MAX_LEN)
    plain.train()
    rfs.train()
    spy_plain, spy_rfs = EncoderSpy(plain), EncoderSpy(rfs)
    loss_plain = plain.loss(batch, gen(7))[0]
    loss_rfs = rfs.loss(batch, gen(7))[0]
    (seen_plain, present), (seen_rfs, _) = spy_plain.calls[-1], spy_rfs.calls[-1]
    # the same generator draws the same cloze mask (NOVA) first: RFS only takes values away
    assert not (seen_rfs & ~seen_plain).any()
    assert seen_rfs.sum() < 0.25 * seen_plain.sum(), (seen_rfs.sum(), seen_plain.sum())
    assert seen_plain.sum() > 0 and not (seen_plain & ~present).any()
    assert not torch.allclose(loss_plain, loss_rfs)


def test_fdsa_loss_is_the_loss_with_the_pure_functions_drops() -> None:
    model = small_model("fdsa-rfs", seed=1, max_len=MAX_LEN, rfs_prob=0.4).train()
    assert isinstance(model, FDSA)
    batch = make_batch(random_windows(12, MAX_LEN, seed=8, min_len=2), "packed", MAX_LEN)
    visible = rfs_drop(model.encoder.present(batch.items)[..., 1:], 0.4, gen(2))
    states = model(batch.items, window_positions(batch, MAX_LEN), batch.same_window(), visible)
    expected = next_item_loss(states, batch, model.item_emb.weight)[0]
    assert torch.equal(model.loss(batch, gen(2))[0], expected)


def test_nova_loss_is_the_loss_with_the_pure_functions_drops() -> None:
    model = small_model("nova-rfs", seed=1, max_len=MAX_LEN, rfs_prob=0.4).train()
    assert isinstance(model, NOVA)
    batch = make_batch(random_windows(12, MAX_LEN, seed=8, min_len=2), "packed", MAX_LEN)
    g = gen(2)
    hidden = model.draw_mask(batch, g)  # the cloze mask first, then RFS, from one generator
    visible = rfs_drop(model.encoder.present(batch.items)[..., 1:], 0.4, g)
    expected = model.masked_loss(batch, hidden, visible)[0]
    assert torch.equal(model.loss(batch, gen(2))[0], expected)
    # and without RFS, the loss is BERT4Rec's masked loss on the same mask
    plain = small_model("nova", seed=1, max_len=MAX_LEN).train()
    hidden = plain.draw_mask(batch, gen(2))
    assert torch.equal(plain.loss(batch, gen(2))[0], plain.masked_loss(batch, hidden)[0])
