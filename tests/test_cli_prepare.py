"""``miir prepare`` end to end through the real CLI (typer's ``CliRunner``), on tiny inputs.

Every source is written under ``tmp_path`` (reusing the files of ``tests/fixtures/`` where they
fit; their interaction files are too short for ``--min-user 3`` and are replaced by longer
ones). No text model is loaded: every run passes ``--no-text``.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from typer.testing import CliRunner

import miir.data.prepare as prep
from miir.cli import app
from miir.data.artifact import Artifact
from miir.data.readers import READERS, detect_format
from miir.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
A14 = FIXTURES / "amazon2014"
A18 = FIXTURES / "amazon2018"
GENERIC = FIXTURES / "generic"
RECBOLE_TOY = FIXTURES / "recbole" / "toy"

FAST = ("--no-text", "--negatives", "3", "--min-user", "3", "--quiet")

runner = CliRunner()


# ---------------------------------------------------------------- helpers


def invoke(source: Path, out: Path, *args: str) -> Result:
    return runner.invoke(app, ["prepare", str(source), "--out", str(out), *args])


def leftovers(parent: Path) -> list[str]:
    """Temporary or backup folders a run left next to its artifact."""
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def summary_count(output: str, label: str) -> int:
    """The number on the summary line ``label`` (``users``, ``items``, ``interactions``)."""
    match = re.search(rf"^{label}\s+([\d,]+)\s*$", output, flags=re.MULTILINE)
    assert match, f"no '{label}' line in the summary:\n{output}"
    return int(match.group(1).replace(",", ""))


def plan(items: list[str], n_users: int = 4, length: int = 4) -> list[tuple[str, str, int]]:
    """``(user, item, unix_time)`` rows: user k walks ``length`` consecutive items of the
    catalogue from position 2k, so with 7 items every item is used, each user has 4 distinct
    items and 3 items are left to draw negatives from (history excluded)."""
    rows = []
    for u in range(n_users):
        for j in range(length):
            rows.append(
                (f"U{u}", items[(2 * u + j) % len(items)], 1_400_000_000 + 86_400 * (u * 10 + j))
            )
    return rows


def gz(path: Path, data: bytes) -> Path:
    with gzip.open(path, "wb") as fh:
        fh.write(data)
    return path


# ---------------------------------------------------------------- sources (one per format)

SEQ_ITEMS = [
    {"item_id": "a", "title": "red lipstick matte finish", "brand": "Acme", "tags": ["lips", "red"], "price": 5.0},
    {"item_id": "b", "title": "hiking boots waterproof leather", "brand": "Trek", "tags": ["shoes"], "price": 80.5},
    {"item_id": "c", "title": "travel bag with two straps", "brand": None, "tags": [], "price": None},
    {"item_id": "d", "title": "blue nail polish glossy", "brand": "Acme", "tags": ["nails"], "price": 4},
    {"item_id": "e", "title": "wool socks warm winter", "brand": "Trek", "tags": ["socks"], "price": 9.5},
    {"item_id": "f", "title": None, "brand": "Gloss", "tags": ["lips"], "price": 6},
    {"item_id": "g", "title": "sun hat wide brim", "brand": "Sunny", "tags": ["hats"], "price": 15},
]  # fmt: skip
SEQ_LINES = ["u1 a b c d", "u2 c d e f", "u3 e f g a", "u4 g a b c"]


def make_sequences(
    tmp_path: Path,
    lines: list[str] | None = None,
    items: list[dict] | None = None,
    *,
    name: str = "seqdata",
) -> Path:
    src = tmp_path / name
    src.mkdir()
    (src / "sequences.txt").write_text("\n".join(lines or SEQ_LINES) + "\n", encoding="utf-8")
    records = SEQ_ITEMS if items is None else items
    (src / "items.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8"
    )
    return src


ML_GENRES = "unknown|0\nAction|1\nComedy|2\nDrama|3\n"
ML_MOVIES = [
    "1|Toy Story (1995)|01-Jan-1995||http://example.org/1|0|0|1|0",
    "2|Café Society (1995)|01-Jan-1995||http://example.org/2|0|0|0|1",  # ISO-8859-1 é
    "3|GoldenEye (1995)|01-Jan-1995||http://example.org/3|0|1|0|0",
    "4|unknown|||http://example.org/4|1|0|0|0",  # placeholder title, no date, genre 'unknown'
    "5|Heat (1995)|15-Dec-1995||http://example.org/5|0|1|0|1",
    "6|Fargo (1996)|14-Feb-1996||http://example.org/6|0|0|1|1",
    "7|Babe (1995)|01-Jan-1995||http://example.org/7|0|0|1|1",
]


def make_movielens(tmp_path: Path, movies: list[str] | None = None) -> Path:
    src = tmp_path / "ml-100k"
    src.mkdir()
    (src / "u.genre").write_text(ML_GENRES, encoding="ascii")
    (src / "u.item").write_bytes("\n".join(movies or ML_MOVIES).encode("iso-8859-1") + b"\n")
    rows = plan([str(k) for k in range(1, 8)])
    (src / "u.data").write_text(
        "".join(f"{u[1:]}\t{i}\t4\t{t}\n" for u, i, t in rows), encoding="ascii"
    )
    return src


A14_META_ITEMS = ["0205616461", "0558925278", "0733001998", "7806397051"]
A18_META_ITEMS = ["6546546450", "B0000530HU", "B00004U9V2", "B00000JHOS"]
EXTRA = ["X000000001", "X000000002", "X000000003"]  # items without metadata


def make_amazon2014(tmp_path: Path) -> Path:
    src = tmp_path / "beauty14"
    src.mkdir()
    gz(src / "meta_Beauty.json.gz", (A14 / "meta_Beauty.json").read_bytes())
    rows = plan(A14_META_ITEMS + EXTRA)
    (src / "ratings_Beauty.csv").write_text(
        "".join(f"{u},{i},5.0,{t}\n" for u, i, t in rows), encoding="utf-8"
    )
    return src


def make_amazon2018(tmp_path: Path) -> Path:
    src = tmp_path / "beauty18"
    src.mkdir()
    # the fixture's last line repeats an item (upstream does that): keep the first four
    meta = (A18 / "meta_Beauty.json").read_bytes().splitlines(keepends=True)[:4]
    gz(src / "meta_Beauty.json.gz", b"".join(meta))
    rows = plan(A18_META_ITEMS + EXTRA)
    (src / "Beauty.csv").write_text(  # 2018 ratings: item first
        "".join(f"{i},{u},5.0,{t}\n" for u, i, t in rows), encoding="utf-8"
    )
    return src


def write_generic_inter(path: Path, items: list[str]) -> None:
    rows = plan(items)
    path.write_text(
        "user_id,item_id,ts,rating\n" + "".join(f"{u},{i},{t},5\n" for u, i, t in rows),
        encoding="utf-8",
    )


GENERIC_ITEMS = ["i1", "i2", "i3", "i4", "i5", "i6", "i7"]  # i4..i7 have no metadata


def make_generic(tmp_path: Path) -> Path:
    src = tmp_path / "gen"
    src.mkdir()
    shutil.copy(GENERIC / "schema.toml", src)
    shutil.copy(GENERIC / "items.csv", src)
    write_generic_inter(src / "inter.csv", GENERIC_ITEMS)
    return src


def make_generic_json(tmp_path: Path) -> Path:
    """The JSON schema variant, given as the schema file itself rather than a folder."""
    src = tmp_path / "genjson"
    src.mkdir()
    shutil.copy(GENERIC / "schema.json", src)
    shutil.copy(GENERIC / "items.jsonl", src)
    write_generic_inter(src / "inter.csv", GENERIC_ITEMS)
    return src / "schema.json"


RECBOLE_ITEMS = ["242", "302", "377", "400", "401", "402", "403"]  # 400.. have no metadata


def write_recbole_inter(path: Path) -> None:
    rows = plan(RECBOLE_ITEMS)
    path.write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t3\t{t}\n" for u, i, t in rows),
        encoding="utf-8",
    )


def make_recbole(tmp_path: Path) -> Path:
    """The toy fixture without its ``float_seq`` column (see the xfail test below)."""
    src = tmp_path / "toy"
    src.mkdir()
    lines = (RECBOLE_TOY / "toy.item").read_text(encoding="utf-8").splitlines()
    (src / "toy.item").write_text(
        "".join("\t".join(line.split("\t")[:-1]) + "\n" for line in lines), encoding="utf-8"
    )
    write_recbole_inter(src / "toy.inter")
    return src


# format, builder, data set name, items, items without metadata, fields left (text dropped)
HAPPY: list[tuple[str, Callable[[Path], Path], str, int, int, list[str]]] = [
    ("sequences", make_sequences, "seqdata", 7, 0, ["brand", "tags", "price"]),
    ("movielens", make_movielens, "ml-100k", 7, 0, ["genres", "release_year"]),
    (
        "amazon2014",
        make_amazon2014,
        "amazon2014-beauty",
        7,
        3,
        ["brand", "categories", "price", "sales_rank"],
    ),
    ("amazon2018", make_amazon2018, "amazon2018-beauty", 7, 3, ["brand", "categories", "price"]),
    ("generic", make_generic, "toy-generic", 7, 4, ["brand", "categories", "price"]),
    ("generic", make_generic_json, "schema", 7, 4, ["brand", "categories", "price", "year"]),
    ("recbole", make_recbole, "toy", 7, 4, ["release_year", "class", "price"]),
]


# ---------------------------------------------------------------- happy paths


@pytest.mark.parametrize(
    ("fmt", "make", "name", "n_items", "n_absent", "fields"),
    HAPPY,
    ids=[f"{h[0]}-{h[1].__name__}" for h in HAPPY],
)
def test_prepare_each_detected_format(
    tmp_path: Path,
    fmt: str,
    make: Callable[[Path], Path],
    name: str,
    n_items: int,
    n_absent: int,
    fields: list[str],
) -> None:
    src = make(tmp_path)
    assert detect_format(src) == fmt
    out = tmp_path / "arts" / "art"
    out.parent.mkdir()
    result = invoke(src, out, *FAST)
    assert result.exit_code == 0, result.output
    assert summary_count(result.stdout, "users") == 4
    assert summary_count(result.stdout, "items") == n_items
    assert summary_count(result.stdout, "interactions") == 16
    assert re.search(rf"^data set\s+{re.escape(name)}$", result.stdout, flags=re.MULTILINE)
    assert f"artifact written to {out}" in result.stdout
    assert ("items without metadata" in result.stdout) == (n_absent > 0)

    m = manifest(out)
    assert m["name"] == name
    assert m["counts"]["users"] == 4
    assert m["counts"]["items"] == n_items
    assert m["counts"]["interactions"] == 16
    assert m["counts"]["items_without_metadata"] == n_absent
    assert [f["name"] for f in m["schema"]["fields"]] == fields
    assert all(f["kind"] != "text" for f in m["schema"]["fields"])  # --no-text
    assert sorted(m["fields"]) == sorted(fields)  # written with sorted keys
    assert m["config"]["n_negatives"] == 3 and m["config"]["encode_text"] is False
    art = Artifact(out, verify=True)
    assert art.split("test")[1].shape == (4, 3)
    for f in fields:
        assert f in result.stdout  # one row per field in the summary
    assert sorted(p.name for p in out.parent.iterdir()) == ["art"]


def test_movielens_item_file_is_read_as_iso_8859_1(tmp_path: Path) -> None:
    """Keeping the title (as categorical, so no text model) shows the Latin-1 byte decoded."""
    src = make_movielens(tmp_path)
    assert b"Caf\xe9" in (src / "u.item").read_bytes()  # not valid UTF-8
    out = tmp_path / "art"
    result = invoke(src, out, *FAST, "--field", "title=categorical")
    assert result.exit_code == 0, result.output
    vocab = json.loads((out / "vocab/title.json").read_text(encoding="utf-8"))
    assert "Café Society (1995)" in vocab
    assert "unknown" not in vocab  # the placeholder title is missing, not a value
    art = Artifact(out)
    title = art.fields["title"]
    assert not title.present[art.item_ids(["4"])[0]]
    years = json.loads((out / "vocab/release_year.json").read_text(encoding="utf-8"))
    assert years == ["<pad>", "<missing>", "1995", "1996"]


def test_explicit_format_is_used(tmp_path: Path) -> None:
    src = make_movielens(tmp_path)
    result = invoke(src, tmp_path / "art", *FAST, "--format", "movielens")
    assert result.exit_code == 0, result.output
    assert manifest(tmp_path / "art")["name"] == "ml-100k"


# ---------------------------------------------------------------- --field overrides


def test_field_drop_and_kind_override(tmp_path: Path) -> None:
    src = make_sequences(tmp_path)
    out = tmp_path / "art"
    result = invoke(src, out, *FAST, "--field", "brand=drop", "--field", "title=categorical")
    assert result.exit_code == 0, result.output
    m = manifest(out)
    kinds = {f["name"]: f["kind"] for f in m["schema"]["fields"]}
    assert kinds == {"title": "categorical", "tags": "multi_categorical", "price": "numeric"}
    assert m["fields"]["title"]["kind"] == "categorical"
    assert "brand" not in m["fields"]
    assert not list(out.glob("items/brand.*")) and not (out / "vocab/brand.json").exists()
    vocab = json.loads((out / "vocab/title.json").read_text(encoding="utf-8"))
    assert "red lipstick matte finish" in vocab and len(vocab) == 2 + 6  # f has no title
    assert "brand" not in result.stdout
    assert re.search(r"^title\s+categorical", result.stdout, flags=re.MULTILINE)


def test_field_override_without_drop_keeps_inferred_kinds(tmp_path: Path) -> None:
    src = make_sequences(tmp_path)
    result = invoke(src, tmp_path / "art", *FAST, "--field", "price=categorical")
    assert result.exit_code == 0, result.output
    kinds = {f["name"]: f["kind"] for f in manifest(tmp_path / "art")["schema"]["fields"]}
    assert kinds == {"brand": "categorical", "tags": "multi_categorical", "price": "categorical"}


def test_override_naming_an_unknown_field_is_an_error(tmp_path: Path) -> None:
    src = make_sequences(tmp_path)
    out = tmp_path / "arts" / "art"
    out.parent.mkdir()
    result = invoke(src, out, *FAST, "--field", "colour=drop")
    assert result.exit_code == 2
    assert "colour" in result.stderr and "unknown field" in result.stderr
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_override_without_a_kind_is_a_usage_error(tmp_path: Path) -> None:
    src = make_sequences(tmp_path)
    result = invoke(src, tmp_path / "art", *FAST, "--field", "brand")
    assert result.exit_code == 2
    assert "NAME=KIND" in result.output
    assert not (tmp_path / "art").exists()


def test_recbole_float_seq_column_can_be_dropped_with_field(tmp_path: Path) -> None:
    src = tmp_path / "toy"
    src.mkdir()
    shutil.copy(RECBOLE_TOY / "toy.item", src)  # the fixture, with its embedding:float_seq
    write_recbole_inter(src / "toy.inter")
    out = tmp_path / "art"
    result = invoke(src, out, *FAST, "--field", "embedding=drop")
    assert result.exit_code == 0, result.output
    assert "embedding" not in manifest(out)["fields"]


def test_recbole_token_seq_field_can_become_categorical(tmp_path: Path) -> None:
    """``read_recbole(fields={"class": "categorical"})`` keeps the cell as one value; through
    the CLI the column was already split into a list and the cast fails."""
    src = make_recbole(tmp_path)
    out = tmp_path / "art"
    result = invoke(src, out, *FAST, "--field", "class=categorical")
    assert result.exit_code == 0, result.output
    assert manifest(out)["fields"]["class"]["kind"] == "categorical"
    vocab = json.loads((out / "vocab/class.json").read_text(encoding="utf-8"))
    assert "Crime Film-Noir Mystery Thriller" in vocab


def test_generic_field_made_multi_categorical_is_split(tmp_path: Path) -> None:
    """Declared ``multi_categorical`` in schema.toml, ``Shoes|Red`` is split on the list
    separator; made ``multi_categorical`` with ``--field``, it stays one value ``Shoes|Red``."""
    src = make_generic(tmp_path)
    toml = (src / "schema.toml").read_text(encoding="utf-8")
    (src / "schema.toml").write_text(
        toml.replace('categories = "multi_categorical"', 'categories = "categorical"'),
        encoding="utf-8",
    )
    out = tmp_path / "art"
    result = invoke(src, out, *FAST, "--field", "categories=multi_categorical")
    assert result.exit_code == 0, result.output
    vocab = json.loads((out / "vocab/categories.json").read_text(encoding="utf-8"))
    assert vocab == ["<pad>", "<missing>", "Bags", "Red", "Shoes", "Travel"]


# ---------------------------------------------------------------- bad inputs


def bad_seq_malformed(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_sequences(tmp_path, lines=["u1 a b c d", "u2 c d e f", "u3", "u4 g a b c"])
    return src, [], ["sequences.txt:3", "malformed line"]


def bad_seq_not_utf8(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_sequences(tmp_path)
    (src / "sequences.txt").write_bytes(b"u1 a b c d\nu2 c d \xff e f\nu3 e f g a\n")
    return src, [], ["sequences.txt:2", "not valid utf-8", "0xff"]


def bad_items_not_utf8(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_sequences(tmp_path)
    data = (src / "items.jsonl").read_bytes().replace(b"Gloss", b"Gl\xe9ss")
    (src / "items.jsonl").write_bytes(data)
    return src, [], ["items.jsonl:6", "not valid utf-8", "0xe9"]


def bad_items_malformed_json(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_sequences(tmp_path)
    lines = (src / "items.jsonl").read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1][:-1]  # drop the closing brace
    (src / "items.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return src, [], ["items.jsonl:2", "malformed JSON"]


def bad_items_duplicate(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_sequences(tmp_path, items=[*SEQ_ITEMS[:3], {**SEQ_ITEMS[0], "brand": "Other"}])
    return src, [], ["items.jsonl:4", "duplicate item 'a'", "item_id"]


def bad_amazon2018_duplicate(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    return A18, [], [f"{A18 / 'meta_Beauty.json'}:5", "duplicate item '6546546450'"]


def bad_amazon2014_duplicate(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_amazon2014(tmp_path)
    meta = (A14 / "meta_Beauty.json").read_bytes().splitlines(keepends=True)
    gz(src / "meta_Beauty.json.gz", b"".join([*meta, meta[1]]))
    return src, [], ["meta_Beauty.json.gz:5", "duplicate item '0558925278'", "first on line 2"]


def bad_amazon2014_malformed(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_amazon2014(tmp_path)
    with (src / "ratings_Beauty.csv").open("a", encoding="utf-8") as fh:
        fh.write("A1,0205616461,5.0\n")
    return src, [], ["ratings_Beauty.csv:17", "malformed line", "4 comma-separated fields"]


def bad_movielens_duplicate(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_movielens(tmp_path, movies=[*ML_MOVIES, ML_MOVIES[2]])
    return src, [], ["u.item", "duplicate item '3'", "item_id"]


def bad_movielens_data_not_utf8(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_movielens(tmp_path)
    data = (src / "u.data").read_bytes().splitlines(keepends=True)
    data[4] = data[4].replace(b"\t4\t", b"\t\xe9\t")
    (src / "u.data").write_bytes(b"".join(data))
    return src, [], ["u.data:5", "not valid utf-8"]


def bad_generic_missing_column(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_generic(tmp_path)
    lines = (src / "inter.csv").read_text(encoding="utf-8").splitlines()
    cut = [",".join(line.split(",")[:2] + line.split(",")[3:]) for line in lines]  # no 'ts'
    (src / "inter.csv").write_text("\n".join(cut) + "\n", encoding="utf-8")
    return src, [], ["inter.csv", "missing column 'ts'", "field 'ts'"]


def bad_generic_malformed(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_generic(tmp_path)
    lines = (src / "inter.csv").read_text(encoding="utf-8").splitlines()
    lines[3] += ",extra"
    (src / "inter.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return src, [], ["inter.csv:4", "malformed line", "5 fields, the header has 4"]


def bad_generic_unknown_kind(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_generic(tmp_path)
    toml = (src / "schema.toml").read_text(encoding="utf-8")
    (src / "schema.toml").write_text(
        toml.replace('brand = "categorical"', 'brand = "blah"'), encoding="utf-8"
    )
    return src, [], ["schema.toml", "field 'brand'", "unknown field kind 'blah'"]


def bad_generic_with_schema_option(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_generic(tmp_path)
    extra = tmp_path / "fields.toml"
    extra.write_text('brand = "categorical"\n', encoding="utf-8")
    return src, ["--schema", str(extra)], ["generic format declares its fields"]


def bad_recbole_malformed(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_recbole(tmp_path)
    with (src / "toy.inter").open("a", encoding="utf-8") as fh:
        fh.write("U9\t242\n")
    return src, [], ["toy.inter:18", "malformed line"]


def bad_empty_sequences(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_sequences(tmp_path)
    (src / "sequences.txt").write_bytes(b"")
    return src, [], [f"{src / 'sequences.txt'}", "empty file"]


def bad_empty_items(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_sequences(tmp_path)
    (src / "items.jsonl").write_bytes(b"\n  \n")
    return src, [], [f"{src / 'items.jsonl'}", "empty file"]


def bad_empty_u_data(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_movielens(tmp_path)
    (src / "u.data").write_bytes(b"")
    return src, [], [f"{src / 'u.data'}", "empty file"]


def bad_unknown_kind_override(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_sequences(tmp_path)
    return src, ["--field", "brand=blah"], ["field 'brand'", "unknown field kind 'blah'"]


def bad_list_field_as_categorical(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_movielens(tmp_path)
    return src, ["--field", "genres=categorical"], ["field 'genres'", "single-valued"]


def bad_unknown_format(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_sequences(tmp_path)
    return src, ["--format", "nope"], ["unknown format 'nope'", *READERS]


def bad_wrong_format(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_sequences(tmp_path)
    return src, ["--format", "recbole"], ["no .inter file"]


def bad_undetectable(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = tmp_path / "misc"
    src.mkdir()
    (src / "notes.txt").write_text("hello\n", encoding="utf-8")
    return src, [], ["cannot tell the format", "notes.txt", *READERS]


def bad_missing_source(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    return tmp_path / "nowhere", [], ["nowhere", "source not found"]


def bad_nobody_left(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_sequences(tmp_path)
    return src, ["--min-user", "10"], ["no user has 10 or more interactions"]


def bad_too_many_negatives(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_sequences(tmp_path)
    return src, ["--negatives", "50"], ["cannot draw 50 negatives"]


def bad_config_value(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    src = make_sequences(tmp_path)
    return src, ["--dedupe", "sometimes"], ["dedupe"]


BAD = [
    bad_seq_malformed,
    bad_seq_not_utf8,
    bad_items_not_utf8,
    bad_items_malformed_json,
    bad_items_duplicate,
    bad_amazon2018_duplicate,
    bad_amazon2014_duplicate,
    bad_amazon2014_malformed,
    bad_movielens_duplicate,
    bad_movielens_data_not_utf8,
    bad_generic_missing_column,
    bad_generic_malformed,
    bad_generic_unknown_kind,
    bad_generic_with_schema_option,
    bad_recbole_malformed,
    bad_empty_sequences,
    bad_empty_items,
    bad_empty_u_data,
    bad_unknown_kind_override,
    bad_list_field_as_categorical,
    bad_unknown_format,
    bad_wrong_format,
    bad_undetectable,
    bad_missing_source,
    bad_nobody_left,
    bad_too_many_negatives,
    bad_config_value,
]


@pytest.mark.parametrize("make", BAD, ids=[f.__name__.removeprefix("bad_") for f in BAD])
def test_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path, make: Callable[[Path], tuple[Path, list[str], list[str]]]
) -> None:
    src, args, needles = make(tmp_path)
    out = tmp_path / "arts" / "art"
    out.parent.mkdir()
    fast = list(FAST)
    for opt in ("--min-user", "--negatives"):  # a case's own value wins
        if opt in args:
            i = fast.index(opt)
            del fast[i : i + 2]
    result = invoke(src, out, *fast, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in {result.stderr!r}"
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no artifact, no .art.tmp-*, no .art.old-*


def test_movielens_duplicate_item_names_the_line(tmp_path: Path) -> None:
    src, _, _ = bad_movielens_duplicate(tmp_path)
    result = invoke(src, tmp_path / "art", *FAST)
    assert result.exit_code == 2
    assert f"{src / 'u.item'}:8" in result.stderr


def test_failure_while_writing_leaves_no_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = prep._write_npy

    def failing(path: Path, arr: np.ndarray) -> None:
        if path.parent.name == "items":
            raise DataError("disk full (simulated)", file=path)
        real(path, arr)

    monkeypatch.setattr(prep, "_write_npy", failing)
    src = make_sequences(tmp_path)
    out = tmp_path / "arts" / "art"
    out.parent.mkdir()
    result = invoke(src, out, *FAST)
    assert result.exit_code == 2
    assert "disk full (simulated)" in result.stderr
    assert list(out.parent.iterdir()) == []


def test_unexpected_crash_while_writing_leaves_no_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(path: Path, obj: object) -> None:
        raise OSError("no space left (simulated)")

    monkeypatch.setattr(prep, "_write_json", failing)
    src = make_sequences(tmp_path)
    out = tmp_path / "arts" / "art"
    out.parent.mkdir()
    result = invoke(src, out, *FAST)
    assert result.exit_code != 0
    assert isinstance(result.exception, OSError)
    assert list(out.parent.iterdir()) == []


# ---------------------------------------------------------------- overwrite


def test_existing_artifact_needs_overwrite(tmp_path: Path) -> None:
    src = make_sequences(tmp_path)
    out = tmp_path / "arts" / "art"
    out.parent.mkdir()
    assert invoke(src, out, *FAST, "--seed", "1").exit_code == 0
    (out / "stray.txt").write_text("from an older run", encoding="utf-8")
    before = snapshot(out)

    result = invoke(src, out, *FAST, "--seed", "2")
    assert result.exit_code == 2
    assert "exists" in result.stderr and "--overwrite" in result.stderr
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["art"]

    result = invoke(src, out, *FAST, "--seed", "2", "--overwrite")
    assert result.exit_code == 0, result.output
    assert manifest(out)["seed"] == 2
    assert not (out / "stray.txt").exists()
    Artifact(out, verify=True)
    assert sorted(p.name for p in out.parent.iterdir()) == ["art"]


def test_overwrite_onto_a_plain_file_fails_cleanly_or_replaces_it(tmp_path: Path) -> None:
    src = make_sequences(tmp_path)
    out = tmp_path / "arts" / "art"
    out.parent.mkdir()
    out.write_text("not an artifact", encoding="utf-8")
    result = invoke(src, out, *FAST, "--overwrite")
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert leftovers(out.parent) == []


# ---------------------------------------------------------------- format detection


@pytest.mark.parametrize(
    ("make", "fmt"),
    [
        (make_sequences, "sequences"),
        (make_movielens, "movielens"),
        (make_amazon2014, "amazon2014"),
        (make_amazon2018, "amazon2018"),
        (make_generic, "generic"),
        (make_generic_json, "generic"),
        (make_recbole, "recbole"),
        (lambda _: A14, "amazon2014"),
        (lambda _: A18, "amazon2018"),
        (lambda _: GENERIC, "generic"),
        (lambda _: GENERIC / "schema.toml", "generic"),
        (lambda _: RECBOLE_TOY, "recbole"),
    ],
    ids=[
        "sequences",
        "movielens",
        "amazon2014",
        "amazon2018",
        "generic-folder",
        "generic-json-file",
        "recbole",
        "fixture-amazon2014",
        "fixture-amazon2018",
        "fixture-generic",
        "fixture-generic-toml",
        "fixture-recbole",
    ],
)
def test_detect_format(tmp_path: Path, make: Callable[[Path], Path], fmt: str) -> None:
    assert detect_format(make(tmp_path)) == fmt


def test_detect_format_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="source not found"):
        detect_format(tmp_path / "missing")
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="single file"):
        detect_format(tmp_path / "data.csv")
    with pytest.raises(DataError, match="cannot tell the format") as info:
        detect_format(tmp_path)
    for name in READERS:
        assert name in str(info.value)


# ---------------------------------------------------------------- items without metadata


def test_items_without_metadata(tmp_path: Path) -> None:
    lines = ["u1 a b c h", "u2 c d e f", "u3 e f g a", "u4 g a b c"]  # h: no record
    src = make_sequences(tmp_path, lines=lines)
    out = tmp_path / "art"
    result = invoke(src, out, *FAST)
    assert result.exit_code == 0, result.output
    assert re.search(r"^items without metadata\s+1\b", result.stdout, flags=re.MULTILINE)
    m = manifest(out)
    assert m["counts"]["items_without_metadata"] == 1
    assert m["items_without_metadata_examples"] == ["h"]
    assert m["counts"]["items"] == 8
    art = Artifact(out)
    h = art.item_ids(["h"])[0]
    for name, field in art.fields.items():
        assert not field.present[h], name
