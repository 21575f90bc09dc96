"""Contract tests of MIIR (all variants): shapes, finite losses, overfitting, padding
invariance, no leakage, save/load round trip, and learning planted structure."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import (
    FIELDS,
    N_ITEMS,
    assert_same_gradients,
    gen,
    load_bench,
    random_catalogue,
    random_windows,
    small_model,
)
from miir.models import VARIANTS
from miir.models.batch import ROW_BLOCK, Batch, padded_rows
from miir.models.fields import ItemCatalogue
from miir.models.miir import (
    MIIR,
    Masked,
    mii_mask,
    pack_windows,
    rec_mask,
    trim_left_padding,
)
from miir.training.checkpoint import load_checkpoint, save_checkpoint


def make_model(variant: str = "miir", dropout: float = 0.0, seed: int = 0, **kw) -> MIIR:
    options = {"n_layers": 2, "dropout": dropout, "max_len": 6, **kw}
    model = small_model(variant, ItemCatalogue(FIELDS, N_ITEMS), seed, **options)
    cat = random_catalogue()
    model.set_item_tables(cat.present, cat.values)
    return model


def batch(B: int = 4, n: int = 6, seed: int = 0) -> torch.Tensor:
    pad = torch.zeros(B, dtype=torch.long)
    pad[0] = 2  # left padding in the first row
    return random_windows(B, n, seed, pad=pad)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shapes_and_finite_losses(variant: str) -> None:
    model = make_model(variant, dropout=0.1)
    items = batch()
    present = model.present(items)
    assert present.shape == (4, 6, 5)
    assert not present[0, :2].any()  # padding has no fields
    masked = mii_mask(present, 0.5, generator=torch.Generator().manual_seed(0))
    out = model(items, masked.hidden)
    assert out.shape == (4, 6, 5, 16)
    loss, parts = model.masked_loss(items, masked)
    assert torch.isfinite(loss) and loss > 0
    # the default recipe's next-item loss (the scoring head) is trained in every variant
    assert set(parts) == {"item_id", "brand", "cats", "title", "price", "next_item"}
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    scores = model.score(items[:, 1:])
    assert scores.shape == (4, N_ITEMS + 2)
    assert torch.isinf(scores[:, :2]).all() and torch.isfinite(scores[:, 2:]).all()
    cand = torch.randint(2, N_ITEMS + 2, (4, 7))
    assert torch.allclose(model.score(items[:, 1:], cand), scores.gather(1, cand), atol=1e-5)


def test_masks_supervise_only_present_fields() -> None:
    model = make_model()
    present = model.present(batch(B=64))
    m = mii_mask(present, 0.5, generator=torch.Generator().manual_seed(0))
    assert not (m.targets & ~present).any()
    assert torch.equal(m.targets, m.hidden & present)
    frac = m.hidden[present].float().mean().item()
    assert 0.4 < frac < 0.6
    r = rec_mask(present, 0.5, generator=torch.Generator().manual_seed(0))
    assert not r.targets[..., 1:].any()  # Eq. 14 supervises item IDs only
    whole = r.hidden.all(-1) | ~r.hidden.any(-1)
    assert whole.all()  # an item is hidden with all its fields or not at all
    w = mii_mask(present, 0.5, item_mask_prob=0.99, generator=torch.Generator().manual_seed(0))
    assert w.hidden[present[..., 0]].all(-1).float().mean() > 0.95
    again = mii_mask(present, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.hidden, m.hidden)  # pure and seeded


@pytest.mark.parametrize("variant", ["miir", "miir-r", "sparse-miir", "miir-m"])
def test_overfits_one_batch(variant: str) -> None:
    # bidirectional (the paper's DFSA): a causal model cannot recover a whole-masked first
    # item, which has no prefix, so its loss on random windows has a floor above zero
    model = make_model(variant, causal=False)
    items = batch(B=8)
    masked = (
        rec_mask
        if variant == "miir-r"
        else lambda p, q, generator: mii_mask(p, q, generator=generator)
    )(model.present(items), 0.5, generator=torch.Generator().manual_seed(3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss, _ = model.masked_loss(items, masked)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


@pytest.mark.parametrize("variant", ["miir", "sparse-miir", "miir-m"])
def test_padding_invariance(variant: str) -> None:
    """Left padding is invisible: fewer or more padding columns, or other rows, change nothing."""
    model = make_model(variant).eval()
    items = batch()
    hist = items[:, 1:].clone()  # (4, 5)
    hist[0, :3] = 0
    full = model.score(hist)
    short = model.score(hist[:1, 3:])  # the same history without its padding
    assert torch.allclose(full[:1, 2:], short[:, 2:], atol=1e-5)
    alone = model.score(hist[1:2])
    assert torch.allclose(full[1:2, 2:], alone[:, 2:], atol=1e-5)


def test_target_fields_do_not_leak() -> None:
    """The query item never looks anything up: changing the target item's true fields (and its
    presence) does not change any score, including its own."""
    model = make_model().eval()
    hist = torch.tensor([[0, 0, 3, 4, 5]])
    target = 20
    before = model.score(hist)
    model.encoder.features.brand__values[target] = (
        6 if model.encoder.features.brand__values[target] != 6 else 5
    )
    model.encoder.features.brand__present[target] = ~model.encoder.features.brand__present[target]
    model.encoder.features.title__values[target] += 10.0
    model.encoder.features.cats__values[target] = torch.tensor([8, 7, 0])
    after = model.score(hist)
    assert torch.equal(before, after)
    # whereas a history item's fields do matter (the test can fail)
    model.encoder.features.title__values[4] += 10.0
    model.encoder.features.title__present[4] = True
    assert not torch.allclose(model.score(hist), after)


def test_next_item_scores_use_the_training_positions() -> None:
    """With the next-item head, a history is scored from the state its last item has inside
    a training window that ends with the target: one position left of the end (causal
    attention: the target changes nothing before it), not at the window's last position."""
    model = make_model().eval()  # max_len 6; the default: causal, next-item head
    assert model.config.causal and model.next_proj is not None
    window = torch.tensor([[3, 4, 5, 6, 7, 8], [0, 0, 9, 10, 11, 12]])
    hidden = torch.zeros(*window.shape, model.n_fields, dtype=torch.bool)
    with torch.no_grad():
        in_training = model.next_proj(model(window, hidden)[:, -2, 0])  # (B, e)
        scores = model.score(window[:, :-1])
        expected = model._rank(in_training, None)
    assert torch.allclose(scores, expected, atol=1e-5)
    # the same history placed at the last position (the old scoring) differs: the test can fail
    with torch.no_grad():
        last = model.next_proj(model(window[:, :-1], hidden[:, :-1])[:, -1, 0])
    assert not torch.allclose(model._rank(last, None), expected, atol=1e-3)


