"""What the causal + next-item default costs per training step, beside the bidirectional recipe,
beside the default with its next-item loss on a clean pass (``next_item_clean``) and beside the
default with Eq. 11's multi-valued loss (``multi_loss='mean'``, the default before the per-value
loss: the same sum over the values, divided by another count).

    python bench/bench_default_cost.py --data artifacts/beauty [--steps 40 --rounds 5]

Issue 9 asks that a recipe costing more time per epoch says what it buys, measured beside the
old one in the same run. Both models are MIIR over ID, categories, brand and title with the
defaults of `miir train`, one with ``causal=false`` (the bidirectional recipe, scored by an
appended query item), one as the default (``causal=true``, ``next_item_weight=1``: causal
attention masks plus a full-softmax next-item loss at every position with a successor). In
each of several interleaved rounds both run the same packed batches with the same masks, in
float32 and under bf16 autocast (what ``--precision auto`` picks on a CPU with native bf16);
reported: the median over rounds of the mean step time and of the per-round ratio, and the
epoch it implies (steps x 185). The quality side of the trade is in
``bench/results/recipe.md`` and ``bench/results/beauty/results.md``.

Writes ``bench/results/default_cost.json`` and ``.md`` atomically.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import prepare
from miir.data.artifact import Artifact
from miir.models import model_config
from miir.provenance import header_line, run_record, write_result
from miir.runtime import keep_freed_memory
from miir.training.data import training_windows
from miir.training.train import build_model, quiet_lightning

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["categories", "brand", "title"]
VARIANTS = {
    "bidirectional": {"causal": False},
    "default": {},
    # the next-item loss on a second, unmasked pass (issue 9's lever after causal + next-item)
    "clean next-item": {"next_item_clean": True},
    # Eq. 11's multi-valued loss, the default before the per-value one (issue 9)
    "mean multi loss": {"multi_loss": "mean"},
}


def make_step(model, windows: torch.Tensor, bf16: bool):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(batch: torch.Tensor, seed: int) -> float:
        items, packing = prepare(windows[batch], "packed", model.config.max_len)
        masked = model.draw_mask(items, torch.Generator().manual_seed(seed), packing)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model.masked_loss(items, masked, packing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in model.parameters():
            if p.grad is not None:
                p.grad.clamp_(-5, 5)
        opt.step()
        return time.perf_counter() - t

    return step


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(ROOT / "artifacts" / "beauty"))
    ap.add_argument("--steps", type=int, default=40, help="Timed steps per variant and round.")
    ap.add_argument("--rounds", type=int, default=5, help="Interleaved rounds.")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    keep_freed_memory()
    quiet_lightning()
    artifact = Artifact(args.data)
    models = {}
    for name, over in VARIANTS.items():
        torch.manual_seed(0)
        models[name] = build_model(
            artifact, model_config("miir", {"fields": FIELDS, **over}), "miir"
        ).train()
    windows = training_windows(artifact, models["default"].config.max_len)
    steps_per_epoch = -(-len(windows) // args.batch)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(0))
    batches = list(order.split(args.batch))[: args.steps]
    steps = {
        (name, bf16): make_step(m, windows, bf16)
        for name, m in models.items()
        for bf16 in (False, True)
    }
    for step in steps.values():  # warm-up
        for i, b in enumerate(batches[:3]):
            step(b, i)
    times: dict[tuple[str, bool], list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            times[key].append(statistics.mean(step(b, i) for i, b in enumerate(batches)))

    def ratio(name: str, ref: str, bf16: bool) -> float:
        pairs = zip(times[(name, bf16)], times[(ref, bf16)], strict=True)
        return statistics.median(a / b for a, b in pairs)

    rows = []
    for bf16 in (False, True):
        for name in VARIANTS:
            med = statistics.median(times[(name, bf16)])
            rows.append(
                {
                    "variant": name,
                    "precision": "bf16" if bf16 else "fp32",
                    "s_per_step": med,
                    "epoch_seconds_est": med * steps_per_epoch,
                    "ratio_to_bidirectional": ratio(name, "bidirectional", bf16),
                    "ratio_to_default": ratio(name, "default", bf16),
                    "rounds": times[(name, bf16)],
                }
            )
    info = run_record(
        steps=args.steps,
        rounds=args.rounds,
        batch=args.batch,
        steps_per_epoch=steps_per_epoch,
        rows=rows,
    )
    lines = [
        "# What the causal + next-item default (and its clean next-item pass, and Eq. 11's "
        "multi loss) costs per step",
        "",
        f"{header_line(info)}.",
        f"{args.rounds} interleaved rounds of {args.steps} packed batches of {args.batch} "
        f"(the same batches and masks for every model); {steps_per_epoch} steps per epoch. "
        "s/step: median over rounds of the mean step time; ratio: median of per-round ratios.",
        "",
        "| model | precision | s/step | epoch (est., steps only) | ratio to bidirectional "
        "| ratio to default |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['precision']} | {r['s_per_step']:.3f} | "
            f"{r['epoch_seconds_est']:.1f} s | {r['ratio_to_bidirectional']:.2f}x | "
            f"{r['ratio_to_default']:.2f}x |"
        )
    write_result(Path(args.out), "default_cost", info, lines)


if __name__ == "__main__":
    main()
