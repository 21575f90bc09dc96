"""The same grid runs (the same run keys: model, settings, data, seed) trained by two versions
of the code, side by side: does a change that should move no number (a numerical form of the
loss, a memory or speed change) keep the runs where they were?

    python bench/same_keys.py bench/results/runs bench/results/softmax_keep/runs \
        --name-a "recomputed softmax" --name-b "kept softmax" --out bench/results/softmax_keep

Every key recorded in both folders (``<key>.json`` and ``<key>.ranks.npz``, as ``miir
benchmark`` writes them; ``--keys`` picks some) is paired. For each protocol: validation and
test NDCG@10 and HR@10 per key, the mean and sample sd of each side, the difference B - A, and
a two-sided paired t-test over the test users, each user's metric averaged over the keys first
(as ``miir benchmark``'s tables pair a multi-seed model). Also the epochs trained, the best
epoch and the training seconds per epoch (only comparable where the records name one machine).
Writes ``same_keys.json`` and ``same_keys.md`` (or ``--file NAME``) atomically under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOLS = ("full", "full_masked", "sampled")
METRICS = ("NDCG@10", "HR@10")


def load(folder: Path, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    record = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
    with np.load(folder / f"{key}.ranks.npz", allow_pickle=False) as data:
        ranks = {p: data[p].astype(np.int64) for p in data.files}
    return record, ranks


def shared_keys(a: Path, b: Path) -> list[str]:
    """Keys with a record and its ranks in both folders, sorted."""

    def keys(folder: Path) -> set[str]:
        return {
            p.name.removesuffix(".json")
            for p in folder.glob("*.json")
            if (folder / p.name.replace(".json", ".ranks.npz")).is_file()
        }

    return sorted(keys(a) & keys(b))


def per_user(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-user NDCG@10 or HR@10 of 1-based ranks (``miir.evaluation.metrics``)."""
    import torch

    from miir.evaluation.metrics import per_user_metrics

    return per_user_metrics(torch.from_numpy(ranks), (10,))[metric].double().numpy()


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.mean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def compare(a: Path, b: Path, keys: list[str]) -> dict[str, Any]:
    from scipy import stats

    if not keys:
        raise SystemExit(f"no run key is recorded (with its ranks) in both {a} and {b}")
    runs = {"a": [], "b": []}
    ranks: dict[str, list[dict[str, np.ndarray]]] = {"a": [], "b": []}
    for key in keys:
        for side, folder in (("a", a), ("b", b)):
            record, r = load(folder, key)
            runs[side].append(record)
            ranks[side].append(r)
    users = {len(r[p]) for side in ranks.values() for r in side for p in r}
    if len(users) != 1:
        raise SystemExit(f"the records rank different numbers of test users: {sorted(users)}")
    out: dict[str, Any] = {"keys": keys, "runs": {}, "protocols": {}}
    for side in ("a", "b"):
        out["runs"][side] = [
            {
                "key": r["key"],
                "seed": r.get("seed"),
                "label": r.get("label"),
                "commit": r.get("commit"),
                "cpu": r.get("machine", {}).get("cpu"),
                "epochs": r.get("epochs_run"),
                "best_epoch": r.get("best_epochs", {}).get("main"),
                "seconds_per_epoch": r["train_seconds"] / r["epochs_run"]
                if r.get("epochs_run")
                else None,
            }
            for r in runs[side]
        ]
    for p in PROTOCOLS:
        row: dict[str, Any] = {}
        for m in METRICS:
            cell: dict[str, Any] = {}
            for split in ("valid", "test"):
                va = [r[split][p][m] for r in runs["a"]]
                vb = [r[split][p][m] for r in runs["b"]]
                cell[split] = {
                    "a": va,
                    "b": vb,
                    "a_mean_sd": _mean_sd(va),
                    "b_mean_sd": _mean_sd(vb),
                    "diff": statistics.mean(vb) - statistics.mean(va),
                }
            ua = np.mean([per_user(r[p], m) for r in ranks["a"]], axis=0)
            ub = np.mean([per_user(r[p], m) for r in ranks["b"]], axis=0)
            cell["test"]["p_paired"] = float(stats.ttest_rel(ub, ua).pvalue)
            cell["test"]["diff_from_ranks"] = float(ub.mean() - ua.mean())
            row[m] = cell
        out["protocols"][p] = row
    return out


def table(result: dict[str, Any], name_a: str, name_b: str) -> list[str]:
    def ms(c: dict[str, float]) -> str:
        return f"{c['mean']:.4f} ± {c['sd']:.4f}"

    lines = [
        f"A: {name_a}; B: {name_b}; {len(result['keys'])} run keys "
        f"({', '.join(result['keys'])}). Mean ± sample sd over the keys; Δ = B - A; p: paired "
        "two-sided t-test over the test users, each user's metric averaged over the keys.",
        "",
        "| protocol | metric | valid A | valid B | valid Δ | test A | test B | test Δ (p) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p, row in result["protocols"].items():
        for m, c in row.items():
            v, t = c["valid"], c["test"]
            lines.append(
                f"| {p} | {m} | {ms(v['a_mean_sd'])} | {ms(v['b_mean_sd'])} | {v['diff']:+.4f} "
                f"| {ms(t['a_mean_sd'])} | {ms(t['b_mean_sd'])} | {t['diff']:+.4f} "
                f"({t['p_paired']:.2g}) |"
            )
    lines += [
        "",
        "| side | key | seed | commit | CPU | epochs | best epoch | s per epoch |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for side, name in (("a", name_a), ("b", name_b)):
        for r in result["runs"][side]:
            spe = r["seconds_per_epoch"]
            lines.append(
                f"| {name} | {r['key']} | {r['seed']} | {str(r['commit'])[:10]} | {r['cpu']} "
                f"| {r['epochs']} | {r['best_epoch']} | {'-' if spe is None else f'{spe:.1f}'} |"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("a", type=Path, help="Records folder A (the code before).")
    ap.add_argument("b", type=Path, help="Records folder B (the code after).")
    ap.add_argument("--keys", nargs="+", default=None, help="Only these run keys.")
    ap.add_argument("--name-a", default="A")
    ap.add_argument("--name-b", default="B")
    ap.add_argument("--note", default="", help="Written under the tables.")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--file", default="same_keys", help="Name of the result files.")
    args = ap.parse_args()

    from miir.provenance import header_line, run_record, write_result

    keys = args.keys or shared_keys(args.a, args.b)
    result = compare(args.a, args.b, keys)
    info = run_record(
        a=str(args.a),
        b=str(args.b),
        name_a=args.name_a,
        name_b=args.name_b,
        note=args.note,
        **result,
    )
    lines = [
        f"# The same runs, two versions of the code: {args.name_a} (A) and {args.name_b} (B)",
        "",
        f"{header_line(info)}.",
        "",
        *table(result, args.name_a, args.name_b),
    ]
    if args.note:
        lines += ["", args.note]
    write_result(args.out, args.file, info, lines)


if __name__ == "__main__":
    main()