def test_sparse_attention_mask_follows_eq16() -> None:
    model = make_model("sparse-miir", causal=False)  # Eq. 16 as printed (both directions)
    items = batch()
    mask = model.attention_mask(items, model.present(items))  # (B, 1, T, T)
    F = model.n_fields
    i, j = 2 * F + 1, 3 * F + 2  # item 2 field 1 vs item 3 field 2: neither same item nor field
    assert not mask[1, 0, i, j]
    assert mask[1, 0, i, 3 * F + 1]  # same field, other item
    assert mask[1, 0, i, 2 * F + 3]  # same item, other field
    dense = make_model("miir", causal=False).attention_mask(items, model.present(items))
    assert dense.shape[-1] == items.shape[1] * F and dense[1].all()
    # the default recipe is causal: SFSA's pattern, later items cut off
    causal = make_model("sparse-miir").attention_mask(items, model.present(items))
    assert not causal[1, 0, i, 3 * F + 1] and causal[1, 0, 3 * F + 1, i]  # later vs earlier
    assert causal[1, 0, i, 2 * F + 3] and not causal[1, 0, i, j]


def test_mask_missing_hides_missing_fields_eq15() -> None:
    model = make_model("miir-m", causal=False)  # Eq. 15 as printed (both directions)
    items = batch()
    present = model.present(items)
    mask = model.attention_mask(items, present)
    B, n, F = present.shape
    keys = present.reshape(B, n * F).clone()
    keys.view(B, n, F)[..., 0] = items != 0  # ID fields of real items stay visible
    eye = torch.eye(n * F, dtype=torch.bool)
    assert torch.equal(mask[:, 0] & ~eye, keys[:, None, :].expand(B, n * F, n * F) & ~eye)


