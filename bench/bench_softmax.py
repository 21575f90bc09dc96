"""Training step time and memory with the fused, chunked full-softmax cross-entropy against
``F.cross_entropy`` on the full logits (issue 9: a faster epoch, memory under 1 GB).

    python bench/bench_softmax.py --data artifacts/beauty [--steps 30 --rounds 5 --mem-steps 100]

Every ID loss (MIIR's item-ID cloze and next-item losses, its categorical field losses,
SASRec's next-item loss) is a softmax over a whole table. ``miir.models.softmax`` computes it
in chunks of rows and recomputes the logits in the backward pass instead of keeping them; the
unfused form, the code before it, is ``F.cross_entropy((h @ table.T).float(), target)``,
swapped in here for the comparison.

1. Same loss: one batch and mask, dropout off, float32: the two forms' losses and gradients.
2. Time: for the default MIIR and for SASRec, both forms run the same packed batches (MIIR:
   the same masks) in interleaved rounds, in float32 and under bf16 autocast; reported are the
   median over rounds of the mean step time and the median of the per-round ratio.
3. Memory: ``--mem-steps`` bf16 steps of the default MIIR in a fresh process per form (1
   thread): resident memory at the end and its peak (VmHWM).

Writes ``bench/results/softmax.json`` and ``.md`` atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from childproc import PROC_MEMORY, run_child

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["categories", "brand", "title"]
USERS_OF_THE_LOSS = ("miir.models.miir", "miir.models.fields", "miir.models.sasrec")


def unfused_cross_entropy(h: torch.Tensor, table: torch.Tensor, target: torch.Tensor, chunk=None):
    """The form before ``miir.models.softmax``: the (M, N) logits kept by autograd."""
    return F.cross_entropy((h @ table.T).float(), target, reduction="none")


@contextlib.contextmanager
def form(name: str) -> Iterator[None]:
    """Within the block the models' losses use the ``name`` form ('fused' or 'unfused')."""
    modules = [sys.modules[m] for m in USERS_OF_THE_LOSS]
    saved = [m.softmax_cross_entropy for m in modules]
    try:
        if name == "unfused":
            for m in modules:
                m.softmax_cross_entropy = unfused_cross_entropy
        yield
    finally:
        for m, f in zip(modules, saved, strict=True):
            m.softmax_cross_entropy = f


def build(data: str, name: str, over: dict | None = None):
    from miir.data.artifact import Artifact
    from miir.models import model_config
    from miir.training.data import training_windows
    from miir.training.train import build_model

    art = Artifact(data)
    torch.manual_seed(0)
    model = build_model(art, model_config(name, {**(over or {})}), name).train()
    return model, training_windows(art, model.config.max_len)


def step_fn(model, windows: torch.Tensor, bf16: bool):
    """One packed training step (Adam, gradient clipping as ``miir train`` clips) -> seconds."""
    from miir.models.batch import make_batch

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(idx: torch.Tensor, seed: int) -> float:
        batch = make_batch(windows[idx], "packed", model.config.max_len)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model.loss(batch, torch.Generator().manual_seed(seed))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return time.perf_counter() - t

    return step


def same_loss(data: str) -> dict[str, float]:
    """Both forms on one batch and mask of the default MIIR, dropout off, float32."""
    from miir.models.batch import make_batch

    model, windows = build(data, "miir", {"fields": FIELDS})
    model.eval()  # dropout off; the loss does not depend on the mode otherwise
    batch = make_batch(windows[:128], "packed", model.config.max_len)
    got = {}
    for name in ("fused", "unfused"):
        model.zero_grad(set_to_none=True)
        with form(name):
            loss, _ = model.loss(batch, torch.Generator().manual_seed(0))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        got[name] = (loss.item(), grads)
    diff = (got["fused"][1] - got["unfused"][1]).abs().max().item()
    return {
        "loss_fused": got["fused"][0],
        "loss_unfused": got["unfused"][0],
        "max_abs_grad_diff": diff,
        "max_abs_grad": got["unfused"][1].abs().max().item(),
    }


