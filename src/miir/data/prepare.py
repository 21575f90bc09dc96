"""Turn a :class:`RawDataset` into a training artifact: filter, split, negatives, discard, encode.

Every random step draws from a generator seeded by ``(seed, step name)``, so the same inputs
and seed give byte-identical artifacts, and changing one step (or adding a field) does not move
the random numbers of another.

The artifact folder (see :mod:`miir.data.artifact` for the reader):

- ``manifest.json``: format version, config, seed, schema, counts, missing rates per field
  (before and after discard), source checksums, library versions, and a checksum per file;
- ``vocab/items.json``, ``vocab/users.json``, ``vocab/<field>.json``: id -> value lists
  (ids 0 and 1 are padding and missing/mask in every categorical vocabulary);
- ``sequences/offsets.npy``, ``sequences/items.npy``: each user's full chronological item-id
  sequence (CSR layout); the leave-one-out split is: last item test, second-to-last validation,
  the rest training; ``split/{valid,test}_{target,negatives}.npy`` hold the targets and the
  99 negatives drawn once;
- ``items/<field>.present.npy`` and ``items/<field>.values.npy``: what a model may see, after
  the discard (hidden values are blanked, never kept in these files);
- ``truth/<field>.*.npy`` (only with ``discard > 0``): the values and presence before the
  discard, so imputation can be scored against the hidden ground truth.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from miir.atomic import replace_dir
from miir.data.raw import RawDataset, sort_interactions
from miir.data.readers._io import file_sha256
from miir.data.schema import FIRST_VALUE_ID, MISSING_ID, PAD_ID, FieldKind, FieldSpec
from miir.errors import DataError

FORMAT_VERSION = 1


class PrepareConfig(BaseModel):
    """How raw data becomes an artifact. Unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid")

    min_user_interactions: int = Field(
        5, ge=3, description="Drop users with fewer interactions (the paper: 5)."
    )
    item_core: int = Field(
        0,
        ge=0,
        description="Item k-core: drop items with fewer users, repeated to a fixpoint (0: off).",
    )
    dedupe: Literal["none", "consecutive", "first"] = Field(
        "none",
        description="Drop repeated interactions: 'consecutive' repeats, or all but the 'first' per (user, item).",
    )
    max_len: int = Field(
        20, ge=2, description="Maximum sequence length a model sees (recorded for training)."
    )
    n_negatives: int = Field(
        99, ge=1, description="Negatives drawn once per user for validation and test."
    )
    negatives_exclude: Literal["history", "target"] = Field(
        "history",
        description="'history': negatives avoid every item of the user's sequence (S3-Rec convention); "
        "'target': they avoid only the target (what the MIIR authors' code does).",
    )
    discard: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Hide each present side value with this probability (the paper's 'D' setting: 0.5).",
    )
    seed: int = Field(42, description="Seed of every random step.")
    encode_text: bool = Field(
        True, description="Encode text fields; when off, text fields are left out."
    )
    text_model: str | None = Field(
        None,
        description="Local sentence-transformers model path; default: packaged all-MiniLM-L6-v2.",
    )
    text_batch_size: int = Field(256, ge=1, description="Texts per encoding batch.")


@dataclass
class FieldArrays:
    """The arrays of one side field, aligned with the item vocabulary (row = item id)."""

    spec: FieldSpec
    present: np.ndarray  # (N,) bool
    values: np.ndarray  # (N,) int32 | (N, K) int32 | (N, D) float32
    vocab: list[Any]  # categorical values by id, or numeric bucket edges
    raw: np.ndarray | None = None  # (N,) float64, numeric only
    dropped_rare: int = 0


def _rng(seed: int, step: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(step.encode())])


# ----------------------------------------------------------------------------- filtering