def test_save_load_round_trip(tmp_path) -> None:
    model = make_model("sparse-miir-r", dropout=0.2).eval()
    hist = batch()[:, 1:]
    path = save_checkpoint(model, tmp_path / "ckpt", extra={"note": "x"})
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "model.safetensors"]
    loaded, meta = load_checkpoint(path)
    assert meta["note"] == "x" and loaded.config == model.config
    assert torch.equal(model.score(hist), loaded.score(hist))
    imp_a, imp_b = model.impute(batch()), loaded.impute(batch())
    for name in imp_a:
        assert torch.equal(imp_a[name], imp_b[name])


def test_impute_shapes() -> None:
    model = make_model().eval()
    items = batch()
    preds = model.impute(items)
    assert preds["brand"].shape == (4, 6, 7) and (preds["brand"][..., :2] == 0).all()
    assert torch.allclose(preds["brand"].sum(-1), torch.ones(4, 6))  # a softmax over values
    assert preds["cats"].shape == (4, 6, 9) and (preds["cats"][..., :2] == 0).all()
    assert preds["title"].shape == (4, 6, 12)
    assert ((preds["cats"] >= 0) & (preds["cats"] <= 1)).all()


@pytest.mark.parametrize("variant", ["miir", "sparse-miir", "miir-m"])
def test_cutting_shared_padding_changes_no_loss(variant: str) -> None:
    """Columns that are padding in every row can be cut: the same loss on fewer tokens."""
    model = make_model(variant)
    items = batch(B=5)
    items[:, :3] = 0  # three columns of padding in every row
    items[1, 3] = 0
    cut = trim_left_padding(items, block=1)
    assert cut.shape == (5, 3) and torch.equal(cut, items[:, 3:])
    masked = mii_mask(model.present(items), 0.5, generator=torch.Generator().manual_seed(0))
    assert not masked.hidden[:, :3].any()
    short = Masked(masked.hidden[:, 3:], masked.targets[:, 3:])
    full_loss, full_parts = model.masked_loss(items, masked)
    cut_loss, cut_parts = model.masked_loss(cut, short)
    assert torch.allclose(full_loss, cut_loss, atol=1e-6)
    for name, value in full_parts.items():
        assert torch.allclose(value, cut_parts[name], atol=1e-6), name
    assert trim_left_padding(batch()).shape == (4, 6)  # padding in one row only: nothing cut


