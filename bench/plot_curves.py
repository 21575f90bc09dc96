"""Plot validation curves of the runs under ``runs/`` (both protocols) to
``bench/results/curves.png``.

    python bench/plot_curves.py [--runs runs] [--data beauty beauty-d] [--out bench/results/curves.png]

Each run folder's CSV logs are read in epoch order (a resumed run's second log folder
continues the first).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from miir.atomic import atomic_figure

ROOT = Path(__file__).resolve().parents[1]
METRICS = [
    ("valid/sampled/HR@10", "sampled HR@10 (99 negatives)"),
    ("valid/full/NDCG@10", "full-ranking NDCG@10"),
]


def curves(run: Path) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {m: {} for m, _ in METRICS}
    for path in sorted((run / "logs").glob("*/metrics.csv")):
        with path.open() as fh:
            for row in csv.DictReader(fh):
                for m, _ in METRICS:
                    if row.get(m):
                        out[m][int(row["epoch"])] = float(row[m])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", default=str(ROOT / "runs"))
    ap.add_argument(
        "--data", nargs="+", default=["beauty", "beauty-d"], help="Run groups under --runs."
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "curves.png"))
    args = ap.parse_args()
    runs = sorted(p.parent for d in args.data for p in (Path(args.runs) / d).glob("*/run.json"))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(11, 4))
    for run in runs:
        data = curves(run)
        info = json.loads((run / "run.json").read_text())
        mc, tc = info["model_config"], info["train_config"]
        # a baseline's config has no item_mask_prob
        mask = f", item mask {mc['item_mask_prob']}" if "item_mask_prob" in mc else ""
        label = f"{run.parent.name}/{run.name} (dropout {mc['dropout']}{mask}, lr {tc['lr']})"
        for ax, (m, _) in zip(axes, METRICS, strict=True):
            xs = sorted(data[m])
            ax.plot(xs, [data[m][x] for x in xs], marker=".", label=label)
    for ax, (_, title) in zip(axes, METRICS, strict=True):
        ax.set_title(f"validation {title}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_figure(fig, out)
    print(f"wrote {out} ({len(runs)} runs)")


if __name__ == "__main__":
    main()