def filter_interactions(interactions: pl.DataFrame, config: PrepareConfig) -> pl.DataFrame:
    """Stable chronological order, optional dedupe, user filter and optional item k-core."""
    df = sort_interactions(interactions)
    if config.dedupe == "consecutive":
        prev_same = (pl.col("item") == pl.col("item").shift(1)) & (
            pl.col("user") == pl.col("user").shift(1)
        )
        df = df.filter(~prev_same.fill_null(False))
    elif config.dedupe == "first":
        df = df.unique(subset=["user", "item"], keep="first", maintain_order=True)
    while True:
        before = len(df)
        if config.item_core > 0:
            keep_items = (
                df.group_by("item")
                .agg(pl.col("user").n_unique().alias("n"))
                .filter(pl.col("n") >= config.item_core)
            )
            df = df.join(keep_items.select("item"), on="item", how="semi", maintain_order="left")
        counts = df.group_by("user").len().filter(pl.col("len") >= config.min_user_interactions)
        df = df.join(counts.select("user"), on="user", how="semi", maintain_order="left")
        if config.item_core == 0 or len(df) == before:
            break
    if len(df) == 0:
        raise DataError(
            f"no user has {config.min_user_interactions} or more interactions after filtering"
        )
    return df


# ----------------------------------------------------------------------------- fields


def _categorical(spec: FieldSpec, column: list[Any], n_rows: int) -> FieldArrays:
    present_vals = [v for v in column if v is not None]
    counts: dict[str, int] = {}
    for v in present_vals:
        counts[v] = counts.get(v, 0) + 1
    kept = sorted(v for v, c in counts.items() if c >= spec.min_freq)
    index = {v: i + FIRST_VALUE_ID for i, v in enumerate(kept)}
    values = np.full(n_rows, MISSING_ID, dtype=np.int32)
    values[PAD_ID] = PAD_ID
    dropped = 0
    for row, v in enumerate(column, start=FIRST_VALUE_ID):
        if v is None:
            continue
        if v in index:
            values[row] = index[v]
        else:
            dropped += 1
    present = values >= FIRST_VALUE_ID
    return FieldArrays(spec, present, values, ["<pad>", "<missing>", *kept], dropped_rare=dropped)


def _multi(spec: FieldSpec, column: list[Any], n_rows: int) -> FieldArrays:
    counts: dict[str, int] = {}
    for vs in column:
        for v in vs or ():
            counts[v] = counts.get(v, 0) + 1
    kept = sorted(v for v, c in counts.items() if c >= spec.min_freq)
    index = {v: i + FIRST_VALUE_ID for i, v in enumerate(kept)}
    encoded = [[index[v] for v in (vs or ()) if v in index] for vs in column]
    width = max((len(e) for e in encoded), default=1) or 1
    values = np.zeros((n_rows, width), dtype=np.int32)  # 0-padded lists of value ids
    dropped = 0  # rare values dropped (an item that loses all its values becomes missing)
    for row, (vs, e) in enumerate(zip(column, encoded, strict=True), start=FIRST_VALUE_ID):
        dropped += len(vs or ()) - len(e)
        values[row, : len(e)] = e
    present = values[:, 0] >= FIRST_VALUE_ID
    return FieldArrays(spec, present, values, ["<pad>", "<missing>", *kept], dropped_rare=dropped)


def _numeric(spec: FieldSpec, column: list[Any], n_rows: int) -> FieldArrays:
    raw = np.full(n_rows, np.nan, dtype=np.float64)
    raw[FIRST_VALUE_ID:] = np.array([np.nan if v is None else v for v in column], dtype=np.float64)
    present = ~np.isnan(raw)
    values = np.full(n_rows, MISSING_ID, dtype=np.int32)
    values[PAD_ID] = PAD_ID
    edges: list[float] = []
    if present.any():
        qs = np.quantile(raw[present], np.linspace(0, 1, spec.n_buckets + 1)[1:-1])
        edges = sorted({float(q) for q in qs})
        values[present] = (
            np.searchsorted(np.asarray(edges), raw[present], side="right").astype(np.int32)
            + FIRST_VALUE_ID
        )
    return FieldArrays(spec, present, values, edges, raw=raw)


