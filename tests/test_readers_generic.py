"""Generic tables reader: CSV, Parquet and JSON-lines tables described by a schema file."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from miir.data.readers.generic import read_generic
from miir.data.schema import FieldKind, FieldSpec, Schema
from miir.errors import DataError

GENERIC = Path(__file__).parent / "fixtures" / "generic"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A writable copy of the fixture folder."""
    out = tmp_path / "generic"
    shutil.copytree(GENERIC, out)
    return out


def row(df: pl.DataFrame, item: str) -> dict:
    return df.filter(pl.col("item_id") == item).to_dicts()[0]


def test_toml_schema_with_csv_tables() -> None:
    ds = read_generic(GENERIC / "schema.toml")
    assert ds.name == "toy-generic"
    assert ds.sources == (GENERIC / "schema.toml", GENERIC / "inter.csv", GENERIC / "items.csv")
    assert ds.interactions.schema == {"user": pl.String, "item": pl.String, "timestamp": pl.Int64}
    # integer, float (floored) and ISO 8601 timestamps (no zone = UTC)
    assert ds.interactions.to_dicts() == [
        {"user": "u1", "item": "i1", "timestamp": 1000},
        {"user": "u1", "item": "i2", "timestamp": 2000},
        {"user": "u2", "item": "i1", "timestamp": 1609459200},
        {"user": "u2", "item": "i3", "timestamp": 1609459200},
    ]
    assert [(f.name, f.kind) for f in ds.schema.fields] == [
        ("brand", FieldKind.CATEGORICAL),
        ("categories", FieldKind.MULTI_CATEGORICAL),
        ("title", FieldKind.TEXT),
        ("price", FieldKind.NUMERIC),
    ]
    items = ds.items
    assert items.columns == ["item_id", "brand", "categories", "title", "price"]  # 'unused' dropped
    assert row(items, "i1") == {
        "item_id": "i1",
        "brand": "Acme",
        "categories": ["Shoes", "Red"],
        "title": "Red shoes, size 9",
        "price": 12.5,
    }
    assert row(items, "i2") == {
        "item_id": "i2",
        "brand": "Acme",
        "categories": None,
        "title": None,
        "price": None,
    }
    # a quoted value spanning two lines; an empty list element dropped
    i3 = row(items, "i3")
    assert i3["title"] == "Travel bag,\ntwo straps"
    assert i3["categories"] == ["Bags", "Travel"]
    assert i3["brand"] is None


def test_json_schema_with_jsonl_items() -> None:
    ds = read_generic(GENERIC / "schema.json")
    assert ds.name == "schema"
    assert ds.schema.get("price").n_buckets == 4
    items = ds.items
    assert row(items, "i1")["categories"] == ["Shoes", "Red"]
    assert row(items, "i1")["year"] == "1996"  # a JSON integer read as a category, not "1996.0"
    assert row(items, "i2") == {
        "item_id": "i2",
        "brand": "Acme",
        "categories": None,
        "title": None,
        "price": None,
        "year": None,
    }
    assert row(items, "i3")["categories"] == ["Bags"]
    assert row(items, "i3")["price"] == 3.0


def test_parquet_tables(tmp_path: Path) -> None:
    pl.DataFrame(
        {
            "uid": [1, 2],
            "iid": ["a", "b"],
            "when": [datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 2, tzinfo=UTC)],
        }
    ).write_parquet(tmp_path / "inter.parquet")
    pl.DataFrame(
        {
            "iid": ["a", "b"],
            "tags": [["x", "y"], None],
            "genres": ["g1|g2", None],
            "price": [1.5, None],
        }
    ).write_parquet(tmp_path / "items.parquet")
    (tmp_path / "s.toml").write_text(
        '[interactions]\npath = "inter.parquet"\nuser = "uid"\nitem = "iid"\ntimestamp = "when"\n'
        '[items]\npath = "items.parquet"\nid = "iid"\n'
        '[fields]\ntags = "multi_categorical"\ngenres = "multi_categorical"\nprice = "numeric"\n'
    )
    ds = read_generic(tmp_path / "s.toml")
    assert ds.interactions.to_dicts() == [
        {"user": "1", "item": "a", "timestamp": 1577836800},
        {"user": "2", "item": "b", "timestamp": 1577923200},
    ]
    assert ds.items.to_dicts() == [
        {"item_id": "a", "tags": ["x", "y"], "genres": ["g1", "g2"], "price": 1.5},
        {"item_id": "b", "tags": None, "genres": None, "price": None},
    ]


