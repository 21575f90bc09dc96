"""Measure the effect of our choices against the alternatives, on amazon-beauty, as pairs of
runs that differ in one setting only: validation curves at equal epochs, test metrics under
every protocol both runs were evaluated under (runs made before ``full_masked`` existed have
sampled and full only) and per-user paired t-tests (``miir compare``).

    python bench/option_effects.py [--train]

Writes ``bench/results/options.{json,md}`` and ``bench/results/options.png``. With ``--train``,
the runs of a pair that do not exist yet are trained first (serially; each is one ``miir train``
command, recorded in its ``run.json``). A pair with a run missing is listed as not run. Runs
made before ``--batching`` existed trained on uniformly random, padded batches; their commands
here say so.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from miir.atomic import atomic_figure
from miir.evaluation.compare import compare_runs
from miir.evaluation.evaluate import PROTOCOLS
from miir.provenance import header_line, run_record, write_result

ROOT = Path(__file__).resolve().parents[1]

COMMON = [
    "--fields", "categories,brand,title", "--lr", "0.001", "--seed", "42", "--dropout", "0.1",
    "--no-progress", "--patience", "10",
]  # fmt: skip
MONITOR = "valid/full/NDCG@10"


def run_args(
    variant: str, epochs: int, batching: str, precision: str = "bf16", item_mask: str = "0.2"
):
    """The `miir train` arguments of a run of a pair (beyond COMMON)."""
    return ["--variant", variant, "--epochs", str(epochs), "--precision", precision,
            "--item-mask-prob", item_mask, "--batching", batching]  # fmt: skip


# (name, question, (label, run folder, extra arguments) for A and for B)
PAIRS = [
    (
        "bf16 autocast",
        "Does bf16 autocast (our default for these runs) keep the metrics of float32 training?",
        ("bf16", "runs/options/beauty-miir-r-bf16",
         run_args("miir-r", 15, "random")),
        ("fp32", "runs/options/beauty-miir-r-fp32",
         run_args("miir-r", 15, "random", precision="32-true")),
    ),
    (
        "whole-item masking",
        "MII training with whole-item masking 0.2 (ours) against none (the authors' code, where a "
        "fully hidden item, the test-time query, appears with probability 1/32 per position)",
        ("item mask 0.2", "runs/beauty/miir",
         run_args("miir", 30, "random")),
        ("item mask 0", "runs/options/beauty-miir-itemmask0",
         run_args("miir", 30, "random", item_mask="0")),
    ),
    (
        "packed batches",
        "Uniformly random batches packed into shared rows (the default) against the same kind of "
        "batches padded. A packed batch has exactly the loss and gradients of the padded one "
        "(tests/test_miir.py, train.md); only the random draws differ (MII masks are drawn over "
        "the packed layout, dropout over fewer tokens). So this pair measures run-to-run noise: "
        "how far apart two runs of the same objective land.",
        ("packed", "runs/packed/beauty-miir",
         run_args("miir", 30, "packed")),
        ("padded", "runs/beauty/miir",
         run_args("miir", 30, "random")),
    ),
    (
        "length buckets",
        "Batches of similar length with their shared padding cut (`--batching buckets`, the "
        "fastest) against uniformly random batches: does the batch composition change what the "
        "model learns?",
        ("length buckets", "runs/buckets/beauty-miir",
         run_args("miir", 30, "buckets")),
        ("random batches", "runs/beauty/miir",
         run_args("miir", 30, "random")),
    ),
    (
        "longer training",
        "The length-buckets run continued from 30 to at most 100 epochs (its folder copied, then "
        "`--resume`; early stopping with patience 10 on validation full NDCG@10): how much do the "
        "30-epoch budgets leave?",
        ("up to 100 epochs", "runs/long/beauty-miir",
         run_args("miir", 100, "buckets")),
        ("30 epochs", "runs/buckets/beauty-miir",
         run_args("miir", 30, "buckets")),
    ),
]  # fmt: skip


def curve(run: Path) -> dict[int, float]:
    """Validation ``MONITOR`` per epoch, across a resumed run's log folders."""
    out: dict[int, float] = {}
    for path in sorted((run / "logs").glob("*/metrics.csv")):
        with path.open() as fh:
            for row in csv.DictReader(fh):
                if row.get(MONITOR):
                    out[int(row["epoch"])] = float(row[MONITOR])
    return out


