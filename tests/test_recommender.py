"""The Python facade (:mod:`miir.recommender`) and its batch CLI: loading a run, saving and
loading, recommending from catalogue ids and inline item records, imputing, batch scoring, and
MIIR's per-position side inputs (:class:`miir.models.miir.SideInputs`) it relies on."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

import miir.data.encode_text as encode_text
from conftest import N_GROUPS, planted_raw
from helpers import random_windows, small_model
from miir.cli import app
from miir.data.prepare import PrepareConfig, prepare
from miir.data.raw import RawDataset
from miir.data.schema import FieldKind, FieldSpec, Schema
from miir.errors import DataError, MiirError
from miir.inference import (
    Codebook,
    InlineItemsNotSupported,
    ItemTables,
    TextIndex,
    UnknownItemError,
)
from miir.models import REGISTRY
from miir.models.base import Imputer
from miir.models.fields import FieldInfo
from miir.models.miir import SideInputs
from miir.recommender import Recommender
from miir.training.checkpoint import save_checkpoint

# ---------------------------------------------------------------------- MIIR's side inputs


def test_side_inputs_from_the_tables_change_nothing() -> None:
    model = small_model("miir").eval()
    history = random_windows(4, 7, seed=3)
    side = model.side_inputs(history)
    assert isinstance(side, SideInputs) and side.present.shape == (4, 7, 4)
    torch.testing.assert_close(model.score(history, side=side), model.score(history))
    items = torch.cat([history, torch.ones(4, 1, dtype=torch.long)], 1)
    torch.testing.assert_close(
        model.impute(items, side=model.side_inputs(items))["brand"], model.impute(items)["brand"]
    )


def test_an_inline_item_is_a_catalogue_item_whose_id_is_hidden() -> None:
    """An item given by its side fields alone (id 1) is what the model sees of a catalogue item
    with the same fields whose ID is masked; and its fields do reach the scores."""
    model = small_model("miir").eval()
    history = random_windows(3, 6, seed=4, min_len=6)
    side = model.side_inputs(history)
    inline = history.clone()
    inline[:, 2] = 1  # the item at position 2 becomes a new item with the same side fields
    hidden = torch.zeros(3, 6, model.n_fields, dtype=torch.bool)
    hidden[:, 2, 0] = True
    torch.testing.assert_close(
        model(inline, torch.zeros_like(hidden), side=side), model(history, hidden)
    )
    # without its side fields, the new item is a blank one, and the scores move
    blank = model.side_inputs(inline)
    assert not blank.present[:, 2].any()
    assert not torch.allclose(model.score(inline, side=side), model.score(inline, side=blank))
    torch.testing.assert_close(model.score(inline, side=blank), model.score(inline))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_model_recommends_through_the_facade(name: str, tmp_path: Path) -> None:
    """A checkpoint of any registered model loads into the facade and recommends from
    catalogue ids; a model that imputes also returns imputed fields."""
    model = small_model(name, max_len=6)
    save_checkpoint(model, tmp_path / "ckpt")
    rec = Recommender.load(tmp_path / "ckpt")
    result = rec.recommend(["item3", "item7", "item1"], k=5)
    assert len(result.items) == 5 and {"item3", "item7", "item1"}.isdisjoint(
        i.item for i in result.items
    )
    if isinstance(rec.model_, Imputer):
        assert set(result.next_item.fields) == set(rec.fields)
    else:
        assert result.imputed is None and result.next_item is None


# ---------------------------------------------------------------------- fixtures

SMALL = {"embedding_size": 16, "n_heads": 2, "n_layers": 1, "dropout": 0.0, "max_len": 8}
QUICK = {"batch_size": 32, "lr": 0.01, "min_epochs": 0, "progress": False, "threads": 1}
TEXT_DIM = 8


def colour_text(texts: list[str]) -> np.ndarray:
    """A stand-in sentence encoder with planted structure: ``"colour g ..."`` texts point
    along axis g, plus per-text noise (seeded by the text); unit vectors, as preparation's."""
    out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
    for r, text in enumerate(texts):
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        out[r] = np.random.default_rng(seed).normal(size=TEXT_DIM) * 0.3
        words = text.split()
        if len(words) > 1 and words[0] == "colour" and words[1].isdigit():
            out[r, int(words[1])] += 1.0
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def text_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The planted data (conftest.planted_raw) plus a text field ``title`` naming the item's
    colour, 30% of side values discarded; texts encoded by :func:`colour_text`."""
    raw = planted_raw()
    n = raw.items.height
    titles = pl.Series("title", [f"colour {i % N_GROUPS} thing {i}" for i in range(n)])
    schema = Schema(fields=(*raw.schema.fields, FieldSpec(name="title", kind=FieldKind.TEXT)))
    raw = RawDataset(raw.interactions, raw.items.with_columns(titles), schema, (), "planted-text")
    out = tmp_path_factory.mktemp("art") / "planted-text"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(encode_text, "encode_texts", lambda texts, **_: (colour_text(texts), "fake"))
        prepare(raw, out, PrepareConfig(n_negatives=20, max_len=8, discard=0.3), progress=False)
    return out


@pytest.fixture(scope="module")
def miir_run(text_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "miir"
    rec = Recommender("miir", text_encoder=colour_text, **SMALL)
    assert rec.fit(text_artifact, out=run, max_epochs=10, **QUICK) is rec  # fit returns self
    return run


@pytest.fixture(scope="module")
def miir(miir_run: Path) -> Recommender:
    return Recommender.load(miir_run, text_encoder=colour_text)


@pytest.fixture(scope="module")
def sasrec(text_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    run = tmp_path_factory.mktemp("runs") / "sasrec"
    return Recommender("sasrec", **SMALL).fit(text_artifact, out=run, max_epochs=3, **QUICK)


def colour(item: str) -> int:
    """The planted colour of item ``iNNN`` (conftest: item % 4)."""
    return int(item[1:]) % N_GROUPS


def walk(group: int, start: int, length: int) -> list[str]:
    """A planted user's history: group ``group`` walked in its cycle from step ``start``."""
    return [f"i{group + N_GROUPS * ((start + t) % 10):03d}" for t in range(length)]