def _text(
    spec: FieldSpec, column: list[Any], n_rows: int, config: PrepareConfig, progress: bool
) -> tuple[FieldArrays, str]:
    from miir.data.encode_text import default_cache_dir, encode_texts

    present = np.zeros(n_rows, dtype=bool)
    present[FIRST_VALUE_ID:] = [v is not None for v in column]
    unique = sorted({v for v in column if v is not None})
    if progress:
        print(f"encoding {len(unique):,} distinct texts of field '{spec.name}'", file=sys.stderr)
    if unique:
        vecs, identity = encode_texts(
            unique,
            model=config.text_model,
            batch_size=config.text_batch_size,
            progress=progress,
            cache_dir=default_cache_dir()
            if os.environ.get("MIIR_TEXT_CACHE", "1") != "0"
            else None,
        )
    else:
        vecs, identity = np.zeros((0, 1), dtype=np.float32), "none"
    pos = {t: i for i, t in enumerate(unique)}
    values = np.zeros((n_rows, vecs.shape[1]), dtype=np.float32)
    for row, v in enumerate(column, start=FIRST_VALUE_ID):
        if v is not None:
            values[row] = vecs[pos[v]]
    return FieldArrays(spec, present, values, []), identity


def _discard(arrays: FieldArrays, p: float, seed: int, n_rows: int) -> FieldArrays:
    """Hide each present value with probability ``p``, fixed per (item, field) by the seed."""
    u = _rng(seed, f"discard/{arrays.spec.name}").random(n_rows)  # (N,) one draw per item
    hidden = arrays.present & (u < p)
    values = arrays.values.copy()
    if arrays.spec.kind in (FieldKind.CATEGORICAL, FieldKind.NUMERIC):
        values[hidden] = MISSING_ID
    else:
        values[hidden] = 0
    raw = None
    if arrays.raw is not None:
        raw = arrays.raw.copy()
        raw[hidden] = np.nan
    return FieldArrays(arrays.spec, arrays.present & ~hidden, values, arrays.vocab, raw=raw)


# ----------------------------------------------------------------------------- negatives


