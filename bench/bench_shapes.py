"""Training memory and step time with and without fixed-size blocks of shapes (issue 9).

    python bench/bench_shapes.py --data artifacts/beauty [--steps 300 --rounds 5]

A training step of MIIR has matrix shapes that change at every step: the number of masked
positions each loss reads (the ID, each side field, the next item), and the number of rows a
packed batch needs. Under bf16 autocast on a CPU, oneDNN builds and keeps a primitive for each
new shape, and training memory grew with every step (2.6 GB in a real run). The blocked form
gathers each loss's positions in blocks of ``SELECT_BLOCK`` (the last block filled with repeats
weighted 0) and pads packed batches with empty rows to a multiple of ``ROW_BLOCK``: the losses
and gradients are the same, the shapes come from a few sizes.

1. Memory: each configuration (blocked or not, bf16 or fp32) runs ``--steps`` random packed
   training steps of the default MIIR (batch 128, Adam) in a fresh process, 1 thread; the
   resident memory (VmRSS) after some steps and the peak (VmHWM) are recorded.
2. Time: one process alternates the two forms over ``--rounds`` rounds of ``--time-steps``
   steps on the same batches and masks (bf16), after a warm-up that meets every shape; the
   median per-round ratio of mean step times is reported (a change in the machine's load
   touches both alike).

Writes ``bench/results/shapes.json`` and ``.md`` atomically.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from childproc import PROC_MEMORY, run_child

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ["categories", "brand", "title"]
CHECKPOINTS = (1, 50, 100, 200, 300, 500)


def setup(data: str):
    """The default MIIR over ``data`` in training mode, its training windows, Adam, and the
    generator that draws the batches (the same for the memory runs and the timing)."""
    import torch

    from miir.data.artifact import Artifact
    from miir.models import model_config
    from miir.runtime import keep_freed_memory
    from miir.training.data import training_windows
    from miir.training.train import build_model

    keep_freed_memory()
    art = Artifact(data)
    torch.manual_seed(0)
    model = build_model(art, model_config("miir", {"fields": FIELDS}), "miir").train()
    windows = training_windows(art, model.config.max_len)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, windows, opt, torch.Generator().manual_seed(0)


def train_step(model, opt, windows, idx, seed: int, bf16: bool) -> None:
    """One packed training step on the windows ``idx`` with the masks of ``seed``."""
    import torch

    from miir.models.batch import make_batch

    batch = make_batch(windows[idx], "packed", model.config.max_len)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = model.loss(batch, torch.Generator().manual_seed(seed))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, BENCH)
import miir.models.batch as mb
from bench_shapes import CHECKPOINTS, setup, train_step
data, steps, blocked, bf16 = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1"
if not blocked:
    mb.SELECT_BLOCK, mb.ROW_BLOCK = 1, 1
PROC_MEMORY
model, windows, opt, g = setup(data)
out = {"start": mem()["VmRSS"]}
for step in range(1, steps + 1):
    train_step(model, opt, windows, torch.randint(len(windows), (128,), generator=g), step, bf16)
    if step in CHECKPOINTS:
        out[str(step)] = mem()["VmRSS"]
out["peak"] = mem()["VmHWM"]
print("RESULT " + json.dumps(out))
""".replace("BENCH", repr(str(ROOT / "bench"))).replace("PROC_MEMORY", PROC_MEMORY)


def memory_run(data: str, steps: int, blocked: bool, bf16: bool) -> dict[str, float]:
    return run_child(CHILD, data, str(steps), str(int(blocked)), str(int(bf16)))


def timing(data: str, rounds: int, steps: int) -> dict[str, object]:
    import torch

    import miir.models.batch as mb

    model, windows, opt, g = setup(data)
    picks = [torch.randint(len(windows), (128,), generator=g) for _ in range(steps)]
    blocks = {"blocked": (mb.SELECT_BLOCK, mb.ROW_BLOCK), "unblocked": (1, 1)}

    def run(form: str) -> float:
        mb.SELECT_BLOCK, mb.ROW_BLOCK = blocks[form]
        t0 = time.perf_counter()
        for i, idx in enumerate(picks):
            train_step(model, opt, windows, idx, i, bf16=True)
        return (time.perf_counter() - t0) / steps

    for form in blocks:  # warm-up: every shape of these batches met once
        run(form)
    times: dict[str, list[float]] = {form: [] for form in blocks}
    for r in range(rounds):
        for form in blocks if r % 2 == 0 else reversed(list(blocks)):
            times[form].append(run(form))
    mb.SELECT_BLOCK, mb.ROW_BLOCK = blocks["blocked"]
    ratios = [b / u for b, u in zip(times["blocked"], times["unblocked"], strict=True)]
    return {
        "threads": torch.get_num_threads(),
        "s_per_step": {form: statistics.median(t) for form, t in times.items()},
        "rounds": times,
        "ratio_blocked_to_unblocked": statistics.median(ratios),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(ROOT / "artifacts" / "beauty"))
    ap.add_argument("--steps", type=int, default=300, help="Steps per memory run.")
    ap.add_argument("--rounds", type=int, default=5, help="Timing rounds.")
    ap.add_argument("--time-steps", type=int, default=30, help="Steps per form and round.")
    ap.add_argument("--note", default="", help="Written under the table (the machine's load).")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    from miir.provenance import header_line, run_record, write_result

    memory = []
    for bf16 in (True, False):
        for blocked in (False, True):
            got = memory_run(args.data, args.steps, blocked, bf16)
            memory.append({"bf16": bf16, "blocked": blocked, **got})
            print(f"bf16={bf16} blocked={blocked}: {got}", flush=True)
    timed = timing(args.data, args.rounds, args.time_steps)
    info = run_record(steps=args.steps, memory=memory, timing=timed, note=args.note)
    marks = [str(c) for c in CHECKPOINTS if c <= args.steps]
    lines = [
        "# Training memory and step time with fixed-size blocks of shapes",
        "",
        f"{header_line(info)}.",
        f"Default MIIR (fields {', '.join(FIELDS)}), random packed batches of 128, Adam, "
        f"1 thread; each row a fresh process. Resident memory (MiB) after the step:",
        "",
        "| precision | shapes | start | " + " | ".join(f"step {m}" for m in marks) + " | peak |",
        "|---|---|" + "---:|" * (len(marks) + 2),
    ]
    for r in memory:
        cells = " | ".join(f"{r[m]:.0f}" for m in marks)
        lines.append(
            f"| {'bf16' if r['bf16'] else 'fp32'} | "
            f"{'blocked' if r['blocked'] else 'as they come'} | {r['start']:.0f} | {cells} | "
            f"{r['peak']:.0f} |"
        )
    sp = timed["s_per_step"]
    lines += [
        "",
        f"Step time, bf16, {timed['threads']} threads, {args.rounds} alternating rounds of "
        f"{args.time_steps} steps on the same batches and masks: blocked "
        f"{sp['blocked']:.3f} s, as they come {sp['unblocked']:.3f} s; median per-round ratio "
        f"{timed['ratio_blocked_to_unblocked']:.3f} (blocked / as they come).",
    ]
    if args.note:
        lines += ["", args.note]
    write_result(Path(args.out), "shapes", info, lines)


if __name__ == "__main__":
    main()