# ---------------------------------------------------------------------- the facade


def test_init_only_stores_parameters_and_fit_learns_the_planted_groups(miir_run: Path) -> None:
    rec = Recommender("miir", data="somewhere", embedding_size=16)
    assert (rec.model, rec.data, rec.config) == ("miir", "somewhere", {"embedding_size": 16})
    assert not hasattr(rec, "model_")
    with pytest.raises(MiirError, match="not fitted"):
        rec.recommend(["i000"])
    loaded = Recommender.load(miir_run, text_encoder=colour_text)
    assert loaded.model == "miir" and loaded.artifact_ is not None
    in_group = 0
    for group in range(N_GROUPS):
        result = loaded.recommend(walk(group, 0, 4), k=5)
        top = [i.item for i in result.items]
        # the planted next item (the last one's successor in the group's cycle) in the top 2 of 40
        # items, and the group's colour imputed for it
        assert walk(group, 0, 5)[-1] in top[:2]
        assert result.next_item.fields["color"].predicted == [f"c{group}"]
        in_group += sum(colour(i) == group for i in top)
    # most of the top 5 in the user's group (chance: 1 in 4, 5 of the 20 slots); one group may
    # share its slots with another (measured: 17 of 20 with Eq. 11's multi loss, 16 with the
    # per-value default, whose group 0 held 2 of 5)
    assert in_group >= 14


def test_save_load_round_trip_gives_identical_scores(
    miir: Recommender, text_artifact: Path, tmp_path: Path
) -> None:
    histories = [
        walk(1, 2, 5),
        ["i003", {"color": "c3", "size": 0.1, "tags": ["t3"], "title": "colour 3 new thing"}],
    ]
    before = miir.recommend_batch(histories, k=8)
    saved = miir.save(tmp_path / "saved")
    again = Recommender.load(saved, text_encoder=colour_text)
    assert [r.to_dict() for r in again.recommend_batch(histories, k=8)] == [
        r.to_dict() for r in before
    ]
    # without the artifact, the saved recommender keeps the exact bucket edges
    meta = json.loads((saved / "model.json").read_text())
    meta["artifact"]["path"] = str(tmp_path / "moved-away")
    (saved / "model.json").write_text(json.dumps(meta))
    alone = Recommender.load(saved, text_encoder=colour_text)
    assert alone.artifact_ is None
    assert alone.bucket_edges_ == miir.bucket_edges_
    after = alone.recommend_batch(histories, k=8)
    assert [[i.score for i in r.items] for r in after] == [
        [i.score for i in r.items] for r in before
    ]
    sizes = [i.fields["size"] for r in after for i in r.items if "size" in i.fields]
    assert sizes and all(s.startswith("[") for s in sizes)  # bucket ranges, not the numbers