@given(st.integers(min_value=0, max_value=1 << 20))
@settings(max_examples=50, deadline=None)
def test_padded_rows_adds_at_most_a_quarter_and_takes_few_sizes(m: int) -> None:
    """The compact pass's row counts: never fewer rows, at most a quarter more (or 7 below
    64), and four sizes per doubling (so a chunk's row count repeats across chunks)."""
    p = padded_rows(m)
    assert m <= p <= max(m + 7, m + m // 4)
    assert padded_rows(p) == p
    for lo in (64, 256, 4096):
        assert len({padded_rows(x) for x in range(lo + 1, 2 * lo + 1)}) == 4


def test_trimmed_widths_come_in_blocks() -> None:
    """The trimmed width is rounded up to a multiple of the block (never past the row), so
    that evaluation's forward passes take a few shapes; the kept columns are the rightmost."""
    items = torch.zeros(3, 10, dtype=torch.long)
    for filled, block, width in [(3, 4, 4), (4, 4, 4), (5, 4, 8), (9, 4, 10), (5, 1, 5), (0, 4, 0)]:
        items.zero_()
        if filled:
            items[0, -filled:] = torch.arange(2, 2 + filled)
        cut = trim_left_padding(items, block=block)
        assert cut.shape == (3, width)
        assert torch.equal(cut, items[:, 10 - width :])
    assert trim_left_padding(torch.zeros(2, 4, dtype=torch.long)).shape == (2, 0)


@pytest.mark.parametrize("variant", ["miir", "miir-r", "sparse-miir", "miir-m"])
def test_packed_windows_have_the_loss_of_the_unpacked_batch(variant: str) -> None:
    """Windows packed into shared rows attend only within themselves and keep their positions:
    the loss and every per-field loss are those of the padded batch."""
    model = make_model(variant)
    items = random_windows(11, 6, seed=4)  # 1 to 6 items
    g = torch.Generator().manual_seed(0)
    present = model.present(items)
    masked = (
        rec_mask(present, 0.5, generator=g)
        if variant == "miir-r"
        else mii_mask(present, 0.5, 0.2, generator=g)
    )
    packed, packing = pack_windows(items)
    assert packed.shape[0] < items.shape[0]  # fewer rows
    moved = Masked(packing.move(masked.hidden), packing.move(masked.targets))
    loss, parts = model.masked_loss(items, masked)
    packed_loss, packed_parts = model.masked_loss(packed, moved, packing)
    assert torch.allclose(loss, packed_loss, atol=1e-5)
    for name, value in parts.items():
        assert torch.allclose(value, packed_parts[name], atol=1e-5), name
    assert_same_gradients(model, loss, packed_loss)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=24), st.integers(0, 2**31 - 1))
