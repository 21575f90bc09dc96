"""Where a model wins or loses: test NDCG@10 and HR@10 per bucket of the target's popularity
(its occurrences in the training part of the sequences) and of the history length, for
recorded runs, under the three protocols, and how often each model ranks the user's own
earlier items above the target (what the history-masked protocol removes). Reads only
committed per-user ranks (``bench/results/runs/<key>.ranks.npz`` or
``bench/results/recipe/<name>.ranks.npz``) and the artifact: nothing is trained or scored
again.

    python bench/by_popularity.py --data artifacts/beauty --name beauty \\
        SASRec=bench/results/runs/dd16e40cbfa1e8a1.ranks.npz MIIR=bench/results/runs/1a4f3f086d14542b.ranks.npz

Written to ``bench/results/by_popularity/NAME.{json,md}`` with the command, commit, machine
and date. Buckets are quantiles of the test users (equal counts, up to ties); each bucket's
paired t-test compares every model with the first one named.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from miir.provenance import header_line, run_record, write_result

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "by_popularity"
PROTOCOLS = ("sampled", "full", "full_masked")


def training_counts(artifact) -> np.ndarray:
    """(N + 2,) occurrences of each item id in the training part of every sequence (all but
    the last two items, the validation and test targets)."""
    offsets, flat = artifact.offsets, artifact.flat_items
    counts = np.zeros(int(flat.max()) + 1, dtype=np.int64)
    lengths = np.diff(offsets)
    keep = np.ones(len(flat), dtype=bool)
    keep[offsets[1:] - 1] = False  # the test target
    keep[offsets[1:] - 2] = False  # the validation target
    np.add.at(counts, flat[keep], 1)
    assert (lengths >= 3).all(), "every sequence has a training part"
    return counts


def buckets(values: np.ndarray, n: int) -> tuple[np.ndarray, list[str]]:
    """(U,) values -> (U,) bucket index 0..k-1 by quantiles (k <= n: tied quantiles merge),
    and a label per bucket. A bucket runs from its lower edge to the next one (excluded); the
    last one to the largest value."""
    lower = np.unique(np.quantile(values, np.linspace(0, 1, n + 1)[:-1]))
    index = np.searchsorted(lower, values, side="right") - 1
    top = float(values.max())
    labels = [f"{lo:g}-<{hi:g}" for lo, hi in itertools.pairwise(lower)]
    labels.append(f"{lower[-1]:g}-{top:g}")
    return index, labels


def breakdown(runs: dict[str, dict], index: np.ndarray, labels: list[str]) -> list[dict]:
    """Per protocol and bucket: every run's NDCG@10 and HR@10 over the bucket's users, and
    the paired t-test of its NDCG@10 against the first run's."""
    import torch

    from miir.evaluation.metrics import paired_t, per_user_metrics

    first = next(iter(runs))
    rows = []
    for protocol in PROTOCOLS:
        users = {  # per-user values, once per run
            name: {
                k: v.numpy()
                for k, v in per_user_metrics(
                    torch.as_tensor(np.ascontiguousarray(ranks[protocol])), (10,)
                ).items()
            }
            for name, ranks in runs.items()
        }
        for b, label in enumerate(labels):
            sel = index == b
            row = {"protocol": protocol, "bucket": label, "users": int(sel.sum()), "models": {}}
            base = users[first]["NDCG@10"][sel]
            for name, m in users.items():
                nd = m["NDCG@10"][sel]
                _, p = paired_t(nd, base) if name != first else (0.0, 1.0)
                row["models"][name] = {
                    "NDCG@10": float(nd.mean()),
                    "HR@10": float(m["HR@10"][sel].mean()),
                    "diff_vs_first": float(nd.mean() - base.mean()),
                    "p_vs_first": float(p),
                }
            rows.append(row)
    return rows


def history_items(runs: dict[str, dict]) -> dict[str, dict]:
    """Per run, from its one-based full and history-masked ranks of the same users: how many
    of the user's earlier items rank above the target (full minus masked rank; the data has no
    repeated items, so the difference counts history items only), and the hit rates at 1 and
    10 under both protocols: where masking the history lifts a model, and by how much."""
    out = {}
    for name, ranks in runs.items():
        full = np.asarray(ranks["full"], dtype=np.int64)
        masked = np.asarray(ranks["full_masked"], dtype=np.int64)
        above = full - masked
        if (above < 0).any():
            raise ValueError(f"{name}: a full rank above its history-masked rank")
        top = masked <= 10
        out[name] = {
            "history_above_target_mean": float(above.mean()),
            "users_with_history_above_target": float((above > 0).mean()),
            "history_above_target_masked_top10": float(above[top].mean()) if top.any() else 0.0,
            "full_HR@1": float((full <= 1).mean()),
            "masked_HR@1": float((masked <= 1).mean()),
            "full_HR@10": float((full <= 10).mean()),
            "masked_HR@10": float((masked <= 10).mean()),
        }
    return out


