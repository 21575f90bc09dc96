"""Training step time and memory of the full-softmax cross-entropy's forms (issue 9: a faster
epoch, memory under 1 GB).

    python bench/bench_softmax.py --data artifacts/beauty [--steps 30 --rounds 5 --mem-steps 100]
    python bench/bench_softmax.py --forms unfused,recompute --name softmax   # the first record

Every ID loss (MIIR's item-ID cloze and next-item losses, its categorical field losses,
SASRec's next-item loss) is a softmax over a whole table. The forms, the first named in
``--forms`` the baseline of the ratios:

- ``unfused``: ``F.cross_entropy((h @ table.T).float(), target)``, the (M, N) logits kept by
  autograd (the code before ``miir.models.softmax``), swapped in for the comparison;
- ``recompute``: ``miir.models.softmax`` in chunks of rows, the backward pass recomputing each
  chunk's logits (the default);
- ``keep``: the same, the softmax kept from the forward pass under a 16-bit dtype (an option,
  ``keep=True``; identical to ``recompute`` in float32).

1. Same loss: one batch and mask, dropout off, float32 and bf16: each form's loss and largest
   gradient difference from the baseline's.
2. Time: for the default MIIR and for SASRec, the forms run the same packed batches (MIIR: the
   same masks) in interleaved rounds, under each of ``--precisions``; reported are the median
   over rounds of the mean step time and the median of the per-round ratio to the baseline.
3. Memory: ``--mem-steps`` bf16 steps of the default MIIR in a fresh process per form (1
   thread): resident memory at the end and its peak (VmHWM).

Writes ``bench/results/<--name>.json`` and ``.md`` atomically.
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


def unfused_cross_entropy(
    h: torch.Tensor, table: torch.Tensor, target: torch.Tensor, chunk=None, bias=None, keep=None
):
    """The form before ``miir.models.softmax``: the (M, N) logits kept by autograd."""
    logits = (h @ table.T).float()
    return F.cross_entropy(logits if bias is None else logits + bias, target, reduction="none")


FORMS = ("unfused", "recompute", "keep")


@contextlib.contextmanager
def form(name: str) -> Iterator[None]:
    """Within the block the models' losses use the ``name`` form (one of :data:`FORMS`)."""
    from miir.models import softmax

    if name not in FORMS:
        raise ValueError(f"unknown form {name!r}: one of {', '.join(FORMS)}")
    modules = [sys.modules[m] for m in USERS_OF_THE_LOSS]
    saved = [m.softmax_cross_entropy for m in modules]
    keep = softmax.KEEP_16BIT
    try:
        if name == "unfused":
            for m in modules:
                m.softmax_cross_entropy = unfused_cross_entropy
        softmax.KEEP_16BIT = name == "keep"
        yield
    finally:
        softmax.KEEP_16BIT = keep
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


def same_loss(data: str, forms: list[str]) -> list[dict]:
    """Each form on one batch and mask of the default MIIR, dropout off, in float32 and bf16:
    its loss, its largest gradient difference from the first form's and the difference's norm
    relative to that gradient's."""
    from miir.models.batch import make_batch

    model, windows = build(data, "miir", {"fields": FIELDS})
    model.eval()  # dropout off; the loss does not depend on the mode otherwise
    batch = make_batch(windows[:128], "packed", model.config.max_len)
    rows = []
    for bf16 in (False, True):
        got = {}
        for name in forms:
            model.zero_grad(set_to_none=True)
            with form(name), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, _ = model.loss(batch, torch.Generator().manual_seed(0))
            loss.backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            got[name] = (loss.item(), grads)
        base = got[forms[0]][1]
        rows.append(
            {
                "precision": "bf16" if bf16 else "fp32",
                "loss": {n: v[0] for n, v in got.items()},
                "max_abs_grad_diff": {n: (v[1] - base).abs().max().item() for n, v in got.items()},
                "rel_grad_diff": {
                    n: ((v[1] - base).norm() / base.norm()).item() for n, v in got.items()
                },
                "max_abs_grad": base.abs().max().item(),
            }
        )
    return rows