def sample_negatives(
    sequences: list[np.ndarray],
    targets: np.ndarray,
    n_items: int,
    n_negatives: int,
    exclude: Literal["history", "target"],
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw ``n_negatives`` distinct item ids per user, never the target (nor, with 'history',
    any item of the user's sequence). Item ids run from 2 to ``n_items + 1``."""
    out = np.empty((len(sequences), n_negatives), dtype=np.int32)  # (U, K)
    lo, hi = FIRST_VALUE_ID, FIRST_VALUE_ID + n_items
    for u, (seq, target) in enumerate(zip(sequences, targets, strict=True)):
        banned = np.unique(seq) if exclude == "history" else np.asarray([target])
        available = n_items - len(banned)
        if available < n_negatives:
            raise DataError(
                f"cannot draw {n_negatives} negatives for user #{u}: only {available} items are not excluded "
                f"(lower n_negatives or use negatives_exclude='target')"
            )
        chosen = np.empty(0, dtype=np.int64)
        while len(chosen) < n_negatives:
            cand = rng.integers(lo, hi, size=2 * n_negatives + 8)
            cand = cand[~np.isin(cand, banned)]
            cand = np.concatenate([chosen, cand])
            _, first = np.unique(cand, return_index=True)
            chosen = cand[np.sort(first)]
        out[u] = chosen[:n_negatives]
    return out


# ----------------------------------------------------------------------------- main entry


def _missing_rate(present: np.ndarray) -> float:
    return float(1.0 - present[FIRST_VALUE_ID:].mean()) if len(present) > FIRST_VALUE_ID else 0.0


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("miir", "numpy", "polars", "torch", "sentence-transformers"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def _write_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(arr), allow_pickle=False)


def prepare(
    raw: RawDataset,
    out: str | Path,
    config: PrepareConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare ``raw`` into the artifact folder ``out``; returns the manifest.

    The folder is written under a temporary name next to ``out`` and renamed when complete,
    so a failure never leaves a partial artifact (and an existing one is kept unless
    ``overwrite``).
    """
    config = config or PrepareConfig()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    if out.exists() and not overwrite:
        raise DataError(f"artifact folder {out} exists (pass --overwrite to replace it)")
    schema = raw.schema
    if not config.encode_text:
        schema = schema.model_copy(
            update={"fields": tuple(f for f in schema.fields if f.kind != FieldKind.TEXT)}
        )

    # --- interactions -> users, items, sequences
    inter = filter_interactions(raw.interactions, config)
    item_names = sorted(inter.get_column("item").unique().to_list())
    n_items = len(item_names)
    item_index = pl.DataFrame(
        {
            "item": item_names,
            "iid": np.arange(FIRST_VALUE_ID, FIRST_VALUE_ID + n_items, dtype=np.int32),
        }
    )
    inter = inter.join(item_index, on="item", how="left", maintain_order="left")
    grouped = inter.group_by("user", maintain_order=True).agg(pl.col("iid")).sort("user")
    users = grouped.get_column("user").to_list()
    sequences = [np.asarray(s, dtype=np.int32) for s in grouped.get_column("iid").to_list()]
    lengths = np.asarray([len(s) for s in sequences], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(sequences).astype(np.int32)

    # --- split and negatives (drawn once, saved with the split)
    test_target = np.asarray([s[-1] for s in sequences], dtype=np.int32)
    valid_target = np.asarray([s[-2] for s in sequences], dtype=np.int32)
    negs = {}
    for stage, target in (("valid", valid_target), ("test", test_target)):
        negs[stage] = sample_negatives(
            sequences,
            target,
            n_items,
            config.n_negatives,
            config.negatives_exclude,
            _rng(config.seed, f"negatives/{stage}"),
        )

    # --- item side fields aligned with the item vocabulary
    table = pl.DataFrame({"item_id": item_names}).join(
        raw.items, on="item_id", how="left", maintain_order="left"
    )
    known = set(raw.items.get_column("item_id").to_list())
    absent_items = [i for i in item_names if i not in known]
    n_rows = n_items + FIRST_VALUE_ID
    fields: list[FieldArrays] = []
    text_models: dict[str, str] = {}
    for spec in schema.fields:
        column = table.get_column(spec.name).to_list()
        if spec.kind == FieldKind.CATEGORICAL:
            fields.append(_categorical(spec, column, n_rows))
        elif spec.kind == FieldKind.MULTI_CATEGORICAL:
            fields.append(_multi(spec, column, n_rows))
        elif spec.kind == FieldKind.NUMERIC:
            fields.append(_numeric(spec, column, n_rows))
        elif spec.kind == FieldKind.TEXT:
            arrays, identity = _text(spec, column, n_rows, config, progress)
            fields.append(arrays)
            text_models[spec.name] = identity
        else:  # pragma: no cover - the schema validator forbids other kinds
            raise DataError(f"unsupported kind {spec.kind}", field=spec.name)
    observed = [
        _discard(f, config.discard, config.seed, n_rows) if config.discard > 0 else f
        for f in fields
    ]

    # --- write everything under a temporary name, then rename
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _write_json(tmp / "vocab/items.json", ["<pad>", "<missing>", *item_names])
        _write_json(tmp / "vocab/users.json", users)
        _write_npy(tmp / "sequences/offsets.npy", offsets)
        _write_npy(tmp / "sequences/items.npy", flat)
        for stage in ("valid", "test"):
            _write_npy(
                tmp / f"split/{stage}_target.npy", valid_target if stage == "valid" else test_target
            )
            _write_npy(tmp / f"split/{stage}_negatives.npy", negs[stage])
        field_info: dict[str, Any] = {}
        for truth, seen in zip(fields, observed, strict=True):
            name = truth.spec.name
            _write_npy(tmp / f"items/{name}.present.npy", seen.present)
            _write_npy(tmp / f"items/{name}.values.npy", seen.values)
            if seen.raw is not None:
                _write_npy(tmp / f"items/{name}.raw.npy", seen.raw)
            if config.discard > 0:
                _write_npy(tmp / f"truth/{name}.present.npy", truth.present)
                _write_npy(tmp / f"truth/{name}.values.npy", truth.values)
                if truth.raw is not None:
                    _write_npy(tmp / f"truth/{name}.raw.npy", truth.raw)
            if truth.spec.kind in (FieldKind.CATEGORICAL, FieldKind.MULTI_CATEGORICAL):
                _write_json(tmp / f"vocab/{name}.json", truth.vocab)
            elif truth.spec.kind == FieldKind.NUMERIC:
                _write_json(tmp / f"vocab/{name}.json", {"bucket_edges": truth.vocab})
            info: dict[str, Any] = {
                "kind": truth.spec.kind.value,
                "missing_rate": _missing_rate(truth.present),
                "missing_rate_after_discard": _missing_rate(seen.present),
                "hidden_by_discard": int(truth.present.sum() - seen.present.sum()),
                "shape": list(seen.values.shape),
            }
            if truth.spec.kind in (FieldKind.CATEGORICAL, FieldKind.MULTI_CATEGORICAL):
                info["vocab_size"] = len(truth.vocab)
                info["dropped_rare_values"] = truth.dropped_rare
            elif truth.spec.kind == FieldKind.NUMERIC:
                info["vocab_size"] = len(truth.vocab) + 1 + FIRST_VALUE_ID
            elif truth.spec.kind == FieldKind.TEXT:
                info["dim"] = int(seen.values.shape[1])
                info["model"] = text_models[name]
            field_info[name] = info
        counts = {
            "users": len(users),
            "items": n_items,
            "interactions": len(flat),
            "avg_length": float(lengths.mean()),
            "raw_interactions": len(raw.interactions),
            "items_without_metadata": len(absent_items),
        }
        side_present_before = sum(int(f.present[FIRST_VALUE_ID:].sum()) for f in fields)
        side_present_after = sum(int(f.present[FIRST_VALUE_ID:].sum()) for f in observed)
        total_side = n_items * len(fields)
        files = {
            str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": raw.name,
            "config": config.model_dump(),
            "seed": config.seed,
            "schema": schema.model_dump(mode="json"),
            "counts": counts,
            "fields": field_info,
            "missing_rate": {
                "side_fields": (1 - side_present_before / total_side) if total_side else 0.0,
                "side_fields_after_discard": (1 - side_present_after / total_side)
                if total_side
                else 0.0,
            },
            "items_without_metadata_examples": absent_items[:10],
            "sources": {
                p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size} for p in raw.sources
            },
            "versions": _versions(),
            "files": files,
        }
        _write_json(tmp / "manifest.json", manifest)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def summary_table(manifest: dict[str, Any]) -> str:
    """A Table-1-style summary: users, items, interactions, average length, missing rates."""
    c = manifest["counts"]
    lines = [
        f"data set        {manifest['name']}",
        f"users           {c['users']:,}",
        f"items           {c['items']:,}",
        f"interactions    {c['interactions']:,}",
        f"avg. length     {c['avg_length']:.2f}",
    ]
    if c.get("items_without_metadata"):
        lines.append(
            f"items without metadata  {c['items_without_metadata']:,} (all side fields missing)"
        )
    discard = manifest["config"]["discard"] > 0
    head = f"{'field':<16}{'kind':<19}{'missing':>9}" + (
        f"{'after discard':>15}" if discard else ""
    )
    lines += ["", head]
    for name, info in manifest["fields"].items():
        row = f"{name:<16}{info['kind']:<19}{info['missing_rate']:>8.1%}"
        if discard:
            row += f"{info['missing_rate_after_discard']:>15.1%}"
        lines.append(row)
    mr = manifest["missing_rate"]
    row = f"{'all side fields':<35}{mr['side_fields']:>8.1%}"
    if discard:
        row += f"{mr['side_fields_after_discard']:>15.1%}"
    lines.append(row)
    return "\n".join(lines)