def test_pack_windows_places_every_item_once(lengths: list[int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(2, 50, (len(lengths), 6), generator=g)
    for r, n in enumerate(lengths):
        items[r, : 6 - n] = 0
    packed, p = pack_windows(items, max_len=8)
    used = int((p.windows >= 0).any(1).sum())  # rows holding a window
    assert packed.shape[1] == 6 and used <= max(1, len(lengths))
    # first-fit decreasing never uses more rows than twice the lower bound, plus one
    bound = 2 * -(-sum(lengths) // 6) + 1
    assert used <= bound
    # then empty rows up to a multiple of ROW_BLOCK (a few shapes: bench/results/shapes.md)
    assert packed.shape[0] == -(-max(used, 1) // ROW_BLOCK) * ROW_BLOCK
    assert (p.windows[used:] < 0).all()
    assert p.n_windows == len(lengths)
    for w, n in enumerate(lengths):
        slots = (p.windows == w).nonzero().tolist()
        assert len(slots) == n
        if n:
            assert len({r for r, _ in slots}) == 1  # one window, one row
            row, cols = slots[0][0], [c for _, c in slots]
            assert cols == list(range(cols[0], cols[0] + n))  # contiguous, in order
            assert packed[row, cols].tolist() == items[w, 6 - n :].tolist()
            assert p.positions[row, cols].tolist() == list(range(8 - n, 8))  # from the right
    empty = p.windows < 0
    assert (packed[empty] == 0).all() and (p.source[empty] == -1).all()
    assert (packed[~empty] != 0).all()


@pytest.mark.parametrize(
    ("name", "causal", "options"),
    [
        ("miir", True, {}),
        ("miir", False, {}),
        ("miir-m", True, {}),
        ("sparse-miir", True, {}),
        ("miir", True, {"side_output": True}),
        ("miir", True, {"readout": "item"}),
        ("miir", True, {"id_stream": True}),
        ("miir", True, {"fusion": "item"}),
        ("miir", False, {"fusion": "item"}),
    ],
)
def test_one_pass_scores_and_imputes_as_the_two_passes(
    name: str, causal: bool, options: dict
) -> None:
    """``score_and_impute`` (the service's recommend-with-imputations path) equals ``score``
    and ``impute`` of the history with the query appended, on padded rows; the history's
    width is checked."""
    model = make_model(name, causal=causal, **options).eval()  # max_len 6
    if options.get("side_output"):
        torch.nn.init.normal_(model.side_out.weight)  # else the side part starts at zero
    history = torch.tensor([[3, 4, 5, 6, 7], [0, 0, 9, 10, 11], [0, 0, 0, 0, 12]])
    query = torch.full((3, 1), 1)
    items = torch.cat([history, query], dim=1)
    hidden = torch.zeros(*items.shape, model.n_fields, dtype=torch.bool)
    hidden[:, -1] = True
    with torch.no_grad():
        scores, preds = model.score_and_impute(history)
        expected_scores, expected = model.score(history), model.impute(items, hidden)
    finite = torch.isfinite(expected_scores)
    assert torch.equal(finite, torch.isfinite(scores))
    assert torch.allclose(scores[finite], expected_scores[finite], atol=1e-5)
    assert preds.keys() == expected.keys()
    for name_, p in preds.items():
        real = (items != 0)[..., None] if p.dim() == 3 else items != 0  # padding rows aside
        assert torch.allclose(p * real, expected[name_] * real, atol=1e-5), name_
    with pytest.raises(ValueError, match="at most 5"):
        model.score_and_impute(torch.ones(1, 6, dtype=torch.long) * 3)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("miir", {}),
        ("miir", {"causal": False}),
        ("miir", {"norm_first": True}),
        ("miir-m", {}),
        ("sparse-miir", {}),
        ("miir", {"readout": "item"}),
        ("miir", {"n_layers": 1}),
        ("miir", {"id_stream": True, "norm_first": True}),
        ("miir", {"fusion": "item"}),
        ("miir", {"fusion": "item", "causal": False}),
    ],
)
def test_the_compact_inference_pass_equals_the_full_pass(name: str, options: dict) -> None:
    """``read`` (the serving path): the layers skip padding and the last layer computes only
    the tokens read; those states equal the full pass's, every other state is zero; the
    scores and the wanted predictions of ``score_and_impute`` equal the full ones."""
    model = make_model(name, **options).eval()  # max_len 6
    history = torch.tensor([[3, 4, 5, 6, 7], [0, 0, 9, 10, 11], [0, 0, 0, 0, 12]])
    items = torch.cat([history, torch.full((3, 1), 1)], dim=1)  # (3, 6)
    hidden = torch.zeros(*items.shape, model.n_fields, dtype=torch.bool)
    hidden[:, -1] = True
    read = torch.rand(*hidden.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    with torch.no_grad():
        full = model(items, hidden)
        compact = model(items, hidden, read=read)
        real = read & (items != 0)[..., None]
        assert torch.allclose(compact[real], full[real], atol=1e-5)
        assert not compact[~real].any()
        wanted = read[..., 1:].clone()
        wanted[:, -1] = True  # the query item's fields, as a server asks
        scores, preds = model.score_and_impute(history, wanted=wanted)
        all_scores, all_preds = model.score_and_impute(history)
    finite = torch.isfinite(all_scores)
    assert torch.equal(finite, torch.isfinite(scores))
    assert torch.allclose(scores[finite], all_scores[finite], atol=1e-5)
    for j, (field, p) in enumerate(preds.items()):
        at = wanted[..., j] & (items != 0)
        assert torch.allclose(p[at], all_preds[field][at], atol=1e-5), field
        if name != "sparse-miir":  # sparse attention runs its two full passes
            assert not p[~wanted[..., j]].any(), field
    with pytest.raises(ValueError, match="inference"):
        model.train()(items, hidden, read=read)


def test_side_output_scores_items_by_their_id_and_their_fields(tmp_path) -> None:
    """``side_output``: an item's output row is its ID embedding plus the linear map of the
    sum of its observed side-field embeddings (zero at the start); every score (full,
    candidates, the ID and next-item losses) reads that table, and it survives save/load."""
    model = make_model(side_output=True).eval()
    assert torch.equal(model.output_table(), model.item_emb.weight)  # zero map at the start
    torch.nn.init.normal_(model.side_out.weight, std=0.5)
    items = torch.arange(N_ITEMS + 2)
    fields = model.encoder.embed(items[None])[0].sum(dim=1)  # (N + 2, e)
    want = model.item_emb.weight + fields @ model.side_out.weight.T
    want[:2] = model.item_emb.weight[:2]  # padding and the unknown item: no fields
    table = model.output_table()
    assert torch.allclose(table, want, atol=1e-6)
    assert not torch.allclose(table, model.item_emb.weight)
    history = torch.tensor([[3, 4, 5, 6, 7], [0, 0, 9, 10, 11]])
    with torch.no_grad():
        full = model.score(history)
        cands = torch.tensor([[5, 8, 13], [2, 3, 4]])
        assert torch.allclose(model.score(history, cands), full.gather(1, cands), atol=1e-5)
        h = model._scoring_state(history)
        assert torch.allclose(full[:, 2:], h @ want[2:].T, atol=1e-5)
    # the training losses read it: the side map and the field tables get gradients
    model.train()
    items_ = batch()
    mask = mii_mask(model.present(items_), 0.5, 0.2, generator=torch.Generator().manual_seed(1))
    model.masked_loss(items_, mask)[0].backward()
    assert model.side_out.weight.grad.abs().sum() > 0
    codec_grads = [p.grad for p in model.encoder.codecs.parameters() if p.grad is not None]
    assert codec_grads and any(g.abs().sum() > 0 for g in codec_grads)
    # the next-item loss alone reaches the side map too (its logits use the table)
    model.zero_grad()
    out = model(items_, torch.zeros_like(mask.hidden))
    model.next_item_losses(items_, out, Batch(items_)).sum().backward()
    assert model.side_out.weight.grad.abs().sum() > 0
    model.eval()
    save_checkpoint(model, tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck")[0].eval()
    with torch.no_grad():
        assert torch.allclose(loaded.score(history), full, equal_nan=True)


def test_item_readout_reads_every_field_of_the_item() -> None:
    """``readout='item'``: the next-item head reads the concatenated states of all of an
    item's field tokens (its input is F * e wide); a side field's state moves the scores
    through the head directly, not only through attention; it needs a next-item head."""
    model = make_model(readout="item").eval()
    e = model.config.embedding_size
    assert model.next_proj.in_features == model.n_fields * e
    history = torch.tensor([[3, 4, 5, 6, 7], [0, 0, 9, 10, 11]])
    with torch.no_grad():
        base = model.score(history)
        model.next_proj.weight[:, e:] = 0  # the side fields' part of the head off
        assert not torch.allclose(model.score(history)[:, 2:], base[:, 2:])
    with pytest.raises(ValueError, match="needs a next-item head"):
        MIIR.Config(readout="item", causal=False)


def test_clean_next_item_loss_reads_the_unmasked_window() -> None:
    """``next_item_clean``: the next-item loss is that of the unmasked window, whatever the MII
    mask hides; without it the mask changes the next-item loss (so the test can fail)."""
    items = batch()
    present = make_model().present(items)
    masks = [
        mii_mask(present, 0.5, 0.2, generator=torch.Generator().manual_seed(s)) for s in (1, 2)
    ]
    none = mii_mask(present, 1e-9)  # hides (almost surely) nothing
    assert not none.hidden.any()
    clean = make_model(next_item_clean=True)
    parts = [clean.masked_loss(items, m)[1] for m in masks]
    expected = clean.masked_loss(items, none)[1]["next_item"]
    assert all(torch.allclose(p["next_item"], expected) for p in parts)
    assert not torch.allclose(parts[0]["item_id"], parts[1]["item_id"])  # MII still masked
    one_pass = make_model(next_item_clean=False)
    a, b = (one_pass.masked_loss(items, m)[1]["next_item"] for m in masks)
    assert not torch.allclose(a, b)


def test_a_field_weighted_zero_is_not_computed_and_the_loss_is_unchanged() -> None:
    items = batch()
    mask = mii_mask(
        make_model().present(items), 0.5, 0.2, generator=torch.Generator().manual_seed(4)
    )
    full = make_model()  # every field weighted (item_id: 3 by default)
    _, parts = full.masked_loss(items, mask)
    assert parts["item_id"] > 0 and parts["brand"] > 0
    no_id = make_model(field_weights={"item_id": 0.0, "brand": 0.0})
    loss, skipped = no_id.masked_loss(items, mask)
    assert float(skipped["item_id"]) == 0.0 and float(skipped["brand"]) == 0.0
    expected = sum(v for k, v in parts.items() if k not in ("item_id", "brand"))
    assert torch.allclose(loss, expected, atol=1e-6)


def test_clean_next_item_alone_skips_the_masked_pass() -> None:
    """With every MII loss weighted 0 and the next-item loss on the clean pass, the masked
    pass is not run: one forward pass, the same loss as computing and weighting it away."""
    items = batch()
    mask = mii_mask(
        make_model().present(items), 0.5, 0.2, generator=torch.Generator().manual_seed(3)
    )
    zero = {name: 0.0 for name in ("item_id", *(f.name for f in FIELDS))}
    alone = make_model(next_item_clean=True, field_weights=zero)
    calls = []
    alone.register_forward_hook(lambda *_: calls.append(1))
    loss, parts = alone.masked_loss(items, mask)
    assert len(calls) == 1
    assert all(float(v) == 0.0 for k, v in parts.items() if k != "next_item")
    both = make_model(next_item_clean=True)  # same seed: same weights; the masked pass runs
    expected = both.masked_loss(items, mask)[1]
    assert expected["item_id"] > 0
    assert torch.allclose(loss, expected["next_item"])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.integers(1, 70), st.integers(0, 2**31 - 1))
def test_gather_positions_blocks_the_true_entries(B: int, n: int, block: int, seed: int) -> None:
    """The weighted entries are exactly the True ones, in order; repeats fill a block and weigh
    nothing."""
    from miir.models.batch import gather_positions

    sel = torch.rand(B, n, generator=torch.Generator().manual_seed(seed)) < 0.4
    b, t, w = gather_positions(sel, block)
    M = int(sel.sum())
    assert len(b) == len(t) == len(w) and (len(w) % block == 0 if M else len(w) == 0)
    assert w[:M].eq(1).all() and w[M:].eq(0).all()
    assert sel[b, t].all()
    assert torch.stack([b[:M], t[:M]], 1).tolist() == sel.nonzero().tolist()


@pytest.mark.parametrize(
    "options",
    [{}, {"loss_mean": "sequence", "field_weights": {}}],  # the default; Eq. 13's weighing
    ids=["default", "paper-loss"],
)
def test_bench_train_naive_formulation_computes_our_loss(options) -> None:
    """bench/bench_train.py times MIIR against a straightforward formulation (a plain
    nn.TransformerEncoder, every head at every position): the speed-up compares like with
    like only while both compute one loss, packed or padded, under the config's weights and
    mean."""
    bench = load_bench("bench_train")
    model = small_model("miir", causal=False, **options).eval()
    naive = bench.NaiveMIIR(model).eval()
    items = random_windows(6, 8, seed=3)
    masked = model.draw_mask(items, gen(4), None)
    assert masked.targets.any()
    for batching in ("packed", "padded"):
        ours_items, ours_masked, packing = bench.prepared_with_mask(
            items, masked, batching, model.config.max_len
        )
        with torch.no_grad():
            ours = model.masked_loss(ours_items, ours_masked, packing)[0]
            assert torch.allclose(naive.loss(items, masked), ours, rtol=1e-5), batching