def timing(
    data: str,
    model_name: str,
    over: dict,
    forms: list[str],
    precisions: list[str],
    steps: int,
    rounds: int,
) -> list[dict]:
    """Each round draws fresh random batches, as training does (the same for every form
    within the round): a step meets shapes and allocation sizes that it has not met."""
    models = {name: build(data, model_name, over) for name in forms}
    windows = models[forms[0]][1]
    g = torch.Generator().manual_seed(0)
    picks = [
        [torch.randint(len(windows), (128,), generator=g) for _ in range(steps)]
        for _ in range(len(precisions) * rounds + 1)
    ]
    rows = []
    for p, precision in enumerate(precisions):
        bf16 = precision == "bf16"
        fns = {name: step_fn(m, w, bf16) for name, (m, w) in models.items()}

        def run(name: str, batches: list[torch.Tensor], fns=fns) -> float:
            with form(name):
                return statistics.mean(fns[name](idx, i) for i, idx in enumerate(batches))

        for name in fns:  # warm-up
            run(name, picks[0])
        times: dict[str, list[float]] = {name: [] for name in fns}
        for r in range(rounds):
            batches = picks[1 + r + p * rounds]
            for name in fns if r % 2 == 0 else reversed(list(fns)):
                times[name].append(run(name, batches))
        base = times[forms[0]]
        rows.append(
            {
                "model": model_name,
                "precision": precision,
                "s_per_step": {n: statistics.median(t) for n, t in times.items()},
                "ratio_to_baseline": {
                    n: statistics.median(a / b for a, b in zip(t, base, strict=True))
                    for n, t in times.items()
                },
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
    ap.add_argument("--forms", default="recompute,keep", help="Comma-separated; first: baseline.")
    ap.add_argument("--precisions", default="fp32,bf16", help="Comma-separated: fp32, bf16.")
    ap.add_argument("--steps", type=int, default=30, help="Timed steps per form and round.")
    ap.add_argument("--rounds", type=int, default=5, help="Interleaved rounds.")
    ap.add_argument("--mem-steps", type=int, default=100, help="Steps per memory run.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--note", default="", help="Written under the table (the machine's load).")
    ap.add_argument("--name", default="softmax_keep", help="Name of the result files.")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    forms = args.forms.split(",")
    precisions = args.precisions.split(",")
    if len(forms) < 2 or not set(forms) <= set(FORMS) or len(set(forms)) != len(forms):
        ap.error(f"--forms: two or more of {', '.join(FORMS)}, each once")
    if not precisions or not set(precisions) <= {"fp32", "bf16"}:
        ap.error("--precisions: fp32, bf16 or both")

    from miir.provenance import header_line, run_record, write_result
    from miir.runtime import keep_freed_memory
    from miir.training.train import quiet_lightning

    keep_freed_memory()
    quiet_lightning()
    torch.set_num_threads(args.threads)
    check = same_loss(args.data, forms)
    print(json.dumps(check), flush=True)
    mem = {name: memory(args.data, args.mem_steps, name) for name in forms}
    print(json.dumps(mem), flush=True)
    over = {"fields": FIELDS}
    rows = timing(args.data, "miir", over, forms, precisions, args.steps, args.rounds)
    rows += timing(args.data, "sasrec", {}, forms, precisions, args.steps, args.rounds)
    info = run_record(
        forms=forms,
        same_loss=check,
        memory=mem,
        mem_steps=args.mem_steps,
        timing=rows,
        note=args.note,
    )
    base, others = forms[0], forms[1:]
    lines = [
        f"# The full-softmax cross-entropy's forms: {', '.join(forms)} (ratios to {base})",
        "",
        f"{header_line(info)}.",
        "",
        "Same loss (default MIIR, one packed batch of 128 and its mask, dropout off):",
        "",
        "| precision | "
        + " | ".join(f"{n} loss" for n in forms)
        + " | "
        + " | ".join(f"{n}: largest gradient difference (relative, whole gradient)" for n in others)
        + " | largest gradient |",
        "|---|" + "---:|" * (len(forms) + len(others) + 1),
    ]
    for c in check:
        lines.append(
            f"| {c['precision']} | "
            + " | ".join(f"{c['loss'][n]:.6f}" for n in forms)
            + " | "
            + " | ".join(
                f"{c['max_abs_grad_diff'][n]:.2e} ({c['rel_grad_diff'][n]:.1e})" for n in others
            )
            + f" | {c['max_abs_grad']:.2e} |"
        )
    lines += [
        "",
        f"Step time: {args.rounds} interleaved rounds of {args.steps} random packed batches of "
        f"128 (fresh batches each round, the same for every form), Adam, clipping; "
        f"{args.threads} torch threads; ratio: the median over rounds of the round's ratio.",
        "",
        "| model | precision | "
        + " | ".join(f"{n} s/step" for n in forms)
        + " | "
        + " | ".join(f"ratio {n} / {base}" for n in others)
        + " |",
        "|---|---|" + "---:|" * (len(forms) + len(others)),
    ]
    for r in rows:
        s, q = r["s_per_step"], r["ratio_to_baseline"]
        lines.append(
            f"| {r['model']} | {r['precision']} | "
            + " | ".join(f"{s[n]:.3f}" for n in forms)
            + " | "
            + " | ".join(f"{q[n]:.2f}x" for n in others)
            + " |"
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
    write_result(Path(args.out), args.name, info, lines)


if __name__ == "__main__":
    main()
