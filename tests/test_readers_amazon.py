"""Amazon 2014 and 2018 readers, on hand-written files in the upstream formats."""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl
import pytest

from miir.data.readers.amazon2014 import read_amazon2014
from miir.data.readers.amazon2018 import parse_price, read_amazon2018, strip_html
from miir.data.schema import FieldKind, FieldSpec, Schema
from miir.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures"
A14 = FIXTURES / "amazon2014"
A18 = FIXTURES / "amazon2018"


def gz(path: Path, data: str | bytes | Path) -> Path:
    """Write ``data`` (text, bytes or a fixture file's content) gzip-compressed to ``path``."""
    if isinstance(data, Path):
        data = data.read_bytes()
    if isinstance(data, str):
        data = data.encode("utf-8")
    with gzip.open(path, "wb") as fh:
        fh.write(data)
    return path


def row(df: pl.DataFrame, item: str) -> dict:
    return df.filter(pl.col("item_id") == item).to_dicts()[0]


@pytest.fixture
def meta14(tmp_path: Path) -> Path:
    return gz(tmp_path / "meta_Beauty.json.gz", A14 / "meta_Beauty.json")


@pytest.fixture
def meta18(tmp_path: Path) -> Path:
    return gz(tmp_path / "meta_Beauty.json.gz", A18 / "meta_Beauty.json")


# --- 2014 ---------------------------------------------------------------------------------------


def test_2014_ratings_csv_and_meta(meta14: Path) -> None:
    ds = read_amazon2014(A14 / "ratings_Beauty.csv", meta14)
    assert ds.name == "amazon2014-beauty"
    assert ds.sources == (A14 / "ratings_Beauty.csv", meta14)
    assert ds.interactions.schema == {"user": pl.String, "item": pl.String, "timestamp": pl.Int64}
    assert ds.interactions.row(0) == ("A39HTATAQ9V7YF", "0205616461", 1369699200)
    assert ds.interactions.height == 5
    kinds = {f.name: f.kind for f in ds.schema.fields}
    assert kinds == {
        "title": FieldKind.TEXT,
        "description": FieldKind.TEXT,
        "brand": FieldKind.CATEGORICAL,
        "categories": FieldKind.MULTI_CATEGORICAL,
        "price": FieldKind.NUMERIC,
        "sales_rank": FieldKind.NUMERIC,
    }
    items = ds.items
    assert items.columns == ["item_id", *ds.schema.names]
    first = row(items, "0205616461")
    assert first["title"] == "Bio-Active Anti-Aging Serum (Firming Ultra-Hydrating Serum)"
    assert first["categories"] == ["Beauty", "Skin Care", "Face", "Creams & Moisturizers"]
    assert first["sales_rank"] == 402875.0
    assert first["brand"] is None and first["price"] is None  # absent keys stay missing
    kit = row(items, "0558925278")
    # the first category path only, top level first; the smallest rank of several
    assert kit["categories"] == ["Beauty", "Tools & Accessories", "Makeup Brushes & Tools"]
    assert kit["sales_rank"] == 5000.0
    assert kit["price"] == 22.66 and kit["brand"] == "EcoTools"
    assert kit["description"] == "A kit that's easy to carry."
    gloves = row(items, "0733001998")
    # '' brand, [[]] categories and {} salesRank are all missing, never a placeholder
    assert gloves["brand"] is None and gloves["categories"] is None and gloves["sales_rank"] is None
    assert gloves["price"] == 5.0
    assert row(items, "7806397051")["title"] == "Cosmetic Eyeshadow Palette &amp; Brush"


def test_2014_reviews_gz_and_all_category_paths(tmp_path: Path, meta14: Path) -> None:
    reviews = gz(tmp_path / "reviews_Beauty_5.json.gz", A14 / "reviews_Beauty_5.json")
    ds = read_amazon2014(reviews, meta14, category_paths="all")
    assert ds.interactions.to_dicts()[2] == {
        "user": "A1YJEY40YUW4SE",
        "item": "0558925278",
        "timestamp": 1391126400,
    }
    assert row(ds.items, "0558925278")["categories"] == [
        "Beauty",
        "Tools & Accessories",
        "Makeup Brushes & Tools",
        "Skin Care",
        "Face",
    ]


