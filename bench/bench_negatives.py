"""A default MIIR training step against the same step with a sampled item-ID softmax
(``sampled_negatives``, issue 9: a faster epoch), on the real catalogues.

    python bench/bench_negatives.py [--data artifacts/beauty artifacts/sports]
        [--negatives 1024 2048 --rounds 6 --steps 20 --threads 2 --precision bf16]

Per artifact, one default MIIR (its side fields: every field the artifact has that the grids
train on) and one per ``k`` in ``--negatives``, all from the same initial weights, each with
its Adam. A step is what ``miir train`` runs: the masks drawn, the loss under autocast, the
backward pass, clipping and the optimiser step, on packed batches of 128 training windows (the
same batches and mask seeds for every arm). After a warm-up of 5 steps per arm, rounds of
``--steps`` steps alternate the arms' order; reported: the median over rounds of each arm's
mean step, the median of the per-round ratios to the default, and the candidate set a sampled
step's softmax runs over (the batch's items plus the drawn ones outside it, padded to a block),
against the catalogue's size. Time it on quiet cores only: an op on two threads stalls when
another process holds a core (``bench/results/recipe.md``, "Speed").

Writes ``bench/results/negatives.json`` and ``.md`` atomically.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from miir.provenance import header_line, run_record, write_result

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128
#: the side fields the grids train on, in the order of preference (the first three present)
FIELDS = ("categories", "brand", "title", "keywords")


def bench_artifact(path: Path, negatives: list[int], args: argparse.Namespace) -> dict:
    from bench_train import prepare
    from miir.data.artifact import Artifact
    from miir.data.schema import FIRST_VALUE_ID
    from miir.models import model_config
    from miir.training.data import training_windows
    from miir.training.train import build_model

    art = Artifact(path)
    have = set(art.manifest["fields"])
    fields = [f for f in FIELDS if f in have][:3]
    arms = {"default": {}} | {f"k={k}": {"sampled_negatives": k} for k in negatives}
    models = {}
    for name, extra in arms.items():
        torch.manual_seed(0)
        cfg = model_config("miir", {"fields": fields, **extra})
        model = build_model(art, cfg, "miir").train()
        models[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
    windows = training_windows(art, models["default"][0].config.max_len)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(0))
    batches = list(order.split(BATCH))
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    sizes: list[int] = []

    def step(name: str, rows: torch.Tensor, seed: int) -> float:
        model, opt = models[name]
        items, packing = prepare(windows[rows], "packed", model.config.max_len)
        started = time.perf_counter()
        masked = model.draw_mask(items, torch.Generator().manual_seed(seed), packing)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss, _ = model.masked_loss(items, masked, packing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        seconds = time.perf_counter() - started
        if masked.negatives is not None and name == f"k={negatives[0]}":  # outside the timing
            with torch.no_grad():
                sizes.append(model.id_softmax(items, masked.negatives).table.shape[0])
        return seconds

    for name in models:
        for i in range(5):
            step(name, batches[i], i)
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for r in range(args.rounds):
        first = 5 + r * args.steps
        for name in names if r % 2 == 0 else names[::-1]:
            chunk = batches[first : first + args.steps]
            times[name].append(statistics.mean(step(name, b, i) for i, b in enumerate(chunk)))
    base = times["default"]
    n_items = models["default"][0].item_emb.weight.shape[0] - FIRST_VALUE_ID
    return {
        "artifact": str(path),
        "fields": fields,
        "n_items": n_items,
        "batches_per_epoch": len(batches),
        "step_seconds": {name: statistics.median(v) for name, v in times.items()},
        "ratio_to_default": {
            name: statistics.median(b / a for a, b in zip(base, v, strict=True))
            for name, v in times.items()
        },
        "rounds": times,
        "candidates_median": statistics.median(sizes) if sizes else None,
        "candidates_k": negatives[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", nargs="+", default=["artifacts/beauty", "artifacts/sports"])
    ap.add_argument("--negatives", nargs="+", type=int, default=[1024, 2048])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20, help="Steps per arm and round.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--note", default="", help="Written under the table (the machine's load).")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from miir.training.train import quiet_lightning

    quiet_lightning()
    results = []
    for data in args.data:
        path = Path(data) if Path(data).is_absolute() else ROOT / data
        if not (path / "manifest.json").exists():
            print(f"skipped {data}: no artifact there (run `miir prepare` first)")
            continue
        results.append(bench_artifact(path, args.negatives, args))
    info = run_record(
        threads=args.threads, precision=args.precision, rounds=args.rounds, steps=args.steps,
        negatives=args.negatives, results=results, note=args.note,
    )  # fmt: skip
    lines = [
        "# A sampled item-ID softmax: the training step's time",
        "",
        f"{header_line(info)}; {args.threads} torch threads, {args.precision}, packed batches "
        f"of {BATCH}; median over {args.rounds} alternating rounds of {args.steps} steps.",
        "",
        "| data | items | arm | step (s) | ratio to the default | epoch's steps (s) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for res in results:
        for name, sec in res["step_seconds"].items():
            lines.append(
                f"| {Path(res['artifact']).name} | {res['n_items']:,} | {name} | {sec:.4f} | "
                f"{res['ratio_to_default'][name]:.3f} | {sec * res['batches_per_epoch']:.1f} |"
            )
    lines.append("")
    for res in results:
        if res["candidates_median"] is not None:
            lines.append(
                f"- {Path(res['artifact']).name}: with k = {res['candidates_k']} a step's "
                f"softmax runs over a median {res['candidates_median']:,.0f} candidates "
                f"(padded) of {res['n_items']:,} items."
            )
    if args.note:
        lines += ["", args.note]
    write_result(Path(args.out), "negatives", info, lines)


if __name__ == "__main__":
    main()
