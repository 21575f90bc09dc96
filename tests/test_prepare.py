"""Preparation: split, negatives, determinism, discard, filtering, vocabularies, missing values,
atomic writes, and (marked ``integration``) the real data in ../shared/data.

Unit tests build tiny :class:`RawDataset` tables by hand; no text model is ever loaded (text
fields are dropped with ``encode_text=False``, or the encoder is replaced by a fake).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import miir.data.prepare as prep
from miir.data.artifact import Artifact
from miir.data.prepare import (
    PrepareConfig,
    filter_interactions,
    prepare,
    sample_negatives,
    summary_table,
)
from miir.data.raw import RawDataset
from miir.data.schema import FIRST_VALUE_ID, MISSING_ID, PAD_ID, FieldKind, FieldSpec, Schema
from miir.errors import DataError

FAST = settings(max_examples=25, deadline=None)
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CAT = FieldSpec(name="brand", kind=FieldKind.CATEGORICAL)
MULTI = FieldSpec(name="tags", kind=FieldKind.MULTI_CATEGORICAL)
NUM = FieldSpec(name="price", kind=FieldKind.NUMERIC, n_buckets=4)
TEXT = FieldSpec(name="title", kind=FieldKind.TEXT)
SCHEMA = Schema(fields=(CAT, MULTI, NUM))
ITEM_DTYPES = {
    "item_id": pl.String,
    "brand": pl.String,
    "tags": pl.List(pl.String),
    "price": pl.Float64,
    "title": pl.String,
}


# ---------------------------------------------------------------- builders


def interactions(seqs: dict[str, list[str]], order: list[int] | None = None) -> pl.DataFrame:
    """One row per interaction, timestamp = position in the user's list; rows optionally permuted."""
    rows = [(u, it, k) for u, items in seqs.items() for k, it in enumerate(items)]
    if order is not None:
        rows = [rows[i] for i in order]
    return pl.DataFrame(
        {
            "user": [r[0] for r in rows],
            "item": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
        },
        schema={"user": pl.String, "item": pl.String, "timestamp": pl.Int64},
    )


def item_table(records: list[dict[str, Any]], schema: Schema = SCHEMA) -> pl.DataFrame:
    cols = ["item_id", *schema.names]
    return pl.DataFrame(
        {c: [r.get(c) for r in records] for c in cols},
        schema={c: ITEM_DTYPES.get(c, pl.String) for c in cols},
    )


def default_items(names: list[str]) -> list[dict[str, Any]]:
    """Deterministic side values with a few nulls of each kind."""
    out = []
    for k, name in enumerate(sorted(names)):
        out.append(
            {
                "item_id": name,
                "brand": None if k % 5 == 4 else f"b{k % 3}",
                "tags": None if k % 7 == 6 else [f"t{k % 4}", f"t{(k + 1) % 4}"][: 1 + k % 2],
                "price": None if k % 6 == 5 else float(k * 1.5),
                "title": None if k % 4 == 3 else f"title of item {k}",
            }
        )
    return out


def raw_dataset(
    seqs: dict[str, list[str]],
    records: list[dict[str, Any]] | None = None,
    schema: Schema = SCHEMA,
    order: list[int] | None = None,
) -> RawDataset:
    if records is None:
        records = default_items(sorted({i for s in seqs.values() for i in s}))
    return RawDataset(
        interactions=interactions(seqs, order),
        items=item_table(records, schema),
        schema=schema,
        name="tiny",
    )


def config(**kw: Any) -> PrepareConfig:
    base: dict[str, Any] = {"n_negatives": 3, "encode_text": False}
    base.update(kw)
    return PrepareConfig(**base)


def run_prepare(raw: RawDataset, out: Path, **kw: Any) -> Artifact:
    overwrite = kw.pop("overwrite", False)
    prepare(raw, out, config(**kw), overwrite=overwrite, progress=False)
    return Artifact(out, verify=True)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a folder, by relative path, with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def cover(n_items: int) -> dict[str, list[str]]:
    """Users that together use every item of the pool, 5 distinct items each (so that the
    catalogue is complete while no history is large enough to block negative sampling)."""
    names = [f"i{j:02d}" for j in range(n_items)]
    return {f"zz{k:02d}": (names[k : k + 5] + names[:5])[:5] for k in range(0, n_items, 5)}


def catalogue_seqs(n_users: int = 6, n_items: int = 15, length: int = 6) -> dict[str, list[str]]:
    """Users walking through a catalogue of ``n_items`` items (at least 10), every item used."""
    seqs = {
        f"u{u:02d}": [f"i{(3 * u + j) % n_items:02d}" for j in range(length)]
        for u in range(n_users)
    }
    return seqs | cover(n_items)


@st.composite
def sequence_sets(draw: Any, pool: int = 20, max_users: int = 7) -> dict[str, list[str]]:
    """Users with 5..9 interactions drawn from a pool (re-buys allowed), plus users covering
    the whole pool so that every item exists and negatives can always be drawn."""
    users = draw(st.lists(st.integers(0, 99), min_size=1, max_size=max_users, unique=True))
    seqs = {}
    for u in users:
        seq = draw(st.lists(st.integers(0, pool - 1), min_size=5, max_size=9))
        seqs[f"u{u:02d}"] = [f"i{k:02d}" for k in seq]
    return seqs | cover(pool)


def fake_encode(texts: list[str], **_: Any) -> tuple[np.ndarray, str]:
    """Stand-in for the sentence encoder: a deterministic non-zero 3-d vector per text."""
    vecs = np.asarray([[len(t), sum(map(ord, t)) % 97 + 1, 1.0] for t in texts], dtype=np.float32)
    return vecs, "fake-encoder"


# ---------------------------------------------------------------- leave-one-out split