def test_2014_reviews_as_python_literals(tmp_path: Path) -> None:
    path = gz(
        tmp_path / "reviews_Beauty.json.gz",
        "{'reviewerID': 'U1', 'asin': 'I1', 'unixReviewTime': 5, 'verified': True}\n",
    )
    ds = read_amazon2014(path)
    assert ds.interactions.to_dicts() == [{"user": "U1", "item": "I1", "timestamp": 5}]
    assert ds.items.height == 0


def test_2014_schema_subset(meta14: Path) -> None:
    schema = Schema(fields=(FieldSpec(name="brand", kind=FieldKind.CATEGORICAL),))
    ds = read_amazon2014(A14 / "ratings_Beauty.csv", meta14, schema=schema)
    assert ds.items.columns == ["item_id", "brand"]


def test_2014_schema_naming_an_unknown_field(meta14: Path) -> None:
    schema = Schema(fields=(FieldSpec(name="colour", kind=FieldKind.CATEGORICAL),))
    with pytest.raises(DataError, match="field 'colour'"):
        read_amazon2014(A14 / "ratings_Beauty.csv", meta14, schema=schema)


def test_2014_bad_category_paths_option(meta14: Path) -> None:
    with pytest.raises(ConfigError, match="category_paths"):
        read_amazon2014(A14 / "ratings_Beauty.csv", meta14, category_paths="last")  # type: ignore[arg-type]


def test_2014_meta_malformed_line(tmp_path: Path) -> None:
    meta = gz(tmp_path / "meta_Beauty.json.gz", "{'asin': 'A'}\n{'asin': 'B', 'title': 'x'\n")
    with pytest.raises(DataError, match=r"meta_Beauty\.json\.gz:2: malformed line") as exc:
        read_amazon2014(A14 / "ratings_Beauty.csv", meta)
    assert exc.value.line == 2


def test_2014_meta_not_a_dict(tmp_path: Path) -> None:
    meta = gz(tmp_path / "meta_Beauty.json.gz", "{'asin': 'A'}\n\n['asin', 'B']\n")
    with pytest.raises(DataError, match=r"meta_Beauty\.json\.gz:3: .*expected a dict, got list"):
        read_amazon2014(A14 / "ratings_Beauty.csv", meta)