def markdown(result: dict) -> list[str]:
    names = result["models"]
    first = names[0]
    out = [
        f"# Where the models win or lose: {result['name']}",
        "",
        f"- {header_line(result)}",
        f"- artifact: `{result['data']}`; {result['users']:,} test users",
        "- runs: " + ", ".join(f"{n} (`{p}`)" for n, p in result["runs"].items()),
        "",
        "Test NDCG@10 per bucket of users (quantiles, equal counts up to ties). In brackets: the "
        f"difference to {first}, `*` where the paired t-test over the bucket's users gives "
        "p < 0.05.",
    ]
    for key, title in (
        ("by_target_popularity", "target popularity (training occurrences of the test target)"),
        ("by_history_length", "history length (items before the test target)"),
    ):
        out += ["", f"## By {title}", ""]
        for protocol in PROTOCOLS:
            rows = [r for r in result[key] if r["protocol"] == protocol]
            out += [
                f"**{protocol}**",
                "",
                "| bucket | users | " + " | ".join(names) + " |",
                "|---|---:|" + "---:|" * len(names),
            ]
            for r in rows:
                cells = []
                for n in names:
                    m = r["models"][n]
                    cell = f"{m['NDCG@10']:.4f}"
                    if n != first:
                        star = "*" if m["p_vs_first"] < 0.05 else ""
                        cell += f" ({m['diff_vs_first']:+.4f}{star})"
                    cells.append(cell)
                out.append(f"| {r['bucket']} | {r['users']:,} | " + " | ".join(cells) + " |")
            out.append("")
    if "history_items" in result:
        out += [
            "## The user's own earlier items",
            "",
            "How many of the user's earlier items each model ranks above the test target (full "
            "rank minus history-masked rank; no item repeats in the data), over all users and "
            "over those whose target is in the history-masked top 10, and hit rates at 1 and 10 "
            "under both protocols.",
            "",
            "| model | history items above the target | users with any | the same, masked "
            "top-10 users | full HR@1 | masked HR@1 | full HR@10 | masked HR@10 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n in names:
            h = result["history_items"][n]
            out.append(
                f"| {n} | {h['history_above_target_mean']:.2f} | "
                f"{h['users_with_history_above_target']:.3f} | "
                f"{h['history_above_target_masked_top10']:.2f} | {h['full_HR@1']:.4f} | "
                f"{h['masked_HR@1']:.4f} | {h['full_HR@10']:.4f} | {h['masked_HR@10']:.4f} |"
            )
        out.append("")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="LABEL=PATH.ranks.npz; the first is the reference")
    ap.add_argument("--data", type=Path, default=ROOT / "artifacts" / "beauty")
    ap.add_argument("--name", default="beauty")
    ap.add_argument("--buckets", type=int, default=4)
    args = ap.parse_args()
    from miir.data.artifact import Artifact

    artifact = Artifact(args.data)
    targets, _ = artifact.split("test")
    offsets = artifact.offsets
    assert np.array_equal(targets, artifact.flat_items[offsets[1:] - 1]), "test = last item"
    counts = training_counts(artifact)
    history = np.diff(offsets) - 1
    paths, runs = {}, {}
    for spec in args.runs:
        label, _, path = spec.partition("=")
        z = np.load(path)
        if len(z["full"]) != len(targets):
            sys.exit(
                f"{path}: {len(z['full'])} users, the artifact's test split has {len(targets)}"
            )
        paths[label], runs[label] = path, {p: z[p] for p in PROTOCOLS}
    result = run_record(
        name=args.name, data=str(args.data), users=len(targets), models=list(runs), runs=paths
    )
    index, labels = buckets(counts[targets].astype(float), args.buckets)
    result["by_target_popularity"] = breakdown(runs, index, labels)
    index, labels = buckets(history.astype(float), args.buckets)
    result["by_history_length"] = breakdown(runs, index, labels)
    result["history_items"] = history_items(runs)
    write_result(OUT, args.name, result, markdown(result))


if __name__ == "__main__":
    main()