def test_parquet_duplicate_item_names_rows(tmp_path: Path) -> None:
    pl.DataFrame({"item_id": ["a", "b", "a"]}).write_parquet(tmp_path / "items.parquet")
    with pytest.raises(
        DataError, match=r"items\.parquet field 'item_id': duplicate item 'a' \(rows \[1, 3\]\)"
    ):
        read_generic(
            interactions_path=GENERIC / "inter.csv",
            items_path=tmp_path / "items.parquet",
            timestamp="ts",
        )


def test_keyword_overrides() -> None:
    ds = read_generic(
        GENERIC / "schema.toml",
        fields={"price": "drop", "brand": "text"},
        user="item_id",
        item="user_id",
        name="swapped",
    )
    assert ds.name == "swapped"
    assert ds.schema.names == ["brand", "categories", "title"]
    assert ds.schema.get("brand").kind == FieldKind.TEXT
    assert ds.interactions.row(0) == ("i1", "u1", 1000)
    schema = Schema(fields=(FieldSpec(name="title", kind=FieldKind.TEXT),))
    assert read_generic(GENERIC / "schema.toml", schema=schema).items.columns == [
        "item_id",
        "title",
    ]


def test_no_item_table() -> None:
    ds = read_generic(interactions_path=GENERIC / "inter.csv", timestamp="ts")
    assert ds.items.columns == ["item_id"] and ds.items.height == 0
    assert ds.schema.fields == ()


def test_csv_wrong_field_count_names_the_line(folder: Path) -> None:
    items = folder / "items.csv"
    # the record of line 7 follows a record spanning lines 5-6 and a blank line 4
    items.write_text(items.read_text() + "i4,Hat,Acme,Hats,2,w,extra\n")
    with pytest.raises(
        DataError, match=r"items\.csv:7: malformed line: 7 fields, the header has 6"
    ):
        read_generic(folder / "schema.toml")


def test_csv_bad_quoting_names_the_line(folder: Path) -> None:
    (folder / "inter.csv").write_text('user_id,item_id,ts\nu1,i1,1\nu1,"i2"x,2\n')
    with pytest.raises(DataError, match=r"inter\.csv:3: malformed line"):
        read_generic(folder / "schema.toml")


def test_missing_column_names_file_and_column(folder: Path) -> None:
    (folder / "inter.csv").write_text("user_id,item,ts\nu1,i1,1\n")
    with pytest.raises(DataError, match=r"inter\.csv field 'item_id': missing column 'item_id'"):
        read_generic(folder / "schema.toml")
    with pytest.raises(DataError, match=r"items\.csv field 'colour': missing column"):
        read_generic(
            GENERIC / "schema.toml",
            fields={},
            schema=Schema(fields=(FieldSpec(name="colour", kind=FieldKind.CATEGORICAL),)),
        )
    (folder / "items.jsonl").write_text('{"asin": "i1"}\n')
    with pytest.raises(DataError, match=r"items\.jsonl field 'brand': missing column"):
        read_generic(folder / "schema.json", interactions_path=GENERIC / "inter.csv")


def test_unparsable_timestamp_names_column_and_line(folder: Path) -> None:
    (folder / "inter.csv").write_text("user_id,item_id,ts\nu1,i1,1\nu1,i2,2\nu2,i1,last tuesday\n")
    with pytest.raises(
        DataError, match=r"inter\.csv:4 field 'ts': cannot read timestamp 'last tuesday'"
    ):
        read_generic(folder / "schema.toml")


def test_missing_timestamp_and_id(folder: Path) -> None:
    (folder / "inter.csv").write_text("user_id,item_id,ts\nu1,i1,1\nu1,i2,\n")
    with pytest.raises(DataError, match=r"inter\.csv:3 field 'ts': missing timestamp"):
        read_generic(folder / "schema.toml")
    (folder / "inter.csv").write_text("user_id,item_id,ts\nu1,i1,1\n,i2,2\n")
    with pytest.raises(DataError, match=r"inter\.csv:3 field 'user_id': missing user id"):
        read_generic(folder / "schema.toml")