def test_2014_meta_is_never_evaluated(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    meta = gz(tmp_path / "meta_Beauty.json.gz", f"open({str(target)!r}, 'w')\n")
    with pytest.raises(DataError, match=r":1: malformed line"):
        read_amazon2014(A14 / "ratings_Beauty.csv", meta)
    assert not target.exists()


def test_2014_meta_duplicate_item(tmp_path: Path) -> None:
    meta = gz(
        tmp_path / "meta_Beauty.json.gz",
        "{'asin': 'A'}\n{'asin': 'B'}\n{'asin': 'A', 'price': 1.0}\n",
    )
    with pytest.raises(DataError, match=r"meta_Beauty\.json\.gz:3 .*duplicate item 'A' .*line 1"):
        read_amazon2014(A14 / "ratings_Beauty.csv", meta)


def test_2014_meta_missing_asin(tmp_path: Path) -> None:
    meta = gz(tmp_path / "meta_Beauty.json.gz", "{'asin': 'A'}\n{'title': 'no id'}\n")
    with pytest.raises(DataError, match=r"meta_Beauty\.json\.gz:2 field 'asin'"):
        read_amazon2014(A14 / "ratings_Beauty.csv", meta)


def test_2014_meta_wrong_type(tmp_path: Path) -> None:
    meta = gz(tmp_path / "meta_Beauty.json.gz", "{'asin': 'A', 'categories': 'Beauty'}\n")
    with pytest.raises(DataError, match=r":1 field 'categories'"):
        read_amazon2014(A14 / "ratings_Beauty.csv", meta)


def test_2014_ratings_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "ratings_Beauty.csv"
    path.write_text("U1,I1,5.0,100\nU2,I2,5.0\n")
    with pytest.raises(DataError, match=r"ratings_Beauty\.csv:2: malformed line: expected 4"):
        read_amazon2014(path)


def test_2014_ratings_bad_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "ratings_Beauty.csv"
    path.write_text("U1,I1,5.0,100\nU2,I2,5.0,100\nU3,I3,5.0,yesterday\n")
    with pytest.raises(DataError, match=r"ratings_Beauty\.csv:3 field 'timestamp'"):
        read_amazon2014(path)


def test_2014_review_missing_key(tmp_path: Path) -> None:
    path = gz(
        tmp_path / "reviews_Beauty_5.json.gz",
        '{"reviewerID": "U1", "asin": "I1", "unixReviewTime": 1}\n{"reviewerID": "U1", "asin": "I2"}\n',
    )
    with pytest.raises(DataError, match=r"reviews_Beauty_5\.json\.gz:2 field 'unixReviewTime'"):
        read_amazon2014(path)


def test_2014_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "ratings_Beauty.csv"
    path.write_bytes(b"U1,I1,5.0,100\nU\xff2,I2,5.0,100\n")
    with pytest.raises(DataError, match=r"ratings_Beauty\.csv:2: not valid utf-8: byte 0xff"):
        read_amazon2014(path)
    meta = gz(tmp_path / "meta_Beauty.json.gz", b"{'asin': 'A'}\n{'asin': 'B', 'title': '\xe9'}\n")
    with pytest.raises(DataError, match=r"meta_Beauty\.json\.gz:2: not valid utf-8"):
        read_amazon2014(A14 / "ratings_Beauty.csv", meta)


def test_2014_empty_files(tmp_path: Path) -> None:
    path = tmp_path / "ratings_Beauty.csv"
    path.write_text("")
    with pytest.raises(DataError, match=r"ratings_Beauty\.csv: empty file"):
        read_amazon2014(path)
    meta = gz(tmp_path / "meta_Beauty.json.gz", "\n")
    with pytest.raises(DataError, match=r"meta_Beauty\.json\.gz: empty file"):
        read_amazon2014(A14 / "ratings_Beauty.csv", meta)


def test_2014_unknown_interactions_format(tmp_path: Path) -> None:
    path = tmp_path / "ratings_Beauty.txt"
    path.write_text("U1,I1,5.0,100\n")
    with pytest.raises(DataError, match=r"ratings_Beauty\.txt: cannot tell"):
        read_amazon2014(path)


# --- 2018 ---------------------------------------------------------------------------------------


def test_2018_ratings_csv_puts_the_item_first(meta18: Path) -> None:
    ds = read_amazon2018(A18 / "Beauty.csv", meta18, dedupe_meta=True)
    assert ds.name == "amazon2018-beauty"
    assert ds.interactions.row(0) == ("A3CIUOJXQ5VDQ2", "B0000530HU", 1472688000)
    assert ds.interactions.get_column("user").to_list() == [
        "A3CIUOJXQ5VDQ2",
        "A3CIUOJXQ5VDQ2",
        "A1V1EP514B5H7Y",
    ]


def test_2018_reviews_and_meta(tmp_path: Path, meta18: Path) -> None:
    reviews = gz(tmp_path / "Beauty_5.json.gz", A18 / "Beauty_5.json")
    ds = read_amazon2018(reviews, meta18, dedupe_meta=True)
    assert ds.sources == (reviews, meta18)
    assert ds.interactions.to_dicts()[2] == {
        "user": "A1V1EP514B5H7Y",
        "item": "6546546450",
        "timestamp": 1421107200,
    }
    assert {f.name: f.kind for f in ds.schema.fields} == {
        "title": FieldKind.TEXT,
        "description": FieldKind.TEXT,
        "brand": FieldKind.CATEGORICAL,
        "categories": FieldKind.MULTI_CATEGORICAL,
        "price": FieldKind.NUMERIC,
    }
    items = ds.items
    assert items.get_column("item_id").to_list() == [
        "6546546450",
        "B0000530HU",
        "B00004U9V2",
        "B00000JHOS",
    ]
    amp = row(items, "6546546450")
    assert amp["title"] == "Loud 'N Clear\u2122 Personal Sound Amplifier"
    assert amp["categories"] is None and amp["price"] is None  # [] and "" are missing
    nivea = row(items, "B0000530HU")
    assert nivea["description"] == "Nivea Creme moisturizes. For dry skin & hands."
    assert nivea["categories"] == ["All Beauty", "Skin Care"]
    assert nivea["brand"] == "Nivea"
    assert nivea["price"] == 1012.99
    revlon = row(items, "B00004U9V2")
    assert revlon["title"] == "Revlon Set of 2"
    assert revlon["price"] == 1.0  # first number of a range
    assert revlon["description"] is None and revlon["brand"] is None
    junk = row(items, "B00000JHOS")
    assert junk["price"] is None and junk["title"] is None and junk["description"] is None


def test_2018_duplicate_item_is_an_error_by_default(meta18: Path) -> None:
    with pytest.raises(
        DataError, match=r"meta_Beauty\.json\.gz:5 .*duplicate item '6546546450'"
    ) as exc:
        read_amazon2018(A18 / "Beauty.csv", meta18)
    assert exc.value.line == 5 and "line 1" in str(exc.value)


def test_2018_dedupe_keeps_the_first(tmp_path: Path) -> None:
    meta = gz(
        tmp_path / "meta_Beauty.json.gz",
        '{"asin": "A", "title": "first"}\n{"asin": "B"}\n{"asin": "A", "title": "second"}\n',
    )
    ds = read_amazon2018(A18 / "Beauty.csv", meta, dedupe_meta=True)
    assert row(ds.items, "A")["title"] == "first"
    assert ds.items.height == 2


@pytest.mark.parametrize(
    ("raw", "price"),
    [
        ("$12.99", 12.99),
        ("$1.00 - $2.00", 1.0),
        ("$1,299.00", 1299.0),
        (" $.99 ", 0.99),
        ("", None),
        (None, None),
        (".a-box-inner{background-color:#fff}", None),
        ("<span>$3</span>", None),
        (4.5, 4.5),
    ],
)
def test_2018_parse_price(raw: object, price: float | None) -> None:
    assert parse_price(raw) == price


def test_2018_strip_html() -> None:
    assert strip_html("<b>Bold</b>&amp;<br/>more  text") == "Bold & more text"
    assert strip_html("a<script>var x = 1 < 2;</script>b") == "a b"
    assert strip_html("3 < 4") == "3 < 4"


def test_2018_meta_malformed_line(tmp_path: Path) -> None:
    # 2018 metadata is strict JSON: a Python literal line is malformed there
    meta = gz(tmp_path / "meta_Beauty.json.gz", '{"asin": "A"}\n{"asin": "B"}\n{\'asin\': \'C\'}\n')
    with pytest.raises(DataError, match=r"meta_Beauty\.json\.gz:3: malformed JSON"):
        read_amazon2018(A18 / "Beauty.csv", meta)


def test_2018_meta_missing_asin_and_bad_description(tmp_path: Path) -> None:
    meta = gz(tmp_path / "meta_Beauty.json.gz", '{"asin": "A"}\n{"title": "x"}\n')
    with pytest.raises(DataError, match=r"meta_Beauty\.json\.gz:2 field 'asin'"):
        read_amazon2018(A18 / "Beauty.csv", meta)
    meta = gz(tmp_path / "meta_Beauty.json.gz", '{"asin": "A", "description": [1, 2]}\n')
    with pytest.raises(DataError, match=r"meta_Beauty\.json\.gz:1 field 'description'"):
        read_amazon2018(A18 / "Beauty.csv", meta)


def test_2018_ratings_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "Beauty.csv"
    path.write_text("I1,U1,5.0,100\nI2,U2,5.0,100,extra\n")
    with pytest.raises(DataError, match=r"Beauty\.csv:2: malformed line: .*item,user,rating"):
        read_amazon2018(path)


def test_2018_review_missing_key(tmp_path: Path) -> None:
    path = gz(tmp_path / "Beauty_5.json.gz", '{"asin": "I1", "unixReviewTime": 1}\n')
    with pytest.raises(DataError, match=r"Beauty_5\.json\.gz:1 field 'reviewerID'"):
        read_amazon2018(path)


def test_2018_non_utf8_and_empty(tmp_path: Path) -> None:
    reviews = gz(
        tmp_path / "Beauty_5.json.gz",
        b'{"reviewerID": "U1", "asin": "I1", "unixReviewTime": 1}\n{"reviewerID": "\xc3("}\n',
    )
    with pytest.raises(DataError, match=r"Beauty_5\.json\.gz:2: not valid utf-8"):
        read_amazon2018(reviews)
    meta = gz(tmp_path / "meta_Beauty.json.gz", b"")
    with pytest.raises(DataError, match=r"meta_Beauty\.json\.gz: empty file"):
        read_amazon2018(A18 / "Beauty.csv", meta)