class TestSplit:
    def test_hand_built_split_with_rebuys(self, tmp_path: Path) -> None:
        seqs = {
            "alice": ["a", "b", "a", "c", "a"],  # re-buys: the test target also occurs in training
            "bob": ["c", "d", "e", "b", "c", "d"],
        }
        art = run_prepare(
            raw_dataset(seqs), tmp_path / "art", n_negatives=1, negatives_exclude="target"
        )
        assert art.item_names == ["<pad>", "<missing>", "a", "b", "c", "d", "e"]
        assert art.user_names == ["alice", "bob"]
        ids = {n: i for i, n in enumerate(art.item_names)}
        a, b, c, d, e = (ids[x] for x in "abcde")
        assert art.sequence(0).tolist() == [a, b, a, c, a]
        assert art.sequence(1).tolist() == [c, d, e, b, c, d]
        valid, _ = art.split("valid")
        test, _ = art.split("test")
        assert test.tolist() == [a, d]
        assert valid.tolist() == [c, c]
        # the training prefix is positional: seq[:-2], re-bought items included
        assert art.sequence(0)[:-2].tolist() == [a, b, a]
        assert art.sequence(1)[:-2].tolist() == [c, d, e, b]

    def test_order_comes_from_timestamps_ties_keep_file_order(self, tmp_path: Path) -> None:
        df = pl.DataFrame(
            {
                "user": ["u", "u", "u", "u", "u", "u"],
                "item": ["late", "t1_first", "t1_second", "early", "mid", "last"],
                "timestamp": [50, 10, 10, 1, 20, 99],
            },
            schema={"user": pl.String, "item": pl.String, "timestamp": pl.Int64},
        )
        raw = RawDataset(df, item_table([], Schema()), Schema())
        art = run_prepare(raw, tmp_path / "art", n_negatives=1, negatives_exclude="target")
        names = [art.item_names[i] for i in art.sequence(0)]
        assert names == ["early", "t1_first", "t1_second", "mid", "late", "last"]
        assert art.item_names[art.split("test")[0][0]] == "last"
        assert art.item_names[art.split("valid")[0][0]] == "late"

    @FAST
    @given(seqs=sequence_sets(), data=st.data())
    def test_split_property(self, seqs: dict[str, list[str]], data: Any) -> None:
        n_rows = sum(len(s) for s in seqs.values())
        order = data.draw(st.permutations(range(n_rows)))  # rows in any order: time decides
        with tempfile.TemporaryDirectory() as tmp:
            art = run_prepare(raw_dataset(seqs, order=order), Path(tmp) / "art")
            assert art.user_names == sorted(seqs)
            assert art.item_names[2:] == sorted({i for s in seqs.values() for i in s})
            valid, _ = art.split("valid")
            test, _ = art.split("test")
            assert len(art.offsets) == len(seqs) + 1
            assert art.offsets[0] == 0 and art.offsets[-1] == len(art.flat_items) == n_rows
            for u, user in enumerate(art.user_names):
                expected = seqs[user]
                got = [art.item_names[i] for i in art.sequence(u)]
                assert got == expected
                assert art.item_names[test[u]] == expected[-1]
                assert art.item_names[valid[u]] == expected[-2]
                assert [art.item_names[i] for i in art.sequence(u)[:-2]] == expected[:-2]

    def test_artifact_holds_exactly_the_documented_files(self, tmp_path: Path) -> None:
        art = run_prepare(raw_dataset(catalogue_seqs()), tmp_path / "art")
        files = set(snapshot(art.path))
        expected = {
            "manifest.json",
            "vocab/items.json",
            "vocab/users.json",
            "sequences/offsets.npy",
            "sequences/items.npy",
            "split/valid_target.npy",
            "split/valid_negatives.npy",
            "split/test_target.npy",
            "split/test_negatives.npy",
        }
        for f in SCHEMA.fields:
            expected |= {
                f"vocab/{f.name}.json",
                f"items/{f.name}.present.npy",
                f"items/{f.name}.values.npy",
            }
        expected.add("items/price.raw.npy")
        assert files == expected  # no truth/ without discard
        assert set(art.manifest["files"]) == files - {"manifest.json"}

    def test_targets_only_reach_the_artifact_through_sequences_and_split(
        self, tmp_path: Path
    ) -> None:
        """Swapping a user's last two items changes its targets but the same multiset of
        interactions: only sequences/ and split/ may change, nothing a model sees about items."""
        seqs = catalogue_seqs()
        swapped = dict(seqs)
        swapped["u01"] = [*seqs["u01"][:-2], seqs["u01"][-1], seqs["u01"][-2]]
        a = snapshot(run_prepare(raw_dataset(seqs), tmp_path / "a", discard=0.5).path)
        b = snapshot(run_prepare(raw_dataset(swapped), tmp_path / "b", discard=0.5).path)
        changed = {k for k in a if a[k] != b[k]}
        assert changed <= {
            "manifest.json",
            "sequences/items.npy",
            "split/valid_target.npy",
            "split/test_target.npy",
            "split/valid_negatives.npy",
            "split/test_negatives.npy",
        }
        assert {"sequences/items.npy", "split/valid_target.npy", "split/test_target.npy"} <= changed


# ---------------------------------------------------------------- negatives


