"""The training-recipe levers of issue 9: each option does what its name says."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from helpers import N_ITEMS, random_catalogue, random_windows, small_model
from miir.errors import ConfigError
from miir.models.batch import make_batch
from miir.models.fields import ItemCatalogue, MultiCodec
from miir.models.masking import hide_last_items, last_of_sequence, mii_mask
from miir.training.module import lr_factor

FIELDS_OF = random_catalogue().fields


def miir(**kw):
    model = small_model("miir", ItemCatalogue(FIELDS_OF, N_ITEMS), 0, max_len=6, **kw)
    cat = random_catalogue()
    model.set_item_tables(cat.present, cat.values)
    return model


def successor_accuracy(steps: int, **options) -> float:
    """Train a MIIR (``options``, no dropout) on windows where item i is always followed by
    item i + 1; the share of 16 histories whose top-scored next item is that successor."""
    torch.manual_seed(0)
    model = miir(dropout=0.0, **options)
    starts = torch.randint(2, N_ITEMS + 2 - 6, (64,))
    chains = starts[:, None] + torch.arange(6)[None]  # (64, 6): i, i + 1, ...
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        loss, _ = model.loss(make_batch(chains, "packed", 6), torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        top = model.score(chains[:16, :5]).argmax(-1)
    return (top == chains[:16, 5]).float().mean().item()


def test_hide_last_items_hides_the_whole_last_item_of_each_window() -> None:
    items = random_windows(9, 6, seed=2, min_len=2)
    batch = make_batch(items, "packed", 6)
    model = miir()
    present = model.present(batch.items)
    base = mii_mask(present, 0.3, generator=torch.Generator().manual_seed(0))
    last = last_of_sequence(batch.items, batch.packing.windows)
    assert int(last.sum()) == 9  # one last item per window
    out = hide_last_items(base, present, last, batch.owner(), batch.n_seqs, 1.0)
    # every field of every last item hidden, and its present fields supervised
    assert out.hidden[last].all()
    assert torch.equal(out.targets, out.hidden & present)
    # on top of the MII mask: nothing that was hidden is shown
    assert (out.hidden | ~base.hidden).all()
    # clean: the other items of the window are shown
    clean = hide_last_items(base, present, last, batch.owner(), batch.n_seqs, 1.0, clean=True)
    assert torch.equal(clean.hidden.any(-1), last)
    # probability 0 changes nothing
    assert hide_last_items(base, present, last, batch.owner(), batch.n_seqs, 0.0) is base


def test_last_item_prob_selects_about_that_share_of_windows() -> None:
    items = random_windows(400, 6, seed=3, min_len=2)
    batch = make_batch(items, "packed", 6)
    model = miir(last_item_prob=0.5, last_item_clean=True, item_mask_prob=0.0, mask_prob=0.01)
    masked = model.draw_mask(batch.items, torch.Generator().manual_seed(1), batch.packing)
    last = last_of_sequence(batch.items, batch.packing.windows)
    share = masked.hidden[last].all(-1).float().mean().item()
    assert 0.42 < share < 0.58


def test_last_item_prob_trains_on_packed_and_unpacked_batches_alike() -> None:
    """The same windows, packed or padded, with the last item always hidden and nothing else
    (clean): the same hidden items, so the same loss."""
    model = miir(last_item_prob=1.0, last_item_clean=True)
    items = random_windows(7, 6, seed=5, min_len=2)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    loss_packed, _ = model.loss(make_batch(items, "packed", 6), g())
    loss_padded, _ = model.loss(make_batch(items, "none", 6), g())
    assert torch.allclose(loss_packed, loss_padded, atol=1e-5)


def test_embedding_init_normal_gives_every_table_the_same_scale() -> None:
    xavier = miir(embedding_init="xavier")
    normal = miir(embedding_init="normal")
    ratio_x = xavier.pos_emb.weight.std() / xavier.item_emb.weight.std()
    ratio_n = normal.pos_emb.weight.std() / normal.item_emb.weight.std()
    assert ratio_x > 1.3  # xavier: the position table starts larger than the item table
    assert 0.5 < ratio_n < 2.0
    assert abs(normal.item_emb.weight.std().item() - 0.02) < 0.005


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_lr_factor_warms_up_then_follows_the_schedule(schedule: str) -> None:
    f = [lr_factor(s, warmup=10, total=110, schedule=schedule) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(f[:10]))
    if schedule == "constant":
        assert f[-1] == 1.0
    else:
        assert all(a >= b for a, b in itertools.pairwise(f[10:]))
        assert f[-1] < 0.03
        mid = lr_factor(60, warmup=10, total=110, schedule=schedule)
        assert mid == pytest.approx(
            0.5 if schedule == "linear" else 0.5 * (1 + math.cos(math.pi / 2))
        )


def test_pre_ln_miir_keeps_packing_exact_and_learns() -> None:
    """``norm_first``: pre-LN layers and a final LayerNorm; packed rows still give the padded
    batch's loss, and a few steps lower the loss on a fixed batch."""
    model = miir(norm_first=True, last_item_prob=1.0, last_item_clean=True)
    assert model.final_norm is not None and miir().final_norm is None
    items = random_windows(7, 6, seed=5, min_len=2)
    packed, _ = model.loss(make_batch(items, "packed", 6), torch.Generator().manual_seed(0))
    padded, _ = model.loss(make_batch(items, "none", 6), torch.Generator().manual_seed(0))
    assert torch.allclose(packed, padded, atol=1e-5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss, _ = model.loss(make_batch(items, "packed", 6), torch.Generator().manual_seed(0))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_causal_miir_never_reads_later_items_and_keeps_packing_exact() -> None:
    """``causal``: the states of an item depend on that item and earlier ones only (so a
    hidden item is predicted from its prefix, like the appended query); packed rows still
    give the padded batch's loss."""
    model = miir().eval()  # causal is the default
    assert model.config.causal
    items = random_windows(5, 6, seed=3, min_len=6)  # full windows
    changed = items.clone()
    changed[:, 4:] = torch.flip(items[:, 4:], dims=[0])  # other later items
    hidden = torch.zeros(*items.shape, model.n_fields, dtype=torch.bool)
    with torch.no_grad():
        a, b = model(items, hidden), model(changed, hidden)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-3)
    dense = miir(causal=False).eval()  # the paper's bidirectional DFSA, the same weights
    dense.load_state_dict({k: v for k, v in model.state_dict().items() if "next_proj" not in k})
    with torch.no_grad():  # the dense model reads later items: the same change reaches back
        assert not torch.allclose(dense(items, hidden)[:, :4], dense(changed, hidden)[:, :4])
    model = miir(causal=True, last_item_prob=1.0, last_item_clean=True)  # the same mask
    items = random_windows(7, 6, seed=5, min_len=2)
    packed, _ = model.loss(make_batch(items, "packed", 6), torch.Generator().manual_seed(0))
    padded, _ = model.loss(make_batch(items, "none", 6), torch.Generator().manual_seed(0))
    assert torch.allclose(packed, padded, atol=1e-5)


