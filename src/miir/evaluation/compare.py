"""Compare two trained runs on the same users: per-user paired t-tests under every protocol.

Each run folder written by ``miir train`` (or ``miir evaluate``) holds ``ranks_<stage>.npz``, the
rank of every user's target under each protocol (sampled, full, full_masked), in the artifact's user
order. Two runs are comparable when they were evaluated on the same artifact (same
``manifest.json`` checksum, recorded in ``run.json``) and so on the same users in the same order.

Comparable means evaluated on the same cases: the same users, sequences, targets and saved
negatives. Runs on an artifact and on its ``--discard`` version (the same split, with side
fields hidden) are comparable; the check uses the checksums of the sequence, split and
user/item vocabulary files, recorded in ``run.json`` (or read from the artifact's manifest for
runs that predate that record).

The p-values are per test, not corrected for the number of metrics and protocols compared: with
six tests at 0.05, one false positive in four comparisons of equal models is to be expected.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from miir.errors import ConfigError
from miir.evaluation.evaluate import PROTOCOLS
from miir.evaluation.metrics import paired_significance

DEFAULT_METRICS = ("HR@10", "NDCG@10", "MRR")


def _run_info(run: Path) -> dict[str, Any]:
    path = run / "run.json"
    if not path.is_file():
        raise ConfigError(f"{run}: not a run folder (no run.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc


CASE_FILES = ("sequences/", "split/", "vocab/items.json", "vocab/users.json")


def cases_checksum(manifest: dict[str, Any]) -> str:
    """A checksum of what defines the evaluation cases of an artifact (users, sequences,
    targets, negatives, item ids), from the per-file checksums of its manifest."""
    files = manifest.get("files", {})
    picked = {k: v for k, v in sorted(files.items()) if k.startswith(CASE_FILES)}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()


def identity_checksum(manifest: dict[str, Any]) -> str:
    """A checksum of what an artifact *is*: its manifest without what depends on the machine
    that prepared it, namely the library versions and the checksums of text embeddings (floats
    whose last bits vary with the CPU and BLAS). The same prepare options on the same source
    files give the same identity anywhere; every other file (sequences, split, negatives,
    vocabularies, categorical and numeric values, discard masks, truth) still counts byte for
    byte."""
    text = {
        f.get("name")
        for f in manifest.get("schema", {}).get("fields", [])
        if f.get("kind") == "text"
    }
    files = {
        k: v
        for k, v in manifest.get("files", {}).items()
        if not (k.endswith(".values.npy") and k.split("/")[-1][: -len(".values.npy")] in text)
    }
    kept = {k: v for k, v in manifest.items() if k not in ("versions", "files")}
    return hashlib.sha256(json.dumps({**kept, "files": files}, sort_keys=True).encode()).hexdigest()


def _cases_key(info: dict[str, Any]) -> str | None:
    artifact = info.get("artifact", {})
    if artifact.get("cases_sha256"):
        return artifact["cases_sha256"]
    manifest = Path(artifact.get("path", "")) / "manifest.json"
    if artifact.get("path") and manifest.is_file():
        raw = manifest.read_bytes()
        if hashlib.sha256(raw).hexdigest() == artifact.get("manifest_sha256"):
            return cases_checksum(json.loads(raw))
    return artifact.get("manifest_sha256")


def load_ranks(run: str | Path, stage: str = "test") -> dict[str, torch.Tensor]:
    """The saved per-user ranks of a run: protocol -> (N,) int64 tensor. Runs evaluated before
    the ``full_masked`` protocol existed have only ``sampled`` and ``full``."""
    path = Path(run) / f"ranks_{stage}.npz"
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist: evaluate the run first (miir evaluate --run {run})"
        )
    with np.load(path, allow_pickle=False) as data:
        missing = [p for p in ("sampled", "full") if p not in data.files]
        if missing:
            raise ConfigError(f"{path}: no ranks for protocol(s) {missing}")
        return {p: torch.from_numpy(data[p].astype(np.int64)) for p in PROTOCOLS if p in data.files}


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    *,
    stage: str = "test",
    metrics: tuple[str, ...] = DEFAULT_METRICS,
) -> dict[str, Any]:
    """Paired two-sided t-tests of ``metrics`` between runs A and B under every protocol both
    runs have ranks for.

    Returns ``{"stage", "a": {...}, "b": {...}, "rows": [...]}``; each row holds protocol,
    metric, ``mean_a``, ``mean_b``, ``diff`` (A - B), ``t`` (positive when A is better), ``p``
    and ``n``.

    Raises:
        ConfigError: a folder is not a run, its ranks are missing, the runs were evaluated on
            different artifacts or on different numbers of users.
    """
    if stage not in ("valid", "test"):
        raise ConfigError(f"unknown stage {stage!r}; use valid or test")
    run_a, run_b = Path(run_a), Path(run_b)
    info_a, info_b = _run_info(run_a), _run_info(run_b)
    if _cases_key(info_a) != _cases_key(info_b):
        raise ConfigError(
            f"{run_a} and {run_b} were not evaluated on the same cases (artifacts "
            f"{info_a.get('artifact', {}).get('path')} and {info_b.get('artifact', {}).get('path')} "
            "differ in users, sequences, split or item ids); a paired test needs the same users"
        )
    ranks_a, ranks_b = load_ranks(run_a, stage), load_ranks(run_b, stage)
    rows = []
    for protocol in [p for p in PROTOCOLS if p in ranks_a and p in ranks_b]:
        a, b = ranks_a[protocol], ranks_b[protocol]
        if a.numel() != b.numel():
            raise ConfigError(
                f"{run_a} has {a.numel()} {stage} ranks, {run_b} has {b.numel()}: "
                "not the same users"
            )
        for metric in metrics:
            try:
                r = paired_significance(a, b, metric)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
            rows.append(
                {"protocol": protocol, "metric": metric, "diff": r["mean_a"] - r["mean_b"], **r}
            )

    def describe(run: Path, info: dict[str, Any]) -> dict[str, Any]:
        return {"run": str(run), "variant": info.get("variant"), "command": info.get("command")}

    return {
        "stage": stage,
        "a": describe(run_a, info_a),
        "b": describe(run_b, info_b),
        "rows": rows,
    }
