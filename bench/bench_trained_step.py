"""Training steps of a trained default MIIR with each of the fortieth session's speed changes
switched off in turn, and two options switched on, in one process (issue 9: an epoch of about 14 s).

    python bench/bench_trained_step.py --run runs/keep/1ff5127cf735767a [--rounds 9 --steps 20]

Why a trained model: the benchmarks before timed steps of a freshly initialised model, whose
softmaxes are flat, and without ``miir train``'s deterministic mode; real training epochs took
longer than their steps timed alone, and changes that made those steps faster did not make
real epochs faster. A trained model's softmaxes are peaked, so its steps could run through
subnormal floats (below 1.2e-38), which a fresh model never meets: the ``flush`` variant tests
that guess (measured: no effect).

Variants of one step (Adam, clipping, packed batches, bf16 autocast, as ``miir train``):

- ``today``: the code as it is (the loss exponentiates with ``exp2``, the dropout bits come from
  numpy's SFC64);
- ``torch exp``: the full-softmax loss as it was before (``git show REV:src/miir/models/
  softmax.py``, ``--before``: ``torch.logsumexp`` forward, ``exp_`` backward);
- ``torch bits``: the dropout's bits from ``torch.randint`` (the earlier form in
  ``bench/bench_dropout.py``);
- ``fill``: ``torch.use_deterministic_algorithms``' fill of every new tensor with NaN on, as
  ``miir train``'s ``deterministic=True`` had it (today's ``train()`` turns the fill off and
  keeps the deterministic algorithms; every variant runs with them, as ``miir train`` does);
- ``before``: all three as they were;
- ``flush``: today's, with subnormal floats flushed to zero (``torch.set_flush_denormal(True)``;
  measured, not adopted);
- ``keep``: today's, with the loss's softmax kept from the forward pass in bf16
  (``miir.models.softmax.KEEP_16BIT``, an option, off: the thirty-ninth session found real
  epochs 1.08x with it while deterministic mode still filled its buffer with NaN).

One torch thread by default, so that ``torch.set_flush_denormal`` (a mode of the calling thread)
switches the whole step (``--threads 2``, as ``miir train`` on two cores, leaves ``flush`` out).
The same batches and masks for every variant; the weights keep training throughout, shared by
all variants. Every batch runs under every variant in turn, the order rotated from batch to
batch (this machine's speed drifts by tens of percent within seconds: only steps run side by
side compare). Reported: the median step time, and the median (and quartiles) of the per-step
ratios to ``before`` and to ``today``. Writes ``<--name>.json`` and ``.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dropout import torch_bits_multipliers
from bench_softmax import USERS_OF_THE_LOSS, step_fn

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("before", "torch exp", "torch bits", "fill", "today", "flush", "keep")


def module_at(rev: str, path: str, name: str):
    """The module ``path`` (a file of the repository) as it was at git revision ``rev``."""
    text = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(text)
    spec = importlib.util.spec_from_file_location(name, f.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    Path(f.name).unlink()
    return module


def torch_bits(shape, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``dropout_multipliers`` with ``torch.randint``'s bits (the 16-bit path: p = 0.1)."""
    if float(p * 256).is_integer():
        raise ValueError(f"p = {p}: the bit-table path, not timed here")
    return torch_bits_multipliers(shape, p, dtype)