def test_next_item_loss_needs_causal_keeps_packing_exact_and_learns_a_planted_successor() -> None:
    """``next_item_weight``: every item predicts its successor (SASRec's signal) in a causal
    MIIR; it is refused without ``causal``; packed rows give the padded loss; and on windows
    where item i is always followed by item i + 1 the model learns to rank that successor
    first, from the last history item."""
    from miir.errors import ConfigError
    from miir.models import model_config

    with pytest.raises(ConfigError, match="needs causal"):
        model_config("miir", {"causal": False, "next_item_weight": 1.0})
    # the default recipe has both; causal=false alone turns the next-item loss off
    assert model_config("miir", {}).next_item_weight == 1.0
    assert model_config("miir", {"causal": "false"}).next_item_weight == 0.0
    model = miir(causal=True, next_item_weight=1.0, last_item_prob=1.0, last_item_clean=True)
    items = random_windows(7, 6, seed=5, min_len=2)
    packed, parts = model.loss(make_batch(items, "packed", 6), torch.Generator().manual_seed(0))
    padded, _ = model.loss(make_batch(items, "none", 6), torch.Generator().manual_seed(0))
    assert "next_item" in parts and torch.allclose(packed, padded, atol=1e-5)

    assert successor_accuracy(steps=150, causal=True, next_item_weight=1.0) > 0.8


