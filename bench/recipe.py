"""MIIR's training recipe on amazon-beauty: levers measured as pairs of runs that differ in one
setting (issue 9). Every run is recorded at once in ``bench/results/recipe/<arm>-s<seed>.json``
(validation curve under every protocol, wall time, epochs; test metrics only for runs made
with ``--test``, which touches the test split once per recipe), so a later session continues
instead of retraining.

    python bench/recipe.py run ARM [ARM ...] [--seeds 1 2 3] [--epochs 15] [--test]
    python bench/recipe.py table          # bench/results/recipe.md from the records
    python bench/recipe.py list           # the arms and their settings

Screening runs (one seed, a fixed number of epochs, validation only) decide which levers earn
a three-seed comparison; three-seed runs to convergence (early stopping on validation full
NDCG@10) with ``--test`` are the claims. Arms are the ``base`` recipe plus overrides.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "bench" / "results" / "recipe"
RUNS = ROOT / "runs" / "recipe"

#: the starting point: the best measured MIIR before this issue (bench/grids/beauty.yaml)
BASE_MODEL: dict = {"fields": ["categories", "brand", "title"], "dropout": 0.1}
BASE_TRAIN: dict = {
    "lr": 1e-3,
    "max_epochs": 100,
    "patience": 10,
    "batching": "packed",
    "threads": 2,
    "progress": False,
}

#: arm -> (model overrides, train overrides); each differs from ``base`` (or the arm named in
#: its comment) in one setting
ARMS: dict[str, tuple[dict, dict]] = {
    "base": ({}, {}),
    "init-normal": ({"embedding_init": "normal"}, {}),
    "last-1.0": ({"last_item_prob": 1.0}, {}),
    "last-0.5-clean": ({"last_item_prob": 0.5, "last_item_clean": True}, {}),
    "item-0.5": ({"item_mask_prob": 0.5}, {}),
    "idw-3": ({"field_weights": {"item_id": 3.0}}, {}),
    "lr-2e-3": ({}, {"lr": 2e-3}),
    "warmup-cosine": ({}, {"warmup_epochs": 2.0, "lr_schedule": "cosine"}),
    "wd-0.01": ({}, {"weight_decay": 0.01}),
    "copies-2": ({}, {"copies": 2}),
    "maxlen-50": ({"max_len": 50}, {}),
    # on top of init-normal (the first lever that measured a gain)
    "normal-warmup": ({"embedding_init": "normal"}, {"warmup_epochs": 2.0}),
    "normal-idw-3": ({"embedding_init": "normal", "field_weights": {"item_id": 3.0}}, {}),
    "normal-item-0.5": ({"embedding_init": "normal", "item_mask_prob": 0.5}, {}),
    # the candidate default: the two levers that measured a gain, trained to convergence
    "recipe": (
        {"embedding_init": "normal", "field_weights": {"item_id": 3.0}},
        {"max_epochs": 40, "patience": 8},
    ),
    "normal-prefixes": (
        {"embedding_init": "normal", "last_item_prob": 1.0},
        {"window_stride": 1},
    ),
}


def arm_settings(arm: str) -> tuple[dict, dict]:
    if arm not in ARMS:
        raise SystemExit(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")
    model, train = ARMS[arm]
    return {**BASE_MODEL, **model}, {**BASE_TRAIN, **train}


def _commit() -> str:
    try:
        sha = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
        dirty = subprocess.call(["git", "diff", "--quiet", "--", "src"], cwd=ROOT) != 0
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _curve(run: Path) -> list[dict]:
    rows = []
    for log in sorted((run / "logs").glob("*/metrics.csv")):
        with log.open(encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                if r.get("valid/full/NDCG@10"):
                    rows.append(
                        {
                            "stage": log.parent.name,
                            "epoch": int(r["epoch"]),
                            **{
                                k.removeprefix("valid/"): round(float(v), 6)
                                for k, v in r.items()
                                if k.startswith("valid/")
                                and v
                                and k.split("/")[-1] in ("HR@10", "NDCG@10")
                            },
                        }
                    )
    return rows


def run_arm(arm: str, seed: int, epochs: int | None, test: bool, data: Path) -> dict:
    from miir.training.train import TrainConfig, train

    model, tr = arm_settings(arm)
    tr = {**tr, "seed": seed}
    if epochs is not None:
        tr.update(max_epochs=epochs, min_epochs=epochs)
    kind = "full" if epochs is None else f"screen{epochs}"
    name = f"{arm}-s{seed}-{kind}"
    record_path = RECORDS / f"{name}.json"
    if record_path.exists():
        print(f"{name}: recorded, skipped")
        return json.loads(record_path.read_text(encoding="utf-8"))
    out = RUNS / name
    started = time.perf_counter()
    results = train(
        data,
        out,
        "miir",
        model,
        TrainConfig(**tr),
        overwrite=True,
        command=" ".join(sys.argv),
        stages=("valid", "test") if test else ("valid",),
    )
    wall = time.perf_counter() - started
    curve = _curve(out)
    epochs_run = len(curve)
    record = {
        "arm": arm,
        "seed": seed,
        "kind": kind,
        "model_overrides": ARMS[arm][0],
        "train_overrides": ARMS[arm][1],
        "model_config": results["run"]["model_config"],
        "train_config": results["run"]["train_config"],
        "train_seconds": round(results["train_seconds"], 1),
        "wall_seconds": round(wall, 1),
        "epochs_run": epochs_run,
        "seconds_per_epoch": round(results["train_seconds"] / max(epochs_run, 1), 2),
        "best_epoch": results["checkpoint_epoch"],
        "valid": results["valid"],
        "test": results.get("test"),
        "curve": curve,
        "commit": _commit(),
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} cpus",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RECORDS.mkdir(parents=True, exist_ok=True)
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, record_path)
    v = record["valid"]
    print(
        f"{name}: valid full NDCG@10 {v['full']['NDCG@10']:.4f} masked {v['full_masked']['NDCG@10']:.4f} "
        f"sampled {v['sampled']['NDCG@10']:.4f} · best epoch {record['best_epoch']} of {epochs_run} · "
        f"{record['seconds_per_epoch']} s/epoch",
        flush=True,
    )
    return record


def _load() -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(RECORDS.glob("*.json"))]


def _at(curve: list[dict], epoch: int, key: str = "full/NDCG@10") -> float | None:
    vals = [c[key] for c in curve if c["epoch"] == epoch]
    return vals[0] if vals else None


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


def _test(rs: list[dict], protocol: str, metric: str) -> str:
    return _mean_sd([r["test"][protocol][metric] for r in rs if r.get("test")])


def table() -> str:
    recs = _load()
    lines = ["## Screening runs (seed 1, fixed epochs, validation only)", ""]
    screens = [r for r in recs if r["kind"].startswith("screen")]
    marks = (4, 9, 14, 19, 24, 29)
    lines.append(
        "| arm | overrides | s/epoch | "
        + " | ".join(f"full NDCG@10 ep {m + 1}" for m in marks)
        + " | best valid full / masked / sampled NDCG@10 |"
    )
    lines.append("|---|---|---|" + "---|" * len(marks) + "---|")
    for r in sorted(screens, key=lambda r: (r["kind"], r["arm"])):
        cells = [_at(r["curve"], m) for m in marks]
        v = r["valid"]
        lines.append(
            f"| {r['arm']} ({r['kind']}) | {json.dumps({**r['model_overrides'], **r['train_overrides']})} "
            f"| {r['seconds_per_epoch']} | "
            + " | ".join("" if c is None else f"{c:.4f}" for c in cells)
            + f" | {v['full']['NDCG@10']:.4f} / {v['full_masked']['NDCG@10']:.4f} / {v['sampled']['NDCG@10']:.4f} |"
        )
    full = [r for r in recs if r["kind"] == "full"]
    if full:
        lines += ["", "## Runs to convergence (early stopping on validation full NDCG@10)", ""]
        by_arm: dict[str, list[dict]] = {}
        for r in full:
            by_arm.setdefault(r["arm"], []).append(r)
        lines.append(
            "| arm | seeds | epochs (best) | min | valid full NDCG@10 | test sampled HR@10 / NDCG@10 "
            "| test full HR@10 / NDCG@10 | test masked HR@10 / NDCG@10 |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for arm, rs in by_arm.items():
            lines.append(
                f"| {arm} | {','.join(str(r['seed']) for r in rs)} "
                f"| {','.join(str(r['best_epoch']) for r in rs)} "
                f"| {statistics.mean(r['train_seconds'] for r in rs) / 60:.1f} "
                f"| {_mean_sd([r['valid']['full']['NDCG@10'] for r in rs])} "
                f"| {_test(rs, 'sampled', 'HR@10')} / {_test(rs, 'sampled', 'NDCG@10')} "
                f"| {_test(rs, 'full', 'HR@10')} / {_test(rs, 'full', 'NDCG@10')} "
                f"| {_test(rs, 'full_masked', 'HR@10')} / {_test(rs, 'full_masked', 'NDCG@10')} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("arms", nargs="+")
    r.add_argument("--seeds", type=int, nargs="+", default=[1])
    r.add_argument("--epochs", type=int, default=None, help="screening: exactly this many epochs")
    r.add_argument("--test", action="store_true", help="also evaluate the test split")
    r.add_argument("--data", type=Path, default=ROOT / "artifacts" / "beauty")
    sub.add_parser("table")
    sub.add_parser("list")
    args = ap.parse_args()
    if args.cmd == "list":
        for arm in ARMS:
            print(arm, *arm_settings(arm))
        return
    if args.cmd == "run":
        for arm in args.arms:
            arm_settings(arm)
        for arm in args.arms:
            for seed in args.seeds:
                run_arm(arm, seed, args.epochs, args.test, args.data)
    print(table())


if __name__ == "__main__":
    main()
