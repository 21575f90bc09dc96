"""Train MIIR variants on amazon-beauty and amazon-beauty D and record test metrics under every
protocol in ``bench/results/results_beauty.{json,md}`` (sampled, full and full_masked; runs
evaluated before full_masked existed have the first two, and are tabulated with those).

    python bench/paper_results.py [--epochs 20 --lr 1e-3 --precision bf16] [--aggregate-only]
    python bench/paper_results.py --aggregate-only --datasets Beauty \
        --runs 'runs/long/{data}-{variant}' --name results_beauty_long

Each run is the ``miir train`` command printed in the table, so it can be re-run as is. Runs
whose folder already holds a ``results.json`` from the same command are not trained again.
Published reference points (other papers' numbers on this data and protocol) are listed
separately and labelled as such; they are never our measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import time
from pathlib import Path

from miir.evaluation.compare import compare_runs
from miir.evaluation.evaluate import PROTOCOLS
from miir.provenance import header_line, run_record, write_result

ROOT = Path(__file__).resolve().parents[1]

DATASETS = {"Beauty": "artifacts/beauty", "Beauty D": "artifacts/beauty-d"}
VARIANTS = ["miir", "miir-r", "sparse-miir"]
FIELDS = "categories,brand,title"
# Published numbers on this exact data (5-core Beauty, leave-one-out, 99 negatives excluding the
# user's items), quoted by the issue for comparison; not measured here.
REFERENCES = [
    ("SASRec (S3-Rec paper)", "sampled", {"HR@10": 0.4696, "NDCG@10": 0.3156, "MRR": 0.2852}),
    ("S3-Rec (S3-Rec paper)", "sampled", {"HR@10": 0.5506, "NDCG@10": 0.3732, "MRR": 0.3340}),
    ("DIF-SR (DIF-SR paper)", "full", {"HR@10": 0.0908, "NDCG@10": 0.0446}),
]


def command(data: str, variant: str, out: Path, args: argparse.Namespace) -> list[str]:
    return [
        "miir", "train", "--data", data, "--out", str(out), "--variant", variant, "--fields", FIELDS,
        "--epochs", str(args.epochs), "--patience", str(args.patience), "--lr", str(args.lr),
        "--precision", args.precision, "--seed", str(args.seed), "--dropout", str(args.dropout),
        "--item-mask-prob", str(args.item_mask_prob), "--no-progress",
    ]  # fmt: skip


def epochs_run(out: Path) -> int:
    """Epochs completed, counted from the CSV logs (a resumed run logs to a second folder)."""
    epochs = set()
    for csv in (out / "logs").glob("*/metrics.csv"):
        for line in csv.read_text().splitlines()[1:]:
            epochs.add((csv.parent.name.split("-")[0], int(line.split(",")[0])))
    return len(epochs)


def collect(ds_name: str, out: Path) -> dict:
    """One finished run: its settings (from run.json, i.e. what really ran) and test metrics."""
    res = json.loads((out / "results.json").read_text())
    run = json.loads((out / "run.json").read_text())
    mc, tc = run["model_config"], run["train_config"]
    # runs from before `batching` existed trained on padded random batches
    legacy = "buckets" if tc.get("length_buckets") else "random"
    batches = f"{tc.get('batching', legacy)} batches"
    settings = (
        f"max {tc['max_epochs']} ep, patience {tc['patience']}, lr {tc['lr']}, dropout {mc['dropout']}, "
        f"item mask {mc['item_mask_prob']}, {tc['precision']}, {batches}"
    )
    resumed = sum(1 for p in (out / "logs").iterdir() if "-resumed" in p.name)
    return {
        "dataset": ds_name, "variant": res["variant"], "run": str(out), "settings": settings,
        "command": run.get("command"), "earlier_commands": [e.get("command") for e in run.get("earlier", [])],
        "resumed": resumed,
        "model_config": mc, "train_config": tc, "stages": res.get("stages"), "epochs_run": epochs_run(out),
        "train_seconds": res.get("train_seconds"), "valid": res["valid"], "test": res["test"],
    }  # fmt: skip


SIG_METRICS = ("HR@10", "NDCG@10", "MRR")


def paired_tests(rows: list[dict], datasets: dict[str, str]) -> list[dict]:
    """MIIR against each other variant on the same data, and each variant on Beauty against
    Beauty D (same users and split; side fields hidden)."""
    by = {(r["dataset"], r["variant"]): Path(r["run"]) for r in rows}
    pairs = [((d, "MIIR"), (d, other)) for d in datasets for other in ("MIIR-R", "Sparse-MIIR")] + [
        (("Beauty", v), ("Beauty D", v)) for v in ("MIIR", "MIIR-R", "Sparse-MIIR")
    ]
    out = []
    for a, b in pairs:
        if a in by and b in by:
            res = compare_runs(by[a], by[b], stage="test", metrics=SIG_METRICS)
            out.append({"a": " ".join(a), "b": " ".join(b), "rows": res["rows"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--item-mask-prob", type=float, default=0.0)
    ap.add_argument("--only", nargs="*", help="dataset:variant pairs to train (default: all)")
    ap.add_argument("--aggregate-only", action="store_true", help="Only collect finished runs.")
    ap.add_argument(
        "--datasets", nargs="*", choices=list(DATASETS), help="Data sets (default: all)."
    )
    ap.add_argument(
        "--runs",
        default="runs/{data}/{variant}",
        help="Run folder of each (artifact folder name, variant).",
    )
    ap.add_argument("--name", default="results_beauty", help="Results file name (no suffix).")
    args = ap.parse_args()
    datasets = {k: v for k, v in DATASETS.items() if not args.datasets or k in args.datasets}

    rows = []
    for ds_name, data in datasets.items():
        for variant in VARIANTS:
            out = Path(args.runs.format(data=Path(data).name, variant=variant))
            cmd = command(data, variant, out, args)
            key = f"{ds_name}:{variant}"
            done = out / "results.json"
            wanted = not args.only or key in args.only
            if not args.aggregate_only and wanted and not done.exists():
                print(f"== {shlex.join(cmd)}", flush=True)
                started = time.perf_counter()
                proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
                print(
                    f"== exit {proc.returncode} after {time.perf_counter() - started:.0f}s",
                    flush=True,
                )
            if done.exists():
                rows.append(collect(ds_name, out))
    significance = paired_tests(rows, datasets)
    result = run_record(
        benchmark=args.name,
        settings={
            "dropout": args.dropout,
            "item_mask_prob": args.item_mask_prob,
            "epochs": args.epochs,
            "patience": args.patience,
            "lr": args.lr,
            "precision": args.precision,
            "seed": args.seed,
            "fields": ["item_id", *FIELDS.split(",")],
            "monitor": "valid/full/NDCG@10",
        },
        runs=rows,
        paired_tests=significance,
        published_references=[{"model": m, "protocol": p, "metrics": v} for m, p, v in REFERENCES],
    )

    names = ["HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR"]
    md = [
        "# MIIR on amazon-beauty: test metrics, every protocol",
        "",
        f"{header_line(result)}. Fields: ID, categories, brand, title. "
        "Budget-limited runs (early stopping on validation full-ranking NDCG@10); the paper trains 100 epochs "
        "at lr 1e-4 with dropout 0.5.",
        "",
        "| data | model | protocol | "
        + " | ".join(names)
        + " | best epoch / epochs run | settings |",
        "|---|---|---|" + "---|" * (len(names) + 2),
    ]
    for r in rows:
        best = r["stages"] or {}
        epoch = ", ".join(f"{v['epoch'] + 1}" for v in best.values()) if best else "?"
        for protocol in [p for p in PROTOCOLS if p in r["test"]]:
            m = r["test"][protocol]
            md.append(f"| {r['dataset']} | {r['variant']} | {protocol} | " + " | ".join(f"{m[n]:.4f}" for n in names)
                      + f" | {epoch} / {r['epochs_run']} | {r['settings']} |")  # fmt: skip
    md += ["", "Published reference points on this data (not measured here):", "",
           "| model | protocol | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]  # fmt: skip
    for m, p, v in REFERENCES:
        md.append(
            f"| {m} | {p} | " + " | ".join(f"{v[n]:.4f}" if n in v else "-" for n in names) + " |"
        )
    if significance:
        md += ["", "Paired two-sided t-tests over the 22,363 test users (`miir compare A B`; A - B, "
               "p not corrected for the number of tests):", "",
               "| A | B | protocol | " + " | ".join(f"{n} A - B (p)" for n in SIG_METRICS) + " |",
               "|---|---|---|" + "---|" * len(SIG_METRICS)]  # fmt: skip
        for t in significance:
            for protocol in [p for p in PROTOCOLS if any(r["protocol"] == p for r in t["rows"])]:
                cells = [
                    f"{r['diff']:+.4f} ({r['p']:.1g})"
                    for r in t["rows"] if r["protocol"] == protocol
                ]  # fmt: skip
                md.append(f"| {t['a']} | {t['b']} | {protocol} | " + " | ".join(cells) + " |")
    md += ["", "Commands, in the order they ran in each run folder (a resumed run continues from "
           "its last finished epoch; commands before this record existed are not known):", ""]  # fmt: skip
    for r in rows:
        md.append(f"- {r['dataset']} {r['variant']} (`{r['run']}`, resumed {r['resumed']}x):")
        earlier = r["earlier_commands"] or ([None] if r["resumed"] else [])
        for c in [*earlier, r["command"]]:
            md.append(f"  - `{c}`" if c else "  - (not recorded; its settings are in run.json)")
    have = {(r["dataset"], r["run"]) for r in rows}
    missing = [
        f"{d} {v}"
        for d, data in datasets.items()
        for v in VARIANTS
        if (d, args.runs.format(data=Path(data).name, variant=v)) not in have
    ]
    if missing:
        md += ["", f"Not run yet: {', '.join(missing)}."]
    budgets = {r["train_config"]["max_epochs"] for r in rows}
    if len(budgets) > 1:
        md += [
            "",
            f"The runs had different epoch budgets ({sorted(budgets)}): not an equal-budget comparison.",
        ]
    md += [
        "",
        "Each run's exact configuration is in its `run.json`; the settings column is read from it.",
    ]
    write_result(ROOT / "bench" / "results", args.name, result, md)


if __name__ == "__main__":
    main()