def test_clean_next_item_keeps_packing_exact_learns_and_needs_a_next_item_loss() -> None:
    """``next_item_clean``: the next-item loss from an unmasked pass keeps packed rows exact and
    learns a planted successor; without a next-item loss (bidirectional, weight 0) it is off,
    so those configs (and their recorded runs' keys) do not change with its default."""
    from miir.models import model_config

    assert model_config("miir", {"causal": False}).next_item_clean is False
    assert model_config("miir", {"next_item_weight": 0.0}).next_item_clean is False
    assert model_config("miir", {"next_item_clean": True}).next_item_clean is True
    model = miir(causal=True, next_item_weight=1.0, next_item_clean=True)
    items = random_windows(7, 6, seed=5, min_len=2)
    # the masks of packed and padded rows differ (drawn over different shapes); the clean
    # next-item loss does not depend on them, so it is the same on both layouts
    _, packed = model.loss(make_batch(items, "packed", 6), torch.Generator().manual_seed(0))
    _, padded = model.loss(make_batch(items, "none", 6), torch.Generator().manual_seed(1))
    assert torch.allclose(packed["next_item"], padded["next_item"], atol=1e-5)

    assert (
        successor_accuracy(steps=100, causal=True, next_item_weight=1.0, next_item_clean=True) > 0.8
    )


def test_id_stream_reads_ids_alone_causally_keeps_packing_exact_and_learns() -> None:
    """``id_stream``: a causal attention over the item IDs alone whose state joins DFSA's in
    the next-item head: refused without that head; its states at an item depend on that
    item and earlier ones only, never on side fields; packed rows give the padded loss; the
    next-item scores depend on it; and it learns a planted successor."""
    from miir.errors import ConfigError
    from miir.models import model_config

    with pytest.raises(ConfigError, match="id_stream needs a next-item head"):
        model_config("miir", {"id_stream": True, "causal": False})
    model = miir(id_stream=True).eval()
    assert model.next_proj.in_features == 2 * model.config.embedding_size
    items = random_windows(5, 6, seed=3, min_len=6)  # full windows
    changed = items.clone()
    changed[:, 4:] = torch.flip(items[:, 4:], dims=[0])  # other later items
    with torch.no_grad():
        a, b = model.id_states(items), model.id_states(changed)
        assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)
        assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-3)
        other = miir(id_stream=True).eval()  # other side values, the same weights
        other.load_state_dict(model.state_dict())
        cat = random_catalogue(seed=9)
        other.set_item_tables(cat.present, cat.values)
        assert torch.allclose(other.id_states(items), a, atol=1e-6)  # no side field enters
        before = model.score(items[:, :5])
        for p in model.id_blocks.parameters():
            p.add_(0.5)
        assert not torch.allclose(model.score(items[:, :5]), before, atol=1e-3)
    model = miir(id_stream=True, last_item_prob=1.0, last_item_clean=True)
    items = random_windows(7, 6, seed=5, min_len=2)
    packed, parts = model.loss(make_batch(items, "packed", 6), torch.Generator().manual_seed(0))
    padded, _ = model.loss(make_batch(items, "none", 6), torch.Generator().manual_seed(0))
    assert "next_item" in parts and torch.allclose(packed, padded, atol=1e-5)
    packed.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.id_blocks.parameters())

    assert successor_accuracy(steps=150, id_stream=True) > 0.8