class TestNegatives:
    @FAST
    @given(data=st.data(), exclude=st.sampled_from(["history", "target"]))
    def test_sample_negatives_property(self, data: Any, exclude: str) -> None:
        n_items = data.draw(st.integers(12, 40))
        item = st.integers(FIRST_VALUE_ID, FIRST_VALUE_ID + n_items - 1)
        seqs = data.draw(st.lists(st.lists(item, min_size=3, max_size=10), min_size=1, max_size=8))
        sequences = [np.asarray(s, dtype=np.int32) for s in seqs]
        pick = data.draw(st.sampled_from([-1, -2]))
        targets = np.asarray([s[pick] for s in sequences], dtype=np.int32)
        n_neg = data.draw(st.integers(1, n_items - 10))
        seed = data.draw(st.integers(0, 2**32 - 1))
        negs = sample_negatives(
            sequences, targets, n_items, n_neg, exclude, np.random.default_rng(seed)
        )
        assert negs.shape == (len(seqs), n_neg)
        for seq, target, row in zip(sequences, targets, negs, strict=True):
            assert len(set(row.tolist())) == n_neg  # distinct
            assert row.min() >= FIRST_VALUE_ID and row.max() <= n_items + 1
            assert target not in row
            if exclude == "history":
                assert not set(row.tolist()) & set(seq.tolist())
        again = sample_negatives(
            sequences, targets, n_items, n_neg, exclude, np.random.default_rng(seed)
        )
        np.testing.assert_array_equal(negs, again)

    def test_target_mode_lets_history_items_in_when_the_catalogue_is_small(self) -> None:
        # 6 items (ids 2..7); the user has seen 2, 3, 4, 5; target 5; 5 negatives must be all
        # the other items, so history items 2, 3, 4 are among them.
        seq = [np.asarray([2, 3, 4, 5], dtype=np.int32)]
        negs = sample_negatives(seq, np.asarray([5]), 6, 5, "target", np.random.default_rng(0))
        assert sorted(negs[0].tolist()) == [2, 3, 4, 6, 7]
        with pytest.raises(DataError, match="only 2 items are not excluded"):
            sample_negatives(seq, np.asarray([5]), 6, 5, "history", np.random.default_rng(0))

    def test_target_mode_draws_history_items_in_prepare(self, tmp_path: Path) -> None:
        seqs = {f"u{u}": [f"i{(u + j) % 8}" for j in range(6)] for u in range(8)}  # 8 items
        with pytest.raises(DataError, match="negatives"):
            run_prepare(raw_dataset(seqs), tmp_path / "h", n_negatives=5)  # history leaves only 2
        art = run_prepare(
            raw_dataset(seqs), tmp_path / "t", n_negatives=7, negatives_exclude="target"
        )
        for stage in ("valid", "test"):
            targets, negs = art.split(stage)
            for u in range(art.n_users):
                row = set(negs[u].tolist())
                assert row == set(range(2, 10)) - {int(targets[u])}  # everything but the target
                assert row & set(art.sequence(u).tolist())  # history items do appear

    @FAST
    @given(seqs=sequence_sets(pool=30), seed=st.integers(0, 1000))
    def test_prepared_negatives_avoid_the_whole_history(
        self, seqs: dict[str, list[str]], seed: int
    ) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            # 30 items, at most 9 distinct in a user's history: 8 negatives always fit
            n_neg = 8
            art = run_prepare(raw_dataset(seqs), Path(tmp) / "art", n_negatives=n_neg, seed=seed)
            for stage in ("valid", "test"):
                targets, negs = art.split(stage)
                assert negs.shape == (art.n_users, n_neg)
                for u in range(art.n_users):
                    row = negs[u].tolist()
                    assert len(set(row)) == n_neg
                    assert all(FIRST_VALUE_ID <= v <= art.n_items + 1 for v in row)
                    assert int(targets[u]) not in row
                    assert not set(row) & set(art.sequence(u).tolist())


# ---------------------------------------------------------------- determinism