@contextlib.contextmanager
def variant(name: str, old_softmax) -> Iterator[None]:
    """Within the block the step runs as variant ``name`` (see the module's docstring)."""
    import miir.models.layers as layers
    import miir.models.softmax as softmax

    modules = [sys.modules[m] for m in USERS_OF_THE_LOSS]
    saved = [m.softmax_cross_entropy for m in modules]
    saved_bits = layers.dropout_multipliers
    saved_mode = torch.are_deterministic_algorithms_enabled()
    saved_fill = torch.utils.deterministic.fill_uninitialized_memory
    saved_keep = softmax.KEEP_16BIT
    try:
        softmax.KEEP_16BIT = name == "keep"
        torch.use_deterministic_algorithms(True)  # as miir train's Trainer(deterministic=True)
        torch.utils.deterministic.fill_uninitialized_memory = name in ("before", "fill")
        if name in ("before", "torch exp"):
            for m in modules:
                m.softmax_cross_entropy = old_softmax.softmax_cross_entropy
        if name in ("before", "torch bits"):
            layers.dropout_multipliers = torch_bits
        torch.set_flush_denormal(name == "flush")
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.use_deterministic_algorithms(saved_mode)
        torch.utils.deterministic.fill_uninitialized_memory = saved_fill
        softmax.KEEP_16BIT = saved_keep
        layers.dropout_multipliers = saved_bits
        for m, f in zip(modules, saved, strict=True):
            m.softmax_cross_entropy = f


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", required=True, help="A run folder of the default MIIR (its best/).")
    ap.add_argument("--before", default="c42e404", help="The revision of the earlier loss.")
    ap.add_argument("--steps", type=int, default=20, help="Timed steps per variant and round.")
    ap.add_argument("--rounds", type=int, default=9, help="Interleaved rounds.")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="Torch threads; above 1 the flush variant is left out (the pool's other threads "
        "keep the mode they started with).",
    )
    ap.add_argument("--name", default="trained_step", help="Name of the result files.")
    ap.add_argument("--note", default="", help="Written under the table (the machine's load).")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    from miir.data.artifact import Artifact
    from miir.provenance import header_line, run_record, write_result
    from miir.runtime import keep_freed_memory
    from miir.training.checkpoint import load_checkpoint
    from miir.training.data import training_windows
    from miir.training.train import quiet_lightning

    torch.set_num_threads(args.threads)
    variants = tuple(v for v in VARIANTS if args.threads == 1 or v != "flush")
    keep_freed_memory()
    quiet_lightning()
    old_softmax = module_at(args.before, "src/miir/models/softmax.py", "softmax_before")
    model, meta = load_checkpoint(Path(args.run) / "best")
    model.train()
    windows = training_windows(Artifact(meta["artifact"]["path"]), model.config.max_len)
    step = step_fn(model, windows, bf16=True)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(len(windows), (128,), generator=g) for _ in range(args.steps)]
    for name in variants:  # warm-up
        with variant(name, old_softmax):
            for i, b in enumerate(batches[:3]):
                step(b, i)
    # every batch runs under every variant in turn (the order rotated from batch to batch):
    # this machine's speed drifts by tens of percent within seconds, so only steps run side by
    # side compare
    times: dict[str, list[float]] = {v: [] for v in variants}
    k = 0
    for _ in range(args.rounds):
        for i, b in enumerate(batches):
            for name in variants[k % len(variants) :] + variants[: k % len(variants)]:
                with variant(name, old_softmax):
                    times[name].append(step(b, i))
            k += 1
        print(json.dumps({v: round(statistics.median(t), 4) for v, t in times.items()}), flush=True)

    def ratio(v: str, ref: str) -> float:
        return statistics.median(a / b for a, b in zip(times[v], times[ref], strict=True))

    def spread(v: str, ref: str) -> tuple[float, float]:
        """The quartiles of the per-step ratios."""
        q = statistics.quantiles([a / b for a, b in zip(times[v], times[ref], strict=True)], n=4)
        return q[0], q[2]

    rows = [
        {
            "variant": v,
            "s_per_step": statistics.median(times[v]),
            "ratio_to_before": ratio(v, "before"),
            "ratio_to_today": ratio(v, "today"),
            "ratio_to_before_quartiles": spread(v, "before"),
            "steps": times[v],
        }
        for v in variants
    ]
    info = run_record(
        run=str(args.run),
        run_epoch=meta.get("epoch"),
        before=args.before,
        steps=args.steps,
        rounds=args.rounds,
        threads=args.threads,
        rows=rows,
        note=args.note,
    )
    lines = [
        "# Steps of a trained default MIIR, the fortieth session's speed changes off in turn",
        "",
        f"{header_line(info)}.",
        "",
        f"The run's best checkpoint (epoch {meta.get('epoch')}), trained on; {args.rounds} "
        f"rounds of the same {args.steps} packed batches of 128 (and masks), each batch under "
        f"every variant in turn, the order rotated; {args.threads} torch thread(s), bf16 "
        "autocast. s/step: "
        "the median step; ratios: medians (and quartiles) of the per-step ratios.",
        "",
        "| variant | s/step | ratio to before (quartiles) | ratio to today |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lo, hi = r["ratio_to_before_quartiles"]
        lines.append(
            f"| {r['variant']} | {r['s_per_step']:.4f} | {r['ratio_to_before']:.2f}x "
            f"({lo:.2f}-{hi:.2f}) | {r['ratio_to_today']:.2f}x |"
        )
    if args.note:
        lines += ["", args.note]
    write_result(Path(args.out), args.name, info, lines)


if __name__ == "__main__":
    main()