def test_item_fusion_attends_over_items_hides_what_mii_hides_and_learns() -> None:
    """``fusion='item'``: one token per item (the mean of its field embeddings), so attention
    maps are (n, n); refused with field-token options (SFSA, MIIR-M); a hidden field's value
    never reaches any state; causal: an item's states depend on that item and earlier ones
    only; packed rows give the padded loss; every field state starts as its item's state; and
    it learns a planted successor."""
    from miir.errors import ConfigError
    from miir.models import model_config

    for bad in ({"attention": "sparse"}, {"mask_missing": True}):
        with pytest.raises(ConfigError, match="fusion='item'"):
            model_config("miir", {"fusion": "item", **bad})
    model = miir(fusion="item").eval()
    items = random_windows(5, 6, seed=3, min_len=6)  # full windows
    hidden = torch.zeros(*items.shape, model.n_fields, dtype=torch.bool)
    with torch.no_grad():
        record: list[torch.Tensor] = []
        out = model(items, hidden, record=record)
        assert out.shape == (5, 6, model.n_fields, model.config.embedding_size)
        assert record[0].shape[-2:] == (6, 6)  # items, not fields, attend
        # zero-initialised per-field maps: every field reads its item's state
        assert torch.allclose(out, out[:, :, :1].expand_as(out))
        changed = items.clone()
        changed[:, 4:] = torch.flip(items[:, 4:], dims=[0])
        later = model(changed, hidden)
        assert torch.allclose(out[:, :4], later[:, :4], atol=1e-6)
        assert not torch.allclose(out[:, 4:], later[:, 4:], atol=1e-3)
        # a hidden ID and hidden side fields: their values never reach a state
        hidden[:, 2] = True
        swapped = items.clone()
        swapped[:, 2] = torch.flip(items[:, 2], dims=[0])
        assert torch.allclose(model(items, hidden), model(swapped, hidden), atol=1e-6)
    model = miir(fusion="item", last_item_prob=1.0, last_item_clean=True)
    items = random_windows(7, 6, seed=5, min_len=2)
    packed, parts = model.loss(make_batch(items, "packed", 6), torch.Generator().manual_seed(0))
    padded, _ = model.loss(make_batch(items, "none", 6), torch.Generator().manual_seed(0))
    assert "next_item" in parts and torch.allclose(packed, padded, atol=1e-5)
    packed.backward()
    assert model.unfuse.weight.grad.abs().sum() > 0

    assert successor_accuracy(steps=100, fusion="item") > 0.8


def test_item_loss_mean_weighs_every_item_alike() -> None:
    """``loss_mean='item'``: the batch's weighted loss sums over its number of items, so it
    equals Eq. 13's mean over sequences when every window has the same length and differs
    when they do not; packed rows give the padded loss."""
    full = random_windows(6, 6, seed=4, min_len=6)  # every window 6 items
    mixed = random_windows(6, 6, seed=4, min_len=2)
    for items, same in ((full, True), (mixed, False)):
        losses = {}
        for norm in ("sequence", "item"):
            model = miir(loss_mean=norm, dropout=0.0)
            torch.manual_seed(0)
            model.reset_parameters()
            batch = make_batch(items, "none", 6)
            losses[norm], _ = model.loss(batch, torch.Generator().manual_seed(0))
        assert torch.isclose(losses["sequence"], losses["item"], atol=1e-6) == same
    # the same hidden items in both layouts: each window's last item, nothing else
    model = miir(loss_mean="item", dropout=0.0, last_item_prob=1.0, last_item_clean=True)
    packed, _ = model.loss(make_batch(mixed, "packed", 6), torch.Generator().manual_seed(0))
    padded, _ = model.loss(make_batch(mixed, "none", 6), torch.Generator().manual_seed(0))
    assert torch.allclose(packed, padded, atol=1e-5)