class TestDeterminism:
    def test_same_inputs_same_seed_byte_identical(self, tmp_path: Path) -> None:
        raw = raw_dataset(catalogue_seqs())
        a = snapshot(run_prepare(raw, tmp_path / "a", discard=0.5, seed=7).path)
        b = snapshot(run_prepare(raw, tmp_path / "b", discard=0.5, seed=7).path)
        assert "manifest.json" in a
        assert a.keys() == b.keys()
        for name in a:
            assert a[name] == b[name], name

    def test_other_seed_changes_negatives_and_discard_only(self, tmp_path: Path) -> None:
        seqs = catalogue_seqs(n_users=10, n_items=40)
        a = run_prepare(raw_dataset(seqs), tmp_path / "a", discard=0.5, seed=1, n_negatives=10)
        b = run_prepare(raw_dataset(seqs), tmp_path / "b", discard=0.5, seed=2, n_negatives=10)
        for stage in ("valid", "test"):
            assert not np.array_equal(a.split(stage)[1], b.split(stage)[1])
            np.testing.assert_array_equal(a.split(stage)[0], b.split(stage)[0])
        assert any(
            not np.array_equal(a.fields[f].present, b.fields[f].present) for f in SCHEMA.names
        )
        for f in SCHEMA.names:  # the truth does not depend on the seed
            np.testing.assert_array_equal(a.fields[f].truth_values, b.fields[f].truth_values)
        np.testing.assert_array_equal(a.flat_items, b.flat_items)

    @FAST
    @given(seqs=sequence_sets(), data=st.data())
    def test_input_row_order_does_not_matter(self, seqs: dict[str, list[str]], data: Any) -> None:
        """Rows of both tables in another order (timestamps unique per user): identical bytes."""
        n_rows = sum(len(s) for s in seqs.values())
        records = default_items(sorted({i for s in seqs.values() for i in s}))
        order = data.draw(st.permutations(range(n_rows)))
        shuffled_records = data.draw(st.permutations(records))
        with tempfile.TemporaryDirectory() as tmp:
            a = run_prepare(raw_dataset(seqs, records), Path(tmp) / "a", discard=0.5)
            b = run_prepare(
                raw_dataset(seqs, list(shuffled_records), order=order), Path(tmp) / "b", discard=0.5
            )
            assert snapshot(a.path) == snapshot(b.path)

    def test_independent_of_python_hash_seed(self, tmp_path: Path) -> None:
        script = textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            from pathlib import Path
            from test_prepare import catalogue_seqs, raw_dataset, run_prepare
            run_prepare(raw_dataset(catalogue_seqs()), Path(sys.argv[1]), discard=0.5)
            """
        )
        for k, hash_seed in enumerate(("1", "12345")):
            env = {**os.environ, "PYTHONHASHSEED": hash_seed}
            subprocess.run(
                [sys.executable, "-c", script, str(tmp_path / f"a{k}")], env=env, check=True
            )
        assert snapshot(tmp_path / "a0") == snapshot(tmp_path / "a1")


# ---------------------------------------------------------------- discard


def discard_pair(
    tmp: Path, seqs: dict[str, list[str]], p: float = 0.5, **kw: Any
) -> tuple[Artifact, Artifact]:
    raw = raw_dataset(seqs, kw.pop("records", None), kw.pop("schema", SCHEMA))
    return run_prepare(raw, tmp / "full", **kw), run_prepare(raw, tmp / "disc", discard=p, **kw)


class TestDiscard:
    def test_item_ids_and_sequences_are_never_discarded(self, tmp_path: Path) -> None:
        full, disc = discard_pair(tmp_path, catalogue_seqs(), p=0.9)
        a, b = snapshot(full.path), snapshot(disc.path)
        for name in (
            "vocab/items.json",
            "vocab/users.json",
            "sequences/items.npy",
            "sequences/offsets.npy",
        ):
            assert a[name] == b[name]
        for stage in ("valid", "test"):  # negatives do not move with the discard either
            assert a[f"split/{stage}_negatives.npy"] == b[f"split/{stage}_negatives.npy"]

    def test_truth_is_the_undiscarded_data(self, tmp_path: Path) -> None:
        full, disc = discard_pair(tmp_path, catalogue_seqs())
        a, b = snapshot(full.path), snapshot(disc.path)
        assert not any(k.startswith("truth/") for k in a)
        for f in SCHEMA.names:
            for part in ("present", "values"):
                assert b[f"truth/{f}.{part}.npy"] == a[f"items/{f}.{part}.npy"]
            assert b[f"vocab/{f}.json"] == a[f"vocab/{f}.json"]
        assert b["truth/price.raw.npy"] == a["items/price.raw.npy"]

    @FAST
    @given(seqs=sequence_sets(), p=st.sampled_from([0.1, 0.5, 0.9]), seed=st.integers(0, 99))
    def test_only_present_values_are_hidden_and_blanked(
        self, seqs: dict[str, list[str]], p: float, seed: int
    ) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            art = run_prepare(raw_dataset(seqs), Path(tmp) / "art", discard=p, seed=seed)
            raw_seen = np.load(art.path / "items/price.raw.npy")
            raw_truth = np.load(art.path / "truth/price.raw.npy")
            for name, fd in art.fields.items():
                hidden = fd.truth_present & ~fd.present
                assert not (fd.present & ~fd.truth_present).any()  # nothing appears
                assert not fd.present[:FIRST_VALUE_ID].any()
                info = art.manifest["fields"][name]
                assert info["hidden_by_discard"] == int(hidden.sum())
                kept = fd.present
                np.testing.assert_array_equal(fd.values[kept], fd.truth_values[kept])
                if fd.kind == FieldKind.MULTI_CATEGORICAL:
                    assert (fd.values[hidden] == 0).all()
                    assert (fd.values[~fd.present] == 0).all()
                else:
                    assert (fd.values[hidden] == MISSING_ID).all()
                    assert (fd.values[~fd.present][FIRST_VALUE_ID:] == MISSING_ID).all()
                # items/ holds no hidden value: every non-present row looks like a missing one
                assert int(fd.values[~fd.present].max(initial=0)) <= MISSING_ID
                assert info["missing_rate_after_discard"] == pytest.approx(
                    1 - fd.present[FIRST_VALUE_ID:].mean()
                )
            price = art.fields["price"]
            assert np.isnan(raw_seen[~price.present]).all()
            np.testing.assert_array_equal(raw_seen[price.present], raw_truth[price.present])
            assert not np.isnan(raw_truth[price.truth_present]).any()

    def test_text_field_blanked_to_zeros(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("miir.data.encode_text.encode_texts", fake_encode)
        monkeypatch.setenv("MIIR_TEXT_CACHE", "0")
        schema = Schema(fields=(TEXT, CAT))
        seqs = catalogue_seqs(n_items=30)
        raw = raw_dataset(seqs, schema=schema)
        art = run_prepare(raw, tmp_path / "art", discard=0.5, encode_text=True)
        title = art.fields["title"]
        assert art.manifest["fields"]["title"]["model"] == "fake-encoder"
        assert title.values.shape == (art.n_items + 2, 3)
        hidden = title.truth_present & ~title.present
        assert hidden.any() and title.present.any()
        assert (title.values[~title.present] == 0).all()
        assert (np.abs(title.truth_values[title.truth_present]).sum(axis=1) > 0).all()
        np.testing.assert_array_equal(
            title.values[title.present], title.truth_values[title.present]
        )
        # the null titles of default_items are missing, not a vector of the string "None"
        missing = [i for i, r in enumerate(default_items(art.item_names[2:])) if r["title"] is None]
        assert not title.truth_present[[m + 2 for m in missing]].any()

    def test_hidden_set_fixed_per_item_and_field(self, tmp_path: Path) -> None:
        seqs = catalogue_seqs(n_users=12, n_items=40)
        records = default_items(sorted({i for s in seqs.values() for i in s}))
        reversed_users = dict(reversed(list(seqs.items())))
        n_rows = sum(len(s) for s in seqs.values())
        order = list(reversed(range(n_rows)))
        a = run_prepare(raw_dataset(seqs, records), tmp_path / "a", discard=0.5)
        b = run_prepare(
            raw_dataset(reversed_users, records[::-1], order=order), tmp_path / "b", discard=0.5
        )
        # adding a field (and reordering the fields) does not move the hidden set of the others
        extra = FieldSpec(name="extra", kind=FieldKind.CATEGORICAL)
        wider = Schema(fields=(NUM, extra, CAT, MULTI))
        recs_extra = [{**r, "extra": r["brand"]} for r in records]
        c = run_prepare(raw_dataset(seqs, recs_extra, wider), tmp_path / "c", discard=0.5)
        assert "extra" in c.fields

        def hidden_by_name(art: Artifact, field: str) -> set[str]:
            fd = art.fields[field]
            return {art.item_names[i] for i in np.flatnonzero(fd.truth_present & ~fd.present)}

        for f in SCHEMA.names:
            assert hidden_by_name(a, f)
            assert hidden_by_name(a, f) == hidden_by_name(b, f) == hidden_by_name(c, f)

    def test_rate_close_to_p_on_a_large_table(self, tmp_path: Path) -> None:
        n = 2000
        seqs = {f"u{u:04d}": [f"i{(5 * u + j) % n:04d}" for j in range(5)] for u in range(400)}
        records = [
            {
                "item_id": f"i{k:04d}",
                "brand": f"b{k % 50}",
                "tags": [f"t{k % 9}"],
                "price": float(k),
            }
            for k in range(n)
        ]
        art = run_prepare(raw_dataset(seqs, records), tmp_path / "art", discard=0.5)
        assert art.n_items == n
        for name, fd in art.fields.items():
            assert fd.truth_present[2:].all()
            rate = 1 - fd.present[2:].mean()
            assert abs(rate - 0.5) < 0.05, name
            assert art.manifest["fields"][name]["missing_rate"] == 0.0
            assert art.manifest["fields"][name]["missing_rate_after_discard"] == pytest.approx(rate)
        assert abs(art.manifest["missing_rate"]["side_fields_after_discard"] - 0.5) < 0.05


# ---------------------------------------------------------------- filtering


def _ref_core(rows: list[tuple[str, str]], min_user: int, k: int) -> list[tuple[str, str]]:
    """Reference k-core, peeling users first (the maximal core is unique, so order is free)."""
    while True:
        per_user = Counter(u for u, _ in rows)
        kept = [r for r in rows if per_user[r[0]] >= min_user]
        if k:
            users_of: dict[str, set[str]] = defaultdict(set)
            for u, i in kept:
                users_of[i].add(u)
            kept = [r for r in kept if len(users_of[r[1]]) >= k]
        if len(kept) == len(rows):
            return kept
        rows = kept


def _frame(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user": [r[0] for r in rows],
            "item": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
        },
        schema={"user": pl.String, "item": pl.String, "timestamp": pl.Int64},
    )


class TestFiltering:
    def test_users_below_five_are_dropped(self, tmp_path: Path) -> None:
        seqs = catalogue_seqs()
        seqs["short4"] = ["i00", "i01", "i02", "i03"]
        seqs["exactly5"] = ["i00", "i01", "i02", "i03", "i04"]
        art = run_prepare(raw_dataset(seqs), tmp_path / "art")
        assert "short4" not in art.user_names and "exactly5" in art.user_names
        counts = art.manifest["counts"]
        assert counts["raw_interactions"] == sum(len(s) for s in seqs.values())
        assert counts["interactions"] == counts["raw_interactions"] - 4
        assert counts["users"] == len(seqs) - 1

    def test_item_only_used_by_dropped_users_leaves_the_vocabulary(self, tmp_path: Path) -> None:
        seqs = catalogue_seqs()
        seqs["short"] = ["i00", "only_short", "i01"]
        art = run_prepare(raw_dataset(seqs), tmp_path / "art")
        assert "only_short" not in art.item_names

    def test_item_core_cascade(self) -> None:
        # k=2: 'rare' has 1 user -> dropped; that leaves 'v' with 4 interactions (< 5), so 'v'
        # goes, which leaves 'x' with one user ('w') -> dropped in the next round; 'w' keeps 5.
        rows = []
        for u, items in {
            "v": ["a", "b", "c", "x", "rare"],
            "w": ["a", "b", "c", "x", "d", "d"],
            "y": ["a", "b", "c", "d", "d", "a"],
            "z": ["a", "b", "c", "d", "a", "b"],
        }.items():
            rows += [(u, it, t) for t, it in enumerate(items)]
        out = filter_interactions(_frame(rows), PrepareConfig(item_core=2))
        assert sorted(set(out.get_column("user").to_list())) == ["w", "y", "z"]
        assert sorted(set(out.get_column("item").to_list())) == ["a", "b", "c", "d"]
        assert out.filter(pl.col("user") == "w").get_column("item").to_list() == list("abcdd")
        # without the core only the user filter applies
        out0 = filter_interactions(_frame(rows), PrepareConfig(item_core=0))
        assert len(out0) == len(rows)

    @FAST
    @given(
        data=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 11)), min_size=20, max_size=120),
        min_user=st.integers(3, 5),
        k=st.integers(0, 4),
    )
    def test_item_core_fixpoint_property(
        self, data: list[tuple[int, int]], min_user: int, k: int
    ) -> None:
        rows = [(f"u{u}", f"i{i}", t) for t, (u, i) in enumerate(data)]
        ref = _ref_core([(u, i) for u, i, _ in rows], min_user, k)
        cfg = PrepareConfig(min_user_interactions=min_user, item_core=k)
        if not ref:
            with pytest.raises(DataError):
                filter_interactions(_frame(rows), cfg)
            return
        out = filter_interactions(_frame(rows), cfg)
        got = list(
            zip(out.get_column("user").to_list(), out.get_column("item").to_list(), strict=True)
        )
        assert sorted(Counter(got).items()) == sorted(Counter(ref).items())
        per_user = Counter(u for u, _ in got)
        assert min(per_user.values()) >= min_user
        if k:
            users_of: dict[str, set[str]] = defaultdict(set)
            for u, i in got:
                users_of[i].add(u)
            assert min(len(s) for s in users_of.values()) >= k

    def test_dedupe_modes(self) -> None:
        items = ["a", "a", "b", "a", "c", "c", "d", "b"]
        rows = [("u", it, t) for t, it in enumerate(items)]
        seen = {}
        for mode in ("none", "consecutive", "first"):
            out = filter_interactions(
                _frame(rows), PrepareConfig(dedupe=mode, min_user_interactions=3)
            )
            seen[mode] = out.get_column("item").to_list()
        assert seen["none"] == items
        assert seen["consecutive"] == ["a", "b", "a", "c", "d", "b"]
        assert seen["first"] == ["a", "b", "c", "d"]

    def test_dedupe_works_per_user(self) -> None:
        # the same item at the end of one user and the start of the next is not a repeat
        rows = [("u1", it, t) for t, it in enumerate("abcdx")]
        rows += [("u2", it, t) for t, it in enumerate("xxyzw")]
        for mode, u2 in (("consecutive", list("xyzw")), ("first", list("xyzw"))):
            cfg = PrepareConfig(dedupe=mode, min_user_interactions=3)
            out = filter_interactions(_frame(rows), cfg)
            assert out.filter(pl.col("user") == "u1").get_column("item").to_list() == list("abcdx")
            assert out.filter(pl.col("user") == "u2").get_column("item").to_list() == u2

    def test_dedupe_uses_time_order_not_file_order(self) -> None:
        rows = [("u", "a", 3), ("u", "b", 0), ("u", "a", 1), ("u", "c", 2), ("u", "d", 4)]
        out = filter_interactions(
            _frame(rows), PrepareConfig(dedupe="first", min_user_interactions=3)
        )
        assert out.get_column("item").to_list() == ["b", "a", "c", "d"]
        assert out.get_column("timestamp").to_list() == [0, 1, 2, 4]

    def test_dedupe_happens_before_the_user_filter(self, tmp_path: Path) -> None:
        seqs = catalogue_seqs()
        seqs["repeater"] = ["i00", "i00", "i01", "i01", "i02"]  # 5 rows, 3 distinct items
        art = run_prepare(raw_dataset(seqs), tmp_path / "art", dedupe="first")
        assert "repeater" not in art.user_names
        art2 = run_prepare(raw_dataset(seqs), tmp_path / "art2", dedupe="none")
        assert "repeater" in art2.user_names

    def test_nobody_left_is_an_error(self, tmp_path: Path) -> None:
        with pytest.raises(DataError, match="no user"):
            prepare(raw_dataset({"u": ["a", "b", "c"]}), tmp_path / "art", config(), progress=False)
        assert not (tmp_path / "art").exists()


# ---------------------------------------------------------------- vocabularies


class TestVocabulary:
    def test_vocabularies_sorted_with_reserved_ids(self, tmp_path: Path) -> None:
        seqs = catalogue_seqs()
        records = default_items(sorted({i for s in seqs.values() for i in s}))
        a = run_prepare(raw_dataset(seqs, records), tmp_path / "a")
        b = run_prepare(raw_dataset(seqs, records[::-1]), tmp_path / "b")
        by_name = {r["item_id"]: r for r in records}
        for art in (a, b):
            brand, tags = art.fields["brand"], art.fields["tags"]
            assert brand.vocab == ["<pad>", "<missing>", "b0", "b1", "b2"]
            assert tags.vocab == ["<pad>", "<missing>", "t0", "t1", "t2", "t3"]
            assert art.item_names[:2] == ["<pad>", "<missing>"]
            assert brand.values[PAD_ID] == PAD_ID and brand.values[MISSING_ID] == MISSING_ID
            assert (tags.values[:2] == 0).all()
            for iid in range(2, art.n_items + 2):
                rec = by_name[art.item_names[iid]]
                if rec["brand"] is None:
                    assert brand.values[iid] == MISSING_ID and not brand.present[iid]
                else:
                    assert brand.vocab[brand.values[iid]] == rec["brand"] and brand.present[iid]
                decoded = [tags.vocab[v] for v in tags.values[iid] if v]
                assert decoded == (rec["tags"] or [])
                assert tags.present[iid] == (rec["tags"] is not None)
        assert snapshot(a.path) == snapshot(b.path)

    @FAST
    @given(
        values=st.lists(
            st.sampled_from(["zeta", "Alpha", "beta", "b", "é", "10", "9"]),
            min_size=15,
            max_size=15,
        )
    )
    def test_categorical_vocab_is_sorted_and_decodes(self, values: list[str]) -> None:
        seqs = catalogue_seqs(n_items=15)
        records = [{"item_id": f"i{k:02d}", "brand": v} for k, v in enumerate(values)]
        schema = Schema(fields=(CAT,))
        with tempfile.TemporaryDirectory() as tmp:
            art = run_prepare(raw_dataset(seqs, records, schema), Path(tmp) / "art")
            fd = art.fields["brand"]
            assert fd.vocab == ["<pad>", "<missing>", *sorted(set(values))]
            decoded = [fd.vocab[v] for v in fd.values[2:]]
            assert decoded == values

    def test_min_freq_drops_rare_values_and_counts_them(self, tmp_path: Path) -> None:
        seqs = catalogue_seqs(n_items=10)
        brands = [
            "common",
            "common",
            "common",
            "once",
            "twice",
            "twice",
            None,
            "other1",
            "common",
            None,
        ]
        tags = [["x"], ["x", "y"], ["lonely"], ["x"], None, ["y"], ["x"], ["y"], ["x"], ["y"]]
        records = [
            {"item_id": f"i{k:02d}", "brand": b, "tags": t}
            for k, (b, t) in enumerate(zip(brands, tags, strict=True))
        ]
        schema = Schema(
            fields=(
                FieldSpec(name="brand", kind=FieldKind.CATEGORICAL, min_freq=2),
                FieldSpec(name="tags", kind=FieldKind.MULTI_CATEGORICAL, min_freq=2),
            )
        )
        art = run_prepare(raw_dataset(seqs, records, schema), tmp_path / "art")
        brand, tag = art.fields["brand"], art.fields["tags"]
        assert brand.vocab == ["<pad>", "<missing>", "common", "twice"]
        assert art.manifest["fields"]["brand"]["dropped_rare_values"] == 2  # 'once', 'other1'
        assert art.manifest["fields"]["brand"]["vocab_size"] == 4
        # a dropped value counts as missing
        assert not brand.present[2 + 3] and brand.values[2 + 3] == MISSING_ID
        assert art.manifest["fields"]["brand"]["missing_rate"] == pytest.approx(4 / 10)
        assert tag.vocab == ["<pad>", "<missing>", "x", "y"]
        assert not tag.present[2 + 2] and (tag.values[2 + 2] == 0).all()  # only 'lonely': missing
        assert art.manifest["fields"]["tags"]["dropped_rare_values"] >= 1
        assert art.manifest["fields"]["tags"]["missing_rate"] == pytest.approx(2 / 10)

    def test_min_freq_counts_partly_dropped_multi_values(self, tmp_path: Path) -> None:
        seqs = catalogue_seqs(n_items=10)
        records = [
            {"item_id": f"i{k:02d}", "tags": ["x", "rare"] if k == 0 else ["x"]} for k in range(10)
        ]
        schema = Schema(
            fields=(FieldSpec(name="tags", kind=FieldKind.MULTI_CATEGORICAL, min_freq=2),)
        )
        art = run_prepare(raw_dataset(seqs, records, schema), tmp_path / "art")
        assert art.fields["tags"].vocab == ["<pad>", "<missing>", "x"]
        assert art.manifest["fields"]["tags"]["dropped_rare_values"] == 1

    def test_numeric_buckets_are_monotone_and_match_the_reader(self, tmp_path: Path) -> None:
        seqs = catalogue_seqs(n_items=20)
        records = [
            {"item_id": f"i{k:02d}", "price": None if k == 7 else float((k * 37) % 20)}
            for k in range(20)
        ]
        schema = Schema(fields=(NUM,))
        art = run_prepare(raw_dataset(seqs, records, schema), tmp_path / "art")
        fd = art.fields["price"]
        raw = np.load(art.path / "items/price.raw.npy")
        edges = art._json("vocab/price.json")["bucket_edges"]
        assert edges == sorted(edges) and len(edges) <= NUM.n_buckets - 1
        assert fd.cardinality == art.manifest["fields"]["price"]["vocab_size"] == len(edges) + 3
        p = fd.present
        assert not p[2 + 7] and fd.values[2 + 7] == MISSING_ID and np.isnan(raw[2 + 7])
        assert (fd.values[p] >= FIRST_VALUE_ID).all() and (fd.values[p] < fd.cardinality).all()
        order = np.argsort(raw[p], kind="stable")
        assert (np.diff(fd.values[p][order]) >= 0).all()  # larger price, same or larger bucket

    def test_reader_cardinality_matches_manifest(self, tmp_path: Path) -> None:
        art = run_prepare(raw_dataset(catalogue_seqs()), tmp_path / "art")
        for name, fd in art.fields.items():
            assert fd.cardinality == art.manifest["fields"][name]["vocab_size"]
            assert fd.values.shape[0] == art.n_items + 2
            assert list(fd.values.shape) == art.manifest["fields"][name]["shape"]


# ---------------------------------------------------------------- missing values


class TestMissing:
    def test_nulls_stay_missing(self, tmp_path: Path) -> None:
        seqs = catalogue_seqs(n_items=10)
        records = [
            {"item_id": f"i{k:02d}", "brand": "b", "tags": ["t"], "price": 1.0 + k}
            for k in range(10)
        ]
        records[3] = {"item_id": "i03", "brand": None, "tags": None, "price": None}
        art = run_prepare(raw_dataset(seqs, records), tmp_path / "art")
        iid = art.item_ids(["i03"])[0]
        for name, fd in art.fields.items():
            assert not fd.present[iid], name
            assert fd.present.sum() == 9, name
            assert art.manifest["fields"][name]["missing_rate"] == pytest.approx(0.1)
        assert art.fields["brand"].values[iid] == MISSING_ID
        assert (art.fields["tags"].values[iid] == 0).all()
        assert np.isnan(np.load(art.path / "items/price.raw.npy")[iid])
        assert art.manifest["counts"]["items_without_metadata"] == 0

    def test_nan_price_is_missing_not_a_bucket(self, tmp_path: Path) -> None:
        seqs = catalogue_seqs(n_items=10)
        records = [
            {"item_id": f"i{k:02d}", "price": float("nan") if k == 2 else float(k)}
            for k in range(10)
        ]
        art = run_prepare(raw_dataset(seqs, records, Schema(fields=(NUM,))), tmp_path / "art")
        fd = art.fields["price"]
        assert not fd.present[4] and fd.values[4] == MISSING_ID and fd.present.sum() == 9

    def test_items_without_metadata(self, tmp_path: Path) -> None:
        seqs = catalogue_seqs(n_items=10)
        seqs["u_extra"] = ["i00", "ghost_b", "i01", "ghost_a", "i02"]
        records = default_items([f"i{k:02d}" for k in range(10)])
        records.append({"item_id": "never_seen", "brand": "zzz", "tags": ["zzz"], "price": 1e9})
        art = run_prepare(raw_dataset(seqs, records), tmp_path / "art")
        assert art.manifest["counts"]["items_without_metadata"] == 2
        assert art.manifest["items_without_metadata_examples"] == ["ghost_a", "ghost_b"]
        assert "never_seen" not in art.item_names
        ghosts = art.item_ids(["ghost_a", "ghost_b"])
        for fd in art.fields.values():
            assert not fd.present[ghosts].any()
            assert "zzz" not in fd.vocab
        assert (art.fields["brand"].values[ghosts] == MISSING_ID).all()
        assert (art.fields["tags"].values[ghosts] == 0).all()
        assert "items without metadata  2" in summary_table(art.manifest)

    def test_summary_table(self, tmp_path: Path) -> None:
        art = run_prepare(raw_dataset(catalogue_seqs()), tmp_path / "art", discard=0.5)
        text = summary_table(art.manifest)
        assert f"users           {art.n_users:,}" in text
        assert "after discard" in text
        for name in SCHEMA.names:
            assert name in text
        plain = summary_table(run_prepare(raw_dataset(catalogue_seqs()), tmp_path / "b").manifest)
        assert "after discard" not in plain and "items without metadata" not in plain


# ---------------------------------------------------------------- atomic write


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class TestAtomicWrite:
    def _fail_on_manifest(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = prep._write_json

        def failing(path: Path, obj: Any) -> None:
            if path.name == "manifest.json":
                raise RuntimeError("disk full (simulated)")
            real(path, obj)

        monkeypatch.setattr(prep, "_write_json", failing)

    def test_failure_leaves_nothing(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self._fail_on_manifest(monkeypatch)
        with pytest.raises(RuntimeError, match="simulated"):
            run_prepare(raw_dataset(catalogue_seqs()), tmp_path / "art", discard=0.5)
        assert _leftovers(tmp_path) == []

    def test_failure_while_writing_arrays_leaves_nothing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real = prep._write_npy

        def failing(path: Path, arr: np.ndarray) -> None:
            if path.parent.name == "items":
                raise KeyboardInterrupt  # even an interrupt cleans up
            real(path, arr)

        monkeypatch.setattr(prep, "_write_npy", failing)
        with pytest.raises(KeyboardInterrupt):
            run_prepare(raw_dataset(catalogue_seqs()), tmp_path / "art")
        assert _leftovers(tmp_path) == []

    def test_existing_artifact_kept_without_overwrite(self, tmp_path: Path) -> None:
        raw = raw_dataset(catalogue_seqs())
        before = snapshot(run_prepare(raw, tmp_path / "art", seed=1).path)
        with pytest.raises(DataError, match="exists"):
            run_prepare(raw, tmp_path / "art", seed=2)
        assert snapshot(tmp_path / "art") == before
        assert _leftovers(tmp_path) == ["art"]

    def test_overwrite_replaces(self, tmp_path: Path) -> None:
        raw = raw_dataset(catalogue_seqs())
        run_prepare(raw, tmp_path / "art", seed=1, discard=0.5)
        (tmp_path / "art" / "stray.txt").write_text("from an older run")
        art = run_prepare(raw, tmp_path / "art", seed=2, overwrite=True)
        assert art.manifest["seed"] == 2
        assert "stray.txt" not in snapshot(art.path)
        assert not (art.path / "truth").exists()
        assert snapshot(art.path) == snapshot(run_prepare(raw, tmp_path / "fresh", seed=2).path)
        assert _leftovers(tmp_path) == ["art", "fresh"]

    def test_failed_overwrite_keeps_the_old_artifact(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        raw = raw_dataset(catalogue_seqs())
        before = snapshot(run_prepare(raw, tmp_path / "art", seed=1).path)
        self._fail_on_manifest(monkeypatch)
        with pytest.raises(RuntimeError):
            run_prepare(raw, tmp_path / "art", seed=2, overwrite=True)
        assert snapshot(tmp_path / "art") == before
        assert _leftovers(tmp_path) == ["art"]

    def test_failed_final_rename_keeps_the_old_artifact(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        raw = raw_dataset(catalogue_seqs())
        before = snapshot(run_prepare(raw, tmp_path / "art", seed=1).path)
        real = os.replace

        def failing(src: Any, dst: Any) -> None:
            if ".tmp-" in Path(src).name:
                raise OSError("rename failed (simulated)")
            real(src, dst)

        monkeypatch.setattr(prep.os, "replace", failing)
        with pytest.raises(OSError, match="simulated"):
            run_prepare(raw, tmp_path / "art", seed=2, overwrite=True)
        monkeypatch.undo()
        assert _leftovers(tmp_path) == ["art"]
        assert snapshot(tmp_path / "art") == before

    def test_reader_detects_tampering_and_non_artifacts(self, tmp_path: Path) -> None:
        art = run_prepare(raw_dataset(catalogue_seqs()), tmp_path / "art")
        np.save(art.path / "split/test_target.npy", np.zeros(art.n_users, dtype=np.int32))
        Artifact(art.path, verify="off")  # no verification: opens
        with pytest.raises(DataError, match="checksum mismatch"):
            Artifact(art.path, verify=True)
        with pytest.raises(DataError, match="no manifest"):
            Artifact(tmp_path)
        with pytest.raises(DataError, match="unknown item"):
            art.item_ids(["i00", "nope"])
        with pytest.raises(ValueError, match="stage"):
            art.split("train")
        assert not art.flat_items.flags.writeable

    def test_duplicate_item_rows_are_a_data_error(self, tmp_path: Path) -> None:
        seqs = catalogue_seqs(n_items=10)
        records = default_items([f"i{k:02d}" for k in range(10)])
        records.append({**records[0], "brand": "other"})
        with pytest.raises(DataError, match="i00"):
            run_prepare(raw_dataset(seqs, records), tmp_path / "art")


# ---------------------------------------------------------------- integration


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (../shared/data/{name} next to the repository)")
    return path


@pytest.mark.integration
class TestRealData:
    @pytest.fixture(scope="class")
    def beauty(self, tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, Artifact]:
        from miir.data.readers.sequences import read_sequence_dir

        raw = read_sequence_dir(_shared("amazon-beauty"))
        root = tmp_path_factory.mktemp("beauty")
        cfg = PrepareConfig(encode_text=False, discard=0.5)
        arts = []
        for k in range(2):
            prepare(raw, root / f"art{k}", cfg, progress=False)
            arts.append(Artifact(root / f"art{k}", verify=True))
        return arts[0], arts[1]

    def test_beauty_counts(self, beauty: tuple[Artifact, Artifact]) -> None:
        art = beauty[0]
        c = art.manifest["counts"]
        assert (c["users"], c["items"], c["interactions"]) == (22_363, 12_101, 198_502)
        assert c["raw_interactions"] == 198_502 and c["items_without_metadata"] == 0
        assert "title" not in art.fields  # encode_text=False
        assert len(art.flat_items) == 198_502

    def test_beauty_missing_rates(self, beauty: tuple[Artifact, Artifact]) -> None:
        brand = beauty[0].manifest["fields"]["brand"]
        assert round(brand["missing_rate"], 3) == 0.173
        assert 0.575 <= brand["missing_rate_after_discard"] <= 0.597
        fd = beauty[0].fields["brand"]
        assert 1 - fd.truth_present[2:].mean() == pytest.approx(brand["missing_rate"])

    def test_beauty_is_reproducible(self, beauty: tuple[Artifact, Artifact]) -> None:
        a, b = beauty
        assert a.manifest["files"] == b.manifest["files"]
        assert (a.path / "manifest.json").read_bytes() == (b.path / "manifest.json").read_bytes()

    def test_beauty_split_and_negatives(self, beauty: tuple[Artifact, Artifact]) -> None:
        art = beauty[0]
        lengths = np.diff(art.offsets)
        assert lengths.min() >= 5
        test, test_neg = art.split("test")
        valid, valid_neg = art.split("valid")
        np.testing.assert_array_equal(test, art.flat_items[art.offsets[1:] - 1])
        np.testing.assert_array_equal(valid, art.flat_items[art.offsets[1:] - 2])
        for negs in (test_neg, valid_neg):
            assert negs.shape == (art.n_users, 99)
            assert negs.min() >= 2 and negs.max() <= art.n_items + 1
            srt = np.sort(negs, axis=1)
            assert (np.diff(srt, axis=1) > 0).all()  # distinct per user
        # history exclusion: no negative is any item of the user's sequence ((user, item) keys)
        width = art.n_items + 2
        seen = np.repeat(np.arange(art.n_users, dtype=np.int64), lengths) * width + art.flat_items
        for negs in (test_neg, valid_neg):
            rows = np.arange(art.n_users, dtype=np.int64)[:, None] * width
            assert not np.isin(rows + negs, seen).any()

    def test_ml100k(self, tmp_path: Path) -> None:
        from miir.data.readers.movielens import read_movielens100k

        raw = read_movielens100k(_shared("ml-100k"))
        prepare(raw, tmp_path / "art", PrepareConfig(encode_text=False), progress=False)
        art = Artifact(tmp_path / "art", verify=True)
        c = art.manifest["counts"]
        assert (c["users"], c["items"], c["interactions"]) == (943, 1_682, 100_000)
        year = art.fields["release_year"]
        assert int((~year.present[2:]).sum()) == 1
        assert set(art.fields) == {"genres", "release_year"}
