"""Time to quality (issue 9): how many training minutes each recorded run of a grid needed to
reach our SASRec's validation full-ranking NDCG@10, from the records' validation curves.

    python bench/time_to_quality.py [--grid bench/grids/beauty.yaml --setting given]

The target is the mean over our SASRec's recorded seeds (grid label ``SASRec``) of each seed's
best validation full NDCG@10. A run's minutes to the target are the epochs it needed (the
first validation at or above the target, counted from 1 over all of a run's stages) times its training seconds per epoch
(``train_seconds / epochs_run``: steps, validation and logging, as the run went). Runs on more
than ``--cores`` cores (a GPU machine) are listed apart and left out of the medians; a run
that shared its cores with other work has inflated seconds (its record's ``note`` or its
s/epoch against its row's others shows it).

Writes ``bench/results/time_to_quality.json`` and ``.md`` atomically.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
METRIC = "valid/full/NDCG@10"


def curve(record: dict[str, Any]) -> list[float]:
    """The validation full NDCG@10 after every epoch, over the run's stages in the order they
    trained (MIIR-F: its MII stage, then its fine-tuning)."""
    return [r[METRIC] for r in record.get("curve", []) if METRIC in r]


def epochs_to(values: list[float], target: float) -> int | None:
    """Epochs trained (from 1) when the validation first reached ``target``; None if never."""
    return next((i + 1 for i, v in enumerate(values) if v >= target), None)


def machines(rows: list[dict[str, Any]]) -> str:
    """The CPUs a row's runs trained on, with counts, shortest names first seen first
    ("Xeon 2, AMD EPYC 1"): two machines run the same step at different speeds, so seconds
    per epoch compare within one machine only."""
    names = [
        (r.get("cpu") or "unknown")
        .replace("Intel(R) ", "")
        .replace("(R)", "")
        .replace(" Processor", "")
        for r in rows
    ]
    return ", ".join(f"{n} {names.count(n)}" for n in dict.fromkeys(names))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--grid", default=str(ROOT / "bench" / "grids" / "beauty.yaml"))
    ap.add_argument("--setting", default="given")
    ap.add_argument(
        "--reference", default="SASRec", help="The grid label whose level is the target."
    )
    ap.add_argument("--cores", type=int, default=2, help="The CPU machine's cores.")
    ap.add_argument(
        "--records",
        action="append",
        help="Records folder (repeatable; default bench/results/runs).",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    from miir.benchmark import RecordStore, load_grid, plan
    from miir.provenance import commit_label, run_record, write_result

    store = RecordStore(args.records or [ROOT / "bench" / "results" / "runs"])
    runs = [r for r in plan(load_grid(args.grid)) if r.setting == args.setting]
    found = [(r, store.find(r)) for r in runs]
    found = [(r, rec) for r, rec in found if rec is not None and curve(rec)]
    refs = [max(curve(rec)) for r, rec in found if r.label == args.reference]
    if not refs:
        raise SystemExit(f"no recorded run of {args.reference!r} in {args.grid} ({args.setting})")
    target = statistics.mean(refs)
    rows = []
    for run, rec in found:
        values = curve(rec)
        machine = rec.get("machine") or {}
        per_epoch = rec["train_seconds"] / rec["epochs_run"] if rec.get("epochs_run") else None
        n = epochs_to(values, target)
        rows.append(
            {
                "label": run.label,
                "seed": run.seed,
                "key": rec["key"],
                "cpu": machine.get("cpu"),
                "cores": machine.get("cores"),
                "s_per_epoch": per_epoch,
                "best_valid": max(values),
                "epochs_to_target": n,
                "minutes_to_target": n * per_epoch / 60 if n and per_epoch else None,
            }
        )
    info = run_record(
        grid=args.grid,
        setting=args.setting,
        target={"label": args.reference, "metric": METRIC, "seeds": refs, "value": target},
        rows=rows,
    )
    labels = list(dict.fromkeys(r["label"] for r in rows))
    lines = [
        "# Time to quality: training minutes to our SASRec's validation level",
        "",
        f"`{info['command']}` at {commit_label(info)}, {info['date']}. Target: "
        f"validation full NDCG@10 {target:.4f}, the mean of {args.reference}'s {len(refs)} "
        f"recorded seeds' best ({', '.join(f'{v:.4f}' for v in refs)}), {args.setting} data. "
        "Minutes = epochs to the target x training seconds per epoch (validation included). "
        f"Medians over the runs on {args.cores} CPU cores; runs elsewhere (a GPU machine) and "
        "runs that never reached the target are listed in the JSON. Machines: the CPUs the "
        "runs trained on; two CPUs run the same step at different speeds, so seconds per epoch "
        "compare within one machine (a per-step cost is measured side by side in one process, "
        "`bench/bench_default_cost.py`).",
        "",
        f"| model | runs on {args.cores} cores | reached | median epochs | median s/epoch | "
        "median minutes to the target | best validation (median) | machines |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label in labels:
        mine = [r for r in rows if r["label"] == label and r["cores"] == args.cores]
        if not mine:
            continue
        hit = [r for r in mine if r["minutes_to_target"] is not None]

        def med(key: str, rs: list[dict[str, Any]] = hit) -> str:
            vals = [r[key] for r in rs if r[key] is not None]
            return f"{statistics.median(vals):.1f}" if vals else "-"

        lines.append(
            f"| {label} | {len(mine)} | {len(hit)} | {med('epochs_to_target')} | "
            f"{med('s_per_epoch', mine)} | {med('minutes_to_target')} | "
            f"{statistics.median(r['best_valid'] for r in mine):.4f} | {machines(mine)} |"
        )
    write_result(Path(args.out), "time_to_quality", info, lines)
    print(json.dumps(info["target"]))


if __name__ == "__main__":
    main()