def test_bad_number_names_field_and_line(folder: Path) -> None:
    (folder / "items.csv").write_text(
        "item_id,title,brand,categories,price\ni1,a,b,c,1\ni2,a,b,c,cheap\n"
    )
    with pytest.raises(DataError, match=r"items\.csv:3 field 'price': not a number: 'cheap'"):
        read_generic(folder / "schema.toml")


def test_non_utf8_names_the_line(folder: Path) -> None:
    (folder / "items.csv").write_bytes(
        b"item_id,title,brand,categories,price\ni1,a,b,c,1\ni2,caf\xe9,b,c,2\n"
    )
    with pytest.raises(DataError, match=r"items\.csv:3: not valid utf-8: byte 0xe9"):
        read_generic(folder / "schema.toml")


def test_duplicate_item_names_the_lines(folder: Path) -> None:
    (folder / "items.csv").write_text(
        "item_id,title,brand,categories,price\ni1,a,b,c,1\ni2,a,b,c,2\ni1,a,b,c,3\n"
    )
    with pytest.raises(
        DataError, match=r"items\.csv:4 field 'item_id': duplicate item 'i1' \(lines \[2, 4\]\)"
    ):
        read_generic(folder / "schema.toml")
    (folder / "items.jsonl").write_text(
        '{"asin": "x", "brand": "b", "categories": [], "title": "t", "price": 1, "year": 1}\n{"asin": "x"}\n'
    )
    with pytest.raises(DataError, match=r"items\.jsonl:2 field 'asin': duplicate item 'x'"):
        read_generic(folder / "schema.json")


def test_empty_files(folder: Path) -> None:
    (folder / "inter.csv").write_text("")
    with pytest.raises(DataError, match=r"inter\.csv: empty file"):
        read_generic(folder / "schema.toml")
    (folder / "inter.csv").write_text("\n\n")
    with pytest.raises(DataError, match=r"inter\.csv: empty file"):
        read_generic(folder / "schema.toml")
    (folder / "inter.csv").write_text("user_id,item_id,ts\n")
    with pytest.raises(DataError, match=r"inter\.csv: no interactions"):
        read_generic(folder / "schema.toml")
    (folder / "items.jsonl").write_text("")
    with pytest.raises(DataError, match=r"items\.jsonl: empty file"):
        read_generic(folder / "schema.json", interactions_path=GENERIC / "inter.csv")


def test_malformed_jsonl_line(folder: Path) -> None:
    (folder / "items.jsonl").write_text('{"asin": "i1", "brand": "b"}\n{"asin": "i2", \n')
    with pytest.raises(DataError, match=r"items\.jsonl:2: malformed JSON"):
        read_generic(folder / "schema.json")


def test_unknown_field_kind_names_the_field(folder: Path) -> None:
    text = (folder / "schema.toml").read_text().replace('price = "numeric"', 'price = "money"')
    (folder / "schema.toml").write_text(text)
    with pytest.raises(DataError, match=r"schema\.toml field 'price': unknown field kind 'money'"):
        read_generic(folder / "schema.toml")
    with pytest.raises(DataError, match=r"field 'brand': unknown field kind 'nominal'"):
        read_generic(GENERIC / "schema.toml", fields={"brand": "nominal"})


def test_unknown_schema_key_is_an_error(folder: Path) -> None:
    text = (folder / "schema.toml").read_text().replace('user = "user_id"', 'usr = "user_id"')
    (folder / "schema.toml").write_text(text)
    with pytest.raises(
        DataError, match=r"schema\.toml field 'interactions': unknown key\(s\) \['usr'\]"
    ):
        read_generic(folder / "schema.toml")


def test_unsupported_suffix_and_missing_file(folder: Path) -> None:
    with pytest.raises(DataError, match=r"inter\.xlsx: unsupported file type"):
        read_generic(folder / "schema.toml", interactions_path=folder / "inter.xlsx")
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_generic(folder / "schema.toml", interactions_path=folder / "nope.csv")


def test_fields_without_item_table(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(
        f'[interactions]\npath = "{(GENERIC / "inter.csv").as_posix()}"\ntimestamp = "ts"\n'
        '[fields]\nbrand = "categorical"\n'
    )
    with pytest.raises(
        DataError, match=r"s\.toml: fields \['brand'\] are declared but no item table"
    ):
        read_generic(tmp_path / "s.toml")