def timing(data: str, model_name: str, over: dict, steps: int, rounds: int) -> list[dict]:
    """Each round draws fresh random batches, as training does (the same for both forms
    within the round): a step meets shapes and allocation sizes that it has not met."""
    models = {name: build(data, model_name, over) for name in ("fused", "unfused")}
    windows = models["fused"][1]
    g = torch.Generator().manual_seed(0)
    picks = [
        [torch.randint(len(windows), (128,), generator=g) for _ in range(steps)]
        for _ in range(2 * rounds + 1)
    ]
    rows = []
    for bf16 in (False, True):
        fns = {name: step_fn(m, w, bf16) for name, (m, w) in models.items()}

        def run(name: str, batches: list[torch.Tensor], fns=fns) -> float:
            with form(name):
                return statistics.mean(fns[name](idx, i) for i, idx in enumerate(batches))

        for name in fns:  # warm-up
            run(name, picks[0])
        times: dict[str, list[float]] = {name: [] for name in fns}
        for r in range(rounds):
            batches = picks[1 + r + (rounds if bf16 else 0)]
            for name in fns if r % 2 == 0 else reversed(list(fns)):
                times[name].append(run(name, batches))
        ratios = [a / b for a, b in zip(times["fused"], times["unfused"], strict=True)]
        rows.append(
            {
                "model": model_name,
                "precision": "bf16" if bf16 else "fp32",
                "s_per_step": {n: statistics.median(t) for n, t in times.items()},
                "ratio_fused_to_unfused": statistics.median(ratios),
                "rounds": times,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, BENCH)
from bench_softmax import FIELDS, build, form, step_fn
from miir.runtime import keep_freed_memory
keep_freed_memory()
data, steps, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
PROC_MEMORY
model, windows = build(data, "miir", {"fields": FIELDS})
start = mem()["VmRSS"]
step = step_fn(model, windows, bf16=True)
g = torch.Generator().manual_seed(0)
with form(name):
    for i in range(steps):
        step(torch.randint(len(windows), (128,), generator=g), i)
m = mem()
print("RESULT " + json.dumps({"start": start, "end": m["VmRSS"], "peak": m["VmHWM"]}))
""".replace("BENCH", repr(str(ROOT / "bench"))).replace("PROC_MEMORY", PROC_MEMORY)


def memory(data: str, steps: int, name: str) -> dict[str, float]:
    return run_child(CHILD, data, str(steps), name)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(ROOT / "artifacts" / "beauty"))
    ap.add_argument("--steps", type=int, default=30, help="Timed steps per form and round.")
    ap.add_argument("--rounds", type=int, default=5, help="Interleaved rounds.")
    ap.add_argument("--mem-steps", type=int, default=100, help="Steps per memory run.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--note", default="", help="Written under the table (the machine's load).")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    from miir.provenance import header_line, run_record, write_result
    from miir.runtime import keep_freed_memory
    from miir.training.train import quiet_lightning

    keep_freed_memory()
    quiet_lightning()
    torch.set_num_threads(args.threads)
    check = same_loss(args.data)
    print(json.dumps(check), flush=True)
    mem = {name: memory(args.data, args.mem_steps, name) for name in ("unfused", "fused")}
    print(json.dumps(mem), flush=True)
    rows = timing(args.data, "miir", {"fields": FIELDS}, args.steps, args.rounds)
    rows += timing(args.data, "sasrec", {}, args.steps, args.rounds)
    info = run_record(
        same_loss=check, memory=mem, mem_steps=args.mem_steps, timing=rows, note=args.note
    )
    lines = [
        "# The fused, chunked softmax cross-entropy against F.cross_entropy on full logits",
        "",
        f"{header_line(info)}.",
        "",
        f"Same loss (default MIIR, one packed batch of 128 and its mask, dropout off, float32): "
        f"fused {check['loss_fused']:.6f}, unfused {check['loss_unfused']:.6f}; largest "
        f"gradient difference {check['max_abs_grad_diff']:.2e} (largest gradient "
        f"{check['max_abs_grad']:.2e}).",
        "",
        f"Step time: {args.rounds} interleaved rounds of {args.steps} random packed batches of "
        f"128 (fresh batches each round, the same for both forms), Adam, clipping; "
        f"{args.threads} torch threads.",
        "",
        "| model | precision | unfused s/step | fused s/step | ratio fused / unfused |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        s = r["s_per_step"]
        lines.append(
            f"| {r['model']} | {r['precision']} | {s['unfused']:.3f} | {s['fused']:.3f} | "
            f"{r['ratio_fused_to_unfused']:.2f}x |"
        )
    lines += [
        "",
        f"Memory: {args.mem_steps} bf16 steps of the default MIIR, a fresh process per form, "
        "1 thread (MiB):",
        "",
        "| form | after setup | after the steps | peak |",
        "|---|---:|---:|---:|",
    ]
    for name, m in mem.items():
        lines.append(f"| {name} | {m['start']:.0f} | {m['end']:.0f} | {m['peak']:.0f} |")
    if args.note:
        lines += ["", args.note]
    write_result(Path(args.out), "softmax", info, lines)


if __name__ == "__main__":
    main()