def test_recommend_excludes_seen_items_unless_asked(miir: Recommender) -> None:
    history = walk(2, 0, 6)
    k = 40
    kept = miir.recommend(history, k=k, exclude_seen=False)
    assert len(kept.items) == k and set(history) <= {i.item for i in kept.items}
    result = miir.recommend(history, k=k)
    assert len(result.items) == k - len(set(history))  # only the unseen items remain
    assert not set(history) & {i.item for i in result.items}
    scores = [i.score for i in result.items]
    assert scores == sorted(scores, reverse=True)


def test_display_fields_are_built_once_and_handed_out_as_copies(miir: Recommender) -> None:
    top = miir.recommend(walk(2, 0, 6), k=3).items[0]
    item = miir.artifact_.item_ids([top.item])[0]
    assert top.fields == miir.codebook_.display(miir.tables_, item) and top.fields
    for shown in top.fields.values():
        if isinstance(shown, list):
            shown.append("changed by a caller")
    top.fields["new"] = 1
    assert miir.display(item) == miir.codebook_.display(miir.tables_, item)


def test_unknown_item_ids_are_named(miir: Recommender, sasrec: Recommender) -> None:
    for rec in (miir, sasrec):
        with pytest.raises(UnknownItemError, match=r"'nope'.*'gone'") as err:
            rec.recommend(["i000", "nope", "i004", "gone"])
        assert err.value.items == ["nope", "gone"]
    with pytest.raises(DataError, match="unknown field 'colour'"):
        miir.recommend(["i000", {"colour": "c0"}])
    with pytest.raises(DataError, match="empty"):
        miir.recommend([])
    # a record carrying only an id the catalogue lacks is that id mistyped, for every model;
    # with fields it is a new item, and the answer says its id was not found
    for rec in (miir, sasrec):
        with pytest.raises(UnknownItemError, match="'i00x'"):
            rec.recommend(["i000", {"item_id": "i00x"}])
        with pytest.raises(UnknownItemError, match="'i00y'"):
            rec.recommend(["i000", {"item_id": "i00y", "color": None}])
        with pytest.raises(DataError, match="item 1: item_id must be a string"):
            rec.recommend(["i000", {"item_id": ["i001"]}])
    new = miir.recommend(["i000", {"item_id": "i00x", "color": "c1"}], k=3)
    assert any("1 ('i00x') is not in the catalogue" in w for w in new.warnings)


def test_ill_typed_record_values_are_missing_with_a_warning(miir: Recommender) -> None:
    """Values of the wrong shape (a list for a single value, a number or an object for a
    list, unhashable list members) are missing with a warning, never a TypeError."""
    for value_of, field in (
        ({"color": ["c1"]}, "color"),
        ({"color": {"a": 1}}, "color"),
        ({"tags": 5}, "tags"),
        ({"tags": [["t1"]]}, "tags"),
    ):
        result = miir.recommend(["i001", value_of], k=3)
        assert any(f"field {field!r}" in w for w in result.warnings), result.warnings
    mixed = miir.recommend(["i001", {"tags": ["t1", ["t2"]]}], k=3)
    assert any("['t2']" in w for w in mixed.warnings)
    assert mixed.items == miir.recommend(["i001", {"tags": ["t1"]}], k=3).items


def test_inline_new_items_for_miir_and_refused_by_sasrec(
    miir: Recommender, sasrec: Recommender
) -> None:
    """A new item given by some of its fields: MIIR reads them (the planted colour follows
    the title and tags), unknown values become missing with a warning; SASRec refuses it."""
    history = ["i001", "i005", {"title": "colour 1 new thing", "tags": ["t1", "bogus"]}]
    result = miir.recommend(history, k=5)
    assert [colour(i.item) for i in result.items] == [1] * 5
    assert any("bogus" in w for w in result.warnings)
    new = next(p for p in result.imputed if p.position == 2)
    assert new.item is None and set(new.fields) == {"color", "size"}  # the fields not given
    assert new.fields["color"].predicted == ["c1"]
    # the record's fields reach the model: the same history with another colour's title
    other = miir.recommend([*history[:2], {"title": "colour 3 new thing"}], k=5)
    assert other.items != result.items
    unknown = miir.recommend(["i001", {"color": "purple"}], k=3)
    assert any("'purple'" in w for w in unknown.warnings)
    with pytest.raises(InlineItemsNotSupported, match="item 2 is an inline record"):
        sasrec.recommend(history)
    # a record naming a catalogue item is that item, for every model
    named = sasrec.recommend(["i001", {"item_id": "i005"}], k=3)
    assert named.items == sasrec.recommend(["i001", "i005"], k=3).items
    assert named.imputed is None  # SASRec does not impute
    assert named.items[0].fields  # display fields from the artifact (SASRec has no tables)


