"""RecBole atomic files reader (``<name>.inter`` / ``<name>.item``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from miir.data.readers.recbole import read_recbole
from miir.data.schema import FieldKind, FieldSpec, Schema
from miir.errors import DataError

RECBOLE = Path(__file__).parent / "fixtures" / "recbole"
TOY = RECBOLE / "toy"


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """A writable copy of the ``toy`` data set."""
    out = tmp_path / "toy"
    shutil.copytree(TOY, out)
    return out


def row(df: pl.DataFrame, item: str) -> dict:
    return df.filter(pl.col("item_id") == item).to_dicts()[0]


def test_inter_and_item() -> None:
    ds = read_recbole(TOY, fields={"embedding": "drop"})
    assert ds.name == "toy"
    assert ds.sources == (TOY / "toy.inter", TOY / "toy.item")
    assert ds.interactions.schema == {"user": pl.String, "item": pl.String, "timestamp": pl.Int64}
    assert ds.interactions.to_dicts() == [
        {"user": "196", "item": "242", "timestamp": 881250949},
        {"user": "186", "item": "302", "timestamp": 891717742},
        {"user": "196", "item": "377", "timestamp": 878887116},  # float floored
    ]
    assert [(f.name, f.kind) for f in ds.schema.fields] == [
        ("movie_title", FieldKind.TEXT),  # token_seq named *_title
        ("release_year", FieldKind.CATEGORICAL),  # token
        ("class", FieldKind.MULTI_CATEGORICAL),  # token_seq
        ("price", FieldKind.NUMERIC),  # float
    ]
    assert row(ds.items, "302") == {
        "item_id": "302",
        "movie_title": "L.A. Confidential",
        "release_year": "1997",
        "class": ["Crime", "Film-Noir", "Mystery", "Thriller"],
        "price": None,
    }
    assert row(ds.items, "377") == {
        "item_id": "377",
        "movie_title": "Heavyweights",
        "release_year": None,
        "class": None,
        "price": 2.0,
    }


def test_float_seq_is_unsupported_unless_dropped() -> None:
    with pytest.raises(DataError, match=r"toy\.item field 'embedding': unsupported type float_seq"):
        read_recbole(TOY)
    with pytest.raises(DataError, match=r"field 'embedding': unsupported"):
        read_recbole(TOY, schema=Schema(fields=(FieldSpec(name="embedding", kind=FieldKind.TEXT),)))
    schema = Schema(fields=(FieldSpec(name="price", kind=FieldKind.NUMERIC),))
    assert read_recbole(TOY, "toy", schema=schema).items.columns == ["item_id", "price"]


def test_overrides() -> None:
    ds = read_recbole(TOY, fields={"embedding": "drop", "class": "text", "release_year": "numeric"})
    assert ds.schema.get("class").kind == FieldKind.TEXT
    assert row(ds.items, "302")["class"] == "Crime Film-Noir Mystery Thriller"
    assert row(ds.items, "242")["release_year"] == 1996.0
    with pytest.raises(DataError, match=r"unknown field\(s\) \['genre'\]"):
        read_recbole(TOY, fields={"genre": "text"})


def test_unknown_field_kind_names_the_field() -> None:
    with pytest.raises(DataError, match=r"toy\.item field 'class': unknown field kind 'tags'"):
        read_recbole(TOY, fields={"embedding": "drop", "class": "tags"})


def test_seq_separator(toy: Path) -> None:
    (toy / "toy.item").write_text("item_id:token\tclass:token_seq\n242\tComedy,Drama\n")
    ds = read_recbole(toy, seq_separator=",")
    assert ds.items.to_dicts() == [{"item_id": "242", "class": ["Comedy", "Drama"]}]


def test_no_timestamp_means_file_order() -> None:
    ds = read_recbole(RECBOLE / "notime")
    assert ds.interactions.get_column("timestamp").to_list() == [0, 1, 2]
    assert ds.items.columns == ["item_id"] and ds.items.height == 0
    assert ds.sources == (RECBOLE / "notime" / "notime.inter",)


def test_name_is_found_or_required(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(TOY / "toy.inter", folder / "a.inter")
    assert read_recbole(folder).name == "a"
    shutil.copy(TOY / "toy.inter", folder / "b.inter")
    with pytest.raises(DataError, match=r"several \.inter files \['a', 'b'\]"):
        read_recbole(folder)
    assert read_recbole(folder, "b").name == "b"
    with pytest.raises(DataError, match=r"c\.inter: file not found"):
        read_recbole(folder, "c")


def test_malformed_line_names_file_and_line(toy: Path) -> None:
    (toy / "toy.inter").write_text("user_id:token\titem_id:token\n1\t2\n1\t3\t4\n")
    with pytest.raises(DataError, match=r"toy\.inter:3: malformed line: 3 tab-separated fields"):
        read_recbole(toy)


def test_malformed_header(toy: Path) -> None:
    (toy / "toy.inter").write_text("user_id:token\titem_id\n1\t2\n")
    with pytest.raises(DataError, match=r"toy\.inter:1: malformed header: expected 'name:type'"):
        read_recbole(toy)
    (toy / "toy.inter").write_text("user_id:token\titem_id:int\n1\t2\n")
    with pytest.raises(DataError, match=r"toy\.inter:1 field 'item_id': unknown type 'int'"):
        read_recbole(toy)


def test_missing_column_names_file_and_column(toy: Path) -> None:
    (toy / "toy.inter").write_text("user_id:token\tmovie_id:token\n1\t2\n")
    with pytest.raises(DataError, match=r"toy\.inter field 'item_id': missing column 'item_id'"):
        read_recbole(toy)
    shutil.copy(TOY / "toy.inter", toy / "toy.inter")
    (toy / "toy.item").write_text("movie_id:token\tclass:token_seq\n2\tA\n")
    with pytest.raises(DataError, match=r"toy\.item field 'item_id': missing column 'item_id'"):
        read_recbole(toy)


def test_bad_values_name_the_line(toy: Path) -> None:
    (toy / "toy.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t5\n1\t3\tsoon\n"
    )
    with pytest.raises(
        DataError, match=r"toy\.inter:3 field 'timestamp': cannot read timestamp 'soon'"
    ):
        read_recbole(toy)
    shutil.copy(TOY / "toy.inter", toy / "toy.inter")
    (toy / "toy.item").write_text("item_id:token\tprice:float\n242\t1\n302\tfree\n")
    with pytest.raises(DataError, match=r"toy\.item:3 field 'price': not a number: 'free'"):
        read_recbole(toy)


def test_non_utf8_names_the_line(toy: Path) -> None:
    (toy / "toy.item").write_bytes(
        b"item_id:token\tmovie_title:token_seq\n242\tKolya\n302\tAm\xe9lie\n"
    )
    with pytest.raises(DataError, match=r"toy\.item:3: not valid utf-8: byte 0xe9"):
        read_recbole(toy)


def test_duplicate_item_names_the_lines(toy: Path) -> None:
    (toy / "toy.item").write_text("item_id:token\tclass:token_seq\n242\tA\n302\tB\n242\tC\n")
    with pytest.raises(
        DataError, match=r"toy\.item:4 field 'item_id': duplicate item '242' \(lines \[2, 4\]\)"
    ):
        read_recbole(toy)


def test_empty_files(toy: Path) -> None:
    (toy / "toy.item").write_text("")
    with pytest.raises(DataError, match=r"toy\.item: empty file"):
        read_recbole(toy)
    (toy / "toy.inter").write_text("user_id:token\titem_id:token\n")
    with pytest.raises(DataError, match=r"toy\.inter: no interactions"):
        read_recbole(toy)