def test_next_item_exclude_history_leaves_the_window_s_earlier_items_out_of_the_softmax() -> None:
    """``next_item_exclude_history``: each next-item prediction's softmax runs over the
    catalogue without the items at or before it in its window, except its target (a repeat
    stays a target); the loss it gives is the hand-computed one, lower than the full softmax's;
    packed rows give the padded loss; it needs a next-item loss."""
    import torch.nn.functional as F

    from miir.data.schema import FIRST_VALUE_ID
    from miir.models import model_config
    from miir.models.masking import Masked

    with pytest.raises(ValueError, match="needs a next-item loss"):
        model_config("miir", {"causal": False, "next_item_exclude_history": True})
    zero = {"item_id": 0.0, **{f.name: 0.0 for f in FIELDS_OF}}  # the next-item loss alone
    model = miir(next_item_exclude_history=True, field_weights=zero).eval()
    plain = miir(next_item_exclude_history=False, field_weights=zero).eval()
    a, b, c = 5, 9, 13
    items = torch.tensor([[0, a, b, a, c, b]])  # a repeats as a target; b is history of it
    shown = torch.zeros(*items.shape, 1 + len(FIELDS_OF), dtype=torch.bool)
    nothing = Masked(shown, shown)
    with torch.no_grad():
        _, parts = model.masked_loss(items, nothing)
        _, plain_parts = plain.masked_loss(items, nothing)
        out = model(items, shown)
        table = model.output_table()[FIRST_VALUE_ID:]
        total = 0.0
        for t in range(1, 5):  # the items with a successor
            logits = model._next_state(out[0, t]) @ table.T
            target = int(items[0, t + 1]) - FIRST_VALUE_ID
            for earlier in items[0, 1 : t + 1].tolist():
                if earlier - FIRST_VALUE_ID != target:
                    logits[earlier - FIRST_VALUE_ID] = float("-inf")
            total += F.cross_entropy(logits[None].float(), torch.tensor([target])).item()
    assert math.isclose(parts["next_item"].item(), total / 5, rel_tol=1e-5)  # 5 items
    assert parts["next_item"] < plain_parts["next_item"]
    windows = random_windows(7, 6, seed=5, min_len=2)
    model = miir(next_item_exclude_history=True, next_item_clean=True)
    _, packed = model.loss(make_batch(windows, "packed", 6), torch.Generator().manual_seed(0))
    _, padded = model.loss(make_batch(windows, "none", 6), torch.Generator().manual_seed(1))
    assert torch.allclose(packed["next_item"], padded["next_item"], atol=1e-5)


def test_next_item_fraction_samples_items_weighs_them_up_and_keeps_the_other_masks() -> None:
    """``next_item_fraction``: a step's next-item loss is computed at about that share of the
    items, each weighted 1 / fraction: with the sample given, the loss is the hand-computed one
    over the sampled items; over many draws its mean is the full loss; at 1 nothing is drawn
    (the MII masks are those of a model without the option); it needs a next-item loss; a
    sampled model still learns a planted successor."""
    import torch.nn.functional as F

    from miir.data.schema import FIRST_VALUE_ID
    from miir.models import model_config
    from miir.models.masking import Masked

    with pytest.raises(ValueError, match="needs a next-item loss"):
        model_config("miir", {"causal": False, "next_item_fraction": 0.5})
    zero = {"item_id": 0.0, **{f.name: 0.0 for f in FIELDS_OF}}  # the next-item loss alone
    model = miir(next_item_fraction=0.25, field_weights=zero).eval()
    items = random_windows(8, 6, seed=2, min_len=6)  # 8 full windows of 6 items
    shown = torch.zeros(*items.shape, 1 + len(FIELDS_OF), dtype=torch.bool)
    batch = make_batch(items, "none", 6)
    third = torch.zeros_like(items, dtype=torch.bool)
    third[:, 2] = True  # item 2 of each window alone predicts item 3
    with torch.no_grad():
        out = model(items, shown)
        full = model.next_item_losses(items, out, batch)  # (8,) per-window sums, every item
        every = torch.ones_like(third)
        assert torch.allclose(model.next_item_losses(items, out, batch, sample=every), 4 * full)
        logits = model._next_state(out[:, 2]) @ model.output_table()[FIRST_VALUE_ID:].T
        ce = F.cross_entropy(logits.float(), items[:, 3] - FIRST_VALUE_ID, reduction="none")
        by_hand = 4 * ce.sum() / 48
        _, parts = model.masked_loss(items, Masked(shown, shown, third))
        assert torch.isclose(parts["next_item"], by_hand, rtol=1e-5)  # 48 items in the batch
        drawn, shares = [], []
        for seed in range(400):
            masked = model.draw_mask(items, torch.Generator().manual_seed(seed))
            shares.append(masked.next_items.float().mean())
            _, parts = model.masked_loss(items, Masked(shown, shown, masked.next_items))
            drawn.append(parts["next_item"])
        _, parts = model.masked_loss(items, Masked(shown, shown))
    assert abs(torch.stack(shares).mean().item() - 0.25) < 0.01
    assert torch.isclose(torch.stack(drawn).mean(), parts["next_item"], rtol=0.05)  # unbiased
    # at 1 no number is drawn: the MII masks equal a plain model's, draw for draw
    a = miir().draw_mask(items, torch.Generator().manual_seed(3))
    b = miir(next_item_fraction=1.0).draw_mask(items, torch.Generator().manual_seed(3))
    assert b.next_items is None and torch.equal(a.hidden, b.hidden)
    assert successor_accuracy(100, next_item_fraction=0.5) > 0.8