def test_long_histories_are_cut_to_the_most_recent_items(miir: Recommender) -> None:
    history = walk(3, 0, 12)  # the model reads 7
    result = miir.recommend(history, k=5, exclude_seen=False)
    assert result.cut == 5 and any("oldest 5" in w for w in result.warnings)
    recent = miir.recommend(history[-7:], k=5, exclude_seen=False)
    assert result.items == recent.items and recent.cut == 0
    # seen items of the cut part are still excluded
    excluded = miir.recommend(history, k=40)
    assert not set(history) & {i.item for i in excluded.items}


def test_batch_scoring_equals_one_request_at_a_time(miir: Recommender) -> None:
    histories = [
        walk(0, 3, 2),
        walk(1, 0, 7),
        ["i002", {"color": "c2", "size": -1.5}, "i006"],
        walk(3, 5, 10),
        [{"title": "colour 0 thing", "tags": "t0"}],
    ]
    batch = miir.recommend_batch(histories, k=6, imputations=True)
    for history, got in zip(histories, batch, strict=True):
        alone = miir.recommend(history, k=6)
        assert [i.item for i in got.items] == [i.item for i in alone.items]
        np.testing.assert_allclose(
            [i.score for i in got.items], [i.score for i in alone.items], rtol=1e-5, atol=1e-5
        )
        assert (got.cut, got.warnings) == (alone.cut, alone.warnings)
        p_got = got.next_item.fields["color"].candidates[0].probability
        p_alone = alone.next_item.fields["color"].candidates[0].probability
        assert p_got == pytest.approx(p_alone, abs=1e-5)


def test_impute_gives_human_form_values_with_probabilities(
    miir: Recommender, sasrec: Recommender
) -> None:
    art = miir.artifact_
    missing = {name: ~art.fields[name].present for name in art.fields}
    history = [f"i{i:03d}" for i in range(0, 40, 4)][:7]  # group 0: some fields discarded
    hid = art.item_ids(history)
    result = miir.impute(history, vectors=True)
    for pos in result.history:
        # exactly the fields missing in the data are imputed, per item
        assert set(pos.fields) == {n for n in missing if missing[n][hid[pos.position]]}
        assert pos.item == history[pos.position]
    assert result.history, "the discard left no missing field in this history"
    fields = result.next_item.fields
    assert set(fields) == {"color", "tags", "size", "title"}
    color = fields["color"]
    probs = [c.probability for c in color.candidates]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert color.predicted == [color.candidates[0].value] == ["c0"]
    tags = fields["tags"]
    assert set(tags.predicted) == {c.value for c in tags.candidates if c.probability >= 0.5}
    assert {"t0", "shared"} <= set(tags.predicted)
    assert re.fullmatch(r"\[\S+, \S+\)", fields["size"].predicted[0])  # a bucket range
    title = fields["title"]
    assert len(title.nearest) == 3 and all(-1 <= n.similarity <= 1 for n in title.nearest)
    assert colour(title.nearest[0].item) == 0 and len(title.vector) == TEXT_DIM
    assert json.loads(json.dumps(result.to_dict()))["next_item"]["fields"]["color"]
    with pytest.raises(MiirError, match="'sasrec' does not impute"):
        sasrec.impute(["i000"])


def test_text_index_through_the_head_equals_the_direct_product() -> None:
    """The nearest-text search in the text head's input space (e products per catalogue text
    instead of D) gives the direct cosine similarities, and so the same nearest texts; a
    vector off the head's range takes the direct product."""
    g = torch.Generator().manual_seed(0)
    D, e, M = 24, 6, 50
    unit = torch.nn.functional.normalize(torch.randn(M, D, generator=g), dim=1)
    w, b = torch.randn(D, e, generator=g), torch.randn(D, generator=g)
    index, direct = TextIndex(torch.arange(M) + 2, unit, (w, b)), TextIndex(torch.arange(M), unit)
    assert index.head is not None and direct.head is None
    preds = torch.randn(7, e, generator=g) @ w.T + b  # (7, D): what the head predicts
    preds[3] = torch.randn(D, generator=g)  # a vector from elsewhere
    want = torch.nn.functional.normalize(preds, dim=1) @ unit.T
    for got in (index.similarities(preds), direct.similarities(preds)):
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.equal(torch.topk(got, 3, dim=1).indices, torch.topk(want, 3, dim=1).indices)
    assert TextIndex(torch.arange(M), unit, (torch.randn(D, D), b)).head is None  # e >= D