def describe(label: str, run: Path) -> dict:
    info = json.loads((run / "run.json").read_text())
    res = json.loads((run / "results.json").read_text())
    epochs = curve(run)
    return {
        "label": label,
        "run": str(run),
        "command": info.get("command"),
        "earlier_commands": [e.get("command") for e in info.get("earlier", [])],
        "model_config": info["model_config"],
        "train_config": info["train_config"],
        "best_epoch": res.get("stages", {}).get("main", {}).get("epoch"),
        "epochs_run": len(epochs),
        "train_seconds": res.get("train_seconds"),
        "valid_curve": epochs,
        "test": res["test"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--train", action="store_true", help="Train the runs that are missing.")
    ap.add_argument("--data", default="artifacts/beauty")
    args = ap.parse_args()

    results = []
    for name, question, a, b in PAIRS:
        for _, folder, extra in (a, b):
            run = ROOT / folder
            if args.train and not (run / "results.json").exists():
                cmd = ["miir", "train", "--data", args.data, "--out", folder, *extra, *COMMON]
                print(f"== {shlex.join(cmd)}", flush=True)
                subprocess.run(cmd, cwd=ROOT, check=False)
        runs = [(label, ROOT / folder) for label, folder, _ in (a, b)]
        missing = [str(r) for _, r in runs if not (r / "results.json").exists()]
        entry = {"name": name, "question": question, "missing": missing}
        if not missing:
            entry["a"], entry["b"] = (describe(label, run) for label, run in runs)
            entry["paired_test"] = compare_runs(runs[0][1], runs[1][1], stage="test")["rows"]
        results.append(entry)

    out_dir = ROOT / "bench" / "results"
    result = run_record(benchmark="option_effects", pairs=results)

    md = [
        "# Our choices against the alternatives (amazon-beauty, ID + categories + brand + title)",
        "",
        f"{header_line(result)}. Each pair differs in one "
        "setting; lr 1e-3, dropout 0.1, seed 42, batch 128. One seed per run: the paired t-test is "
        "over test users, not over training seeds, so its p-value says nothing about run-to-run "
        "noise. The `packed batches` pair below measures that noise (two runs of the same "
        "objective); a difference between single runs no larger than theirs is not evidence of an "
        "effect, whatever its p.",
    ]
    names = ["HR@10", "NDCG@10", "MRR"]
    for e in results:
        md += ["", f"## {e['name']}", "", e["question"], ""]
        if e["missing"]:
            md.append(f"Not run yet: {', '.join(e['missing'])}.")
            continue
        a, b = e["a"], e["b"]
        protocols = [p for p in PROTOCOLS if p in a["test"] and p in b["test"]]
        md += [
            "| run | best epoch / epochs run | train s | "
            + " | ".join(f"{p} {n}" for p in protocols for n in names)
            + " |",
            "|---|---|---|" + "---|" * (len(protocols) * len(names)),
        ]
        for r in (a, b):
            md.append(
                f"| {r['label']} | {r['best_epoch'] + 1} / {r['epochs_run']} | "
                f"{r['train_seconds']:.0f} | "
                + " | ".join(f"{r['test'][p][n]:.4f}" for p in protocols for n in names)
                + " |"
            )
        md += ["", f"Paired t-test on test users, {a['label']} minus {b['label']}:", ""]
        md += ["| protocol | metric | A - B | t | p |", "|---|---|---|---|---|"]
        for row in e["paired_test"]:
            md.append(
                f"| {row['protocol']} | {row['metric']} | {row['diff']:+.4f} | {row['t']:.2f} | "
                f"{row['p']:.2g} |"
            )
        common = sorted(set(a["valid_curve"]) & set(b["valid_curve"]))
        marks = [x for x in common if x % 5 == 4 or x == common[-1]]
        md += ["", f"Validation {MONITOR} at equal epochs:", ""]
        md += ["| epoch | " + " | ".join(str(x + 1) for x in marks) + " |"]
        md += ["|---|" + "---|" * len(marks)]
        for r in (a, b):
            md.append(
                f"| {r['label']} | "
                + " | ".join(f"{r['valid_curve'][x]:.4f}" for x in marks)
                + " |"
            )
        md += ["", "Commands:", ""]
        for r in (a, b):
            for c in [*r["earlier_commands"], r["command"]]:
                md.append(f"- {r['label']}: `{c or '(not recorded; see run.json)'}`")
        md += [
            "",
            "Train seconds: wall time of each run's last command (a resumed run counts its last "
            "part only) on a shared machine; not a speed comparison (see train.md).",
        ]
    write_result(out_dir, "options", result, md)

    done = [e for e in results if not e["missing"]]
    if done:
        fig, axes = plt.subplots(1, len(done), figsize=(5.5 * len(done), 4), squeeze=False)
        for ax, e in zip(axes[0], done, strict=True):
            for r in (e["a"], e["b"]):
                xs = sorted(r["valid_curve"])
                ax.plot(
                    [x + 1 for x in xs], [r["valid_curve"][x] for x in xs], ".-", label=r["label"]
                )
            ax.set_title(e["name"])
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"validation {MONITOR.split('/', 1)[1]}")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        atomic_figure(fig, out_dir / "options.png")


if __name__ == "__main__":
    main()