def test_sampled_negatives_draw_candidates_correct_them_and_estimate_the_full_softmax() -> None:
    """``sampled_negatives``: a step's item-ID losses run over the batch's items plus k items
    drawn uniformly, each drawn item outside the batch raised by log(N / k), the set padded to
    a block with rows that never win; over many draws the softmax's denominator is the whole
    catalogue's (exp of the loss is unbiased); at 0 nothing is drawn; it refuses the
    whole-catalogue option next_item_exclude_history; a sampled model still learns a planted
    successor, and it scores the whole catalogue."""
    from miir.data.schema import FIRST_VALUE_ID
    from miir.models import model_config
    from miir.models.masking import Masked
    from miir.models.miir import CANDIDATE_BLOCK

    with pytest.raises(ValueError, match="takes no sampled_negatives"):
        model_config("miir", {"next_item_exclude_history": True, "sampled_negatives": 8})
    model = miir(sampled_negatives=8).eval()
    items = random_windows(3, 6, seed=4, min_len=2)  # a few windows: most items not in them
    masked = model.draw_mask(items, torch.Generator().manual_seed(0))
    drawn = masked.negatives
    assert drawn.shape == (8,) and drawn.unique().numel() == 8
    assert int(drawn.min()) >= 0 and int(drawn.max()) < N_ITEMS
    with torch.no_grad():
        softmax = model.id_softmax(items, drawn)
        full = model.output_table()[FIRST_VALUE_ID:]
    batch_ids = (items[items >= FIRST_VALUE_ID] - FIRST_VALUE_ID).unique()
    outside = drawn[~torch.isin(drawn, batch_ids)]
    size = batch_ids.numel() + outside.numel()
    assert softmax.table.shape[0] % CANDIDATE_BLOCK == 0 and softmax.table.shape[0] >= size
    rows = softmax.column[torch.cat([batch_ids, outside]) + FIRST_VALUE_ID]
    assert sorted(rows.tolist()) == list(range(size))  # every candidate once, padding after
    assert torch.equal(softmax.table[rows], full[torch.cat([batch_ids, outside])])
    bias = softmax.bias
    assert torch.equal(bias[rows[: batch_ids.numel()]], torch.zeros(batch_ids.numel()))
    assert torch.allclose(bias[rows[batch_ids.numel() :]], torch.tensor(math.log(N_ITEMS / 8)))
    assert torch.isinf(bias[size:]).all()
    # unbiased: E[exp(sampled loss)] = exp(full loss) for every state and batch target
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, full.shape[1], generator=g) * 4
    targets = items[items >= FIRST_VALUE_ID][:5]
    with torch.no_grad():
        want = model.id_softmax(items).loss(h, targets).exp()
        draws = [
            model.id_softmax(items, torch.randperm(N_ITEMS, generator=g)[:8]).loss(h, targets)
            for _ in range(3000)
        ]
    torch.testing.assert_close(torch.stack(draws).exp().mean(0), want, rtol=0.03, atol=0)
    # the training loss reads it: with every item drawn in, the sampled loss is the full one
    shown = torch.zeros(*items.shape, 1 + len(FIELDS_OF), dtype=torch.bool)
    hidden = shown.clone()
    hidden[..., 0] = items >= FIRST_VALUE_ID
    with torch.no_grad():
        _, plain = model.masked_loss(items, Masked(hidden, hidden))
        everything = torch.arange(N_ITEMS)
        _, parts = model.masked_loss(items, Masked(hidden, hidden, negatives=everything))
    for name in ("item_id", "next_item"):
        torch.testing.assert_close(parts[name], plain[name])
    # at 0 no number is drawn: the masks equal a plain model's, draw for draw
    a = miir().draw_mask(items, torch.Generator().manual_seed(3))
    b = miir(sampled_negatives=0).draw_mask(items, torch.Generator().manual_seed(3))
    assert b.negatives is None and torch.equal(a.hidden, b.hidden)
    assert successor_accuracy(100, sampled_negatives=8) > 0.8


