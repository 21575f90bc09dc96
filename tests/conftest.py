"""Shared fixtures: seeded synthetic data with planted structure, prepared into artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from miir.data.prepare import PrepareConfig, prepare
from miir.data.raw import RawDataset
from miir.data.schema import FieldKind, FieldSpec, Schema


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Artifact verification caches hashes under MIIR_CACHE_DIR: keep the tests' cache private."""
    import os

    os.environ["MIIR_CACHE_DIR"] = str(tmp_path_factory.mktemp("miir-cache"))


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

N_GROUPS = 4
ITEMS_PER_GROUP = 10


def planted_raw(n_users: int = 240, length: int = 12, seed: int = 0) -> RawDataset:
    """Items 0..39 fall in 4 groups (``color`` = item % 4). Each user walks one group in a
    fixed cycle (item i -> i + 4), starting anywhere, so the next item is determined by the
    last one, and an item's color can be read off the other items of its sequence.
    ``tags`` (multi-valued) repeats the color with a shared tag; ``size`` is numeric noise."""
    rng = np.random.default_rng(seed)
    n_items = N_GROUPS * ITEMS_PER_GROUP
    users, items, stamps = [], [], []
    for u in range(n_users):
        group = u % N_GROUPS
        start = int(rng.integers(ITEMS_PER_GROUP))
        for t in range(length):
            users.append(f"u{u:04d}")
            items.append(f"i{group + N_GROUPS * ((start + t) % ITEMS_PER_GROUP):03d}")
            stamps.append(t)
    inter = pl.DataFrame(
        {"user": users, "item": items, "timestamp": stamps},
        schema={"user": pl.String, "item": pl.String, "timestamp": pl.Int64},
    )
    item_ids = [f"i{i:03d}" for i in range(n_items)]
    table = pl.DataFrame(
        {
            "item_id": item_ids,
            "color": [f"c{i % N_GROUPS}" for i in range(n_items)],
            "tags": [[f"t{i % N_GROUPS}", "shared"] for i in range(n_items)],
            "size": [float(rng.normal()) for _ in range(n_items)],
        },
        schema={
            "item_id": pl.String,
            "color": pl.String,
            "tags": pl.List(pl.String),
            "size": pl.Float64,
        },
    )
    schema = Schema(
        fields=(
            FieldSpec(name="color", kind=FieldKind.CATEGORICAL),
            FieldSpec(name="tags", kind=FieldKind.MULTI_CATEGORICAL),
            FieldSpec(name="size", kind=FieldKind.NUMERIC, n_buckets=4),
        )
    )
    return RawDataset(inter, table, schema, (), "planted")


@pytest.fixture(scope="session")
def planted_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("art") / "planted"
    prepare(
        planted_raw(),
        out,
        PrepareConfig(n_negatives=20, max_len=8, encode_text=False),
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def planted_discard_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("art") / "planted-d"
    prepare(
        planted_raw(),
        out,
        PrepareConfig(n_negatives=20, max_len=8, encode_text=False, discard=0.5),
        progress=False,
    )
    return out