# ---------------------------------------------------------------------- miir recommend


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cli_writes_parquet_and_names_a_malformed_line(
    miir_run: Path, miir: Recommender, tmp_path: Path
) -> None:
    histories = [walk(g % N_GROUPS, g, 3 + g) for g in range(7)]
    lines = [json.dumps({"user": f"u{n}", "history": h}) for n, h in enumerate(histories)]
    lines.insert(3, "")  # a blank line is skipped
    lines.append(json.dumps({"history": ["i001", {"color": "c1"}]}))  # no user: null
    src = write_lines(tmp_path / "histories.jsonl", lines)
    out = tmp_path / "out" / "recs.parquet"
    args = ["recommend", "--run", str(miir_run), "--input", str(src), "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--k", "4", "--batch-size", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "8 users, 32 rows" in res.output
    table = pq.read_table(out).to_pylist()
    assert len(table) == 8 * 4 and [r["rank"] for r in table[:4]] == [1, 2, 3, 4]
    assert table[-1]["user"] is None and table[-1]["line"] == 9
    expected = miir.recommend(histories[5], k=4)  # line 7: after the blank line
    rows = [r for r in table if r["user"] == "u5"]
    assert [r["item"] for r in rows] == [i.item for i in expected.items] and rows[0]["line"] == 7
    np.testing.assert_allclose(
        [r["score"] for r in rows], [i.score for i in expected.items], rtol=1e-5
    )
    assert [r["cut"] for r in table if r["user"] == "u6"] == [2] * 4  # 9 items, the model reads 7

    # a malformed line and an unknown item stop the run, name file and line, write nothing
    for bad, reason in (
        ('{"user": "x", "history": ["i000"', "not JSON"),
        ('{"user": "x", "items": ["i000"]}', "expected an object"),
        ('{"user": "x", "history": ["i000", "nope"]}', "'nope'"),
    ):
        broken = write_lines(tmp_path / "broken.jsonl", [lines[0], lines[1], bad, lines[2]])
        out2 = tmp_path / "broken.parquet"
        args = ["recommend", "--run", str(miir_run), "--input", str(broken), "--out", str(out2)]
        res = CliRunner().invoke(app, [*args, "--no-progress"])
        assert res.exit_code == 2 and f"{broken}:3" in res.output and reason in res.output
        assert not out2.exists() and not list(tmp_path.glob(".broken.parquet*"))
    # bytes that are not UTF-8 (a UTF-16 export, say) name their line too
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes((lines[0] + "\n").encode() + b'{"history": ["caf\xe9"]}\n')
    res = CliRunner().invoke(
        app, ["recommend", "-r", str(miir_run), "-i", str(latin), "-o", str(out2)]
    )
    assert res.exit_code == 2 and f"{latin}:2" in res.output and "not UTF-8" in res.output
    assert not out2.exists()


@pytest.mark.slow
def test_inline_text_uses_the_preparation_encoder(miir_run: Path) -> None:
    """The real packaged encoder (loaded once, seconds): the facade's encoder gives what
    preparation stored for the same texts; and a model trained on other vectors (this test's
    8-dimensional stand-in) says so instead of scoring nonsense."""
    from miir.data.encode_text import encode_texts
    from miir.inference import TextEncoder

    texts = ["red lipstick", "hiking boots", "a rose lip balm"]
    encoder = TextEncoder(None)
    np.testing.assert_allclose(encoder(texts), encode_texts(texts, progress=False)[0], atol=1e-6)
    assert Recommender.load(miir_run).text_model_ is None  # the artifact's: the default model
    rec = Recommender.load(miir_run, text_encoder=encoder)  # the one loaded above
    with pytest.raises(MiirError, match=r"384-dimensional.*trained on 8"):
        rec.recommend(["i000", {"title": "colour 0 thing"}])


def test_an_imputed_number_without_a_raw_value_is_shown_by_its_bucket() -> None:
    """A derived artifact keeps its parent's raw numbers, NaN where the data lacked one and
    the imputer filled its bucket in: the display shows that bucket, never a null."""
    price = FieldInfo("price", FieldKind.NUMERIC, cardinality=4)
    vocab = ["<pad>", "<missing>", "<= 5", "> 5"]
    book = Codebook(["<pad>", "<missing>", "a", "b"], [price], {"price": vocab}, {"price": [5.0]})
    tables = ItemTables(
        [price],
        {"price": vocab},
        {"price": np.array([False, False, True, True])},
        {"price": np.array([0, 1, 2, 3])},
        {"price": np.array([np.nan, np.nan, 4.5, np.nan])},
    )
    assert book.display(tables, 2) == {"price": 4.5}  # the raw number where there is one
    assert book.display(tables, 3) == {"price": "> 5"}  # imputed: its bucket