def test_multi_loss_per_value_divides_the_summed_cross_entropy_by_the_true_values() -> None:
    """``multi_loss='per_value'``: a multi-valued field's binary cross-entropy summed over its
    values and divided by the item's number of true values (1 where the set is empty), where
    Eq. 11 ('mean') divides by the number of values; an unknown normalisation is refused."""
    info = next(f for f in FIELDS_OF if f.kind.value == "multi_categorical")
    n_values = info.cardinality - 2  # ids 0 and 1 are padding and missing
    torch.manual_seed(0)
    codecs = {norm: MultiCodec(info, 8, norm) for norm in ("mean", "per_value")}
    codecs["per_value"].load_state_dict(codecs["mean"].state_dict())
    h = torch.randn(3, 8)
    values = torch.tensor([[2, 5, 0], [3, 4, 6], [0, 0, 0]])  # 2, 3 and 0 true values
    mean, per_value = (codecs[norm].loss(h, values) for norm in ("mean", "per_value"))
    by_hand = mean * n_values / torch.tensor([2.0, 3.0, 1.0])
    assert torch.allclose(per_value, by_hand, rtol=1e-5)
    with pytest.raises(ConfigError, match="multi_loss"):
        MultiCodec(info, 8, "sum")


def test_multi_loss_reaches_the_model_and_changes_only_the_multi_valued_field() -> None:
    """The MIIR option reaches the codec: with the same masks, only the multi-valued field's
    loss part changes (scaled up: its values outnumber an item's true ones)."""
    parts = {}
    for norm in ("mean", "per_value"):
        model = miir(multi_loss=norm, dropout=0.0)
        torch.manual_seed(0)
        model.reset_parameters()
        batch = make_batch(random_windows(6, 6, seed=4, min_len=2), "none", 6)
        _, parts[norm] = model.loss(batch, torch.Generator().manual_seed(0))
    multi = next(f.name for f in FIELDS_OF if f.kind.value == "multi_categorical")
    assert parts["per_value"][multi] > 1.5 * parts["mean"][multi]
    for name in parts["mean"]:
        if name != multi:
            assert torch.equal(parts["mean"][name], parts["per_value"][name])


def test_multi_hot_keeps_the_first_value_beside_padding() -> None:
    """The first real value (id 2) shares column 0 with the padding ids (0) it is written
    beside: padding never erases it, wherever it stands in the row."""
    info = next(f for f in FIELDS_OF if f.kind.value == "multi_categorical")
    codec = MultiCodec(info, 4)
    values = torch.tensor([[2, 5, 0], [0, 2, 3], [0, 0, 0], [4, 0, 0]])
    hot = codec.multi_hot(values, torch.zeros(4, info.cardinality - 2))
    expected = torch.zeros(4, info.cardinality - 2)
    expected[0, [0, 3]] = expected[1, [0, 1]] = expected[3, 2] = 1.0
    assert torch.equal(hot, expected)
