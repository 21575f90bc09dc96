"""The dropout multipliers of ``miir.models.layers`` against their previous form, at the
shapes of a default MIIR training step on amazon-beauty (issue 9: a faster epoch).

    python bench/bench_dropout.py [--rounds 7 --reps 20 --threads 1]

For a ``p`` that is not a multiple of 1/256 (the default 0.1), each element takes 16 random
bits and is kept when they are at least ``p * 65536``. The previous form turned the boolean
keep-mask into float32 (a scalar loop on the CPU), divided by ``1 - p`` and cast to the
model's dtype; today's views the mask as uint8 (a vectorised conversion) and multiplies in
the model's dtype. Both draw the same bits, so they give the same mask from the same seed;
the values differ by at most one rounding of ``1 / (1 - p)``.

Shapes (a packed batch of 128 windows in 44 rows of 20 items x 4 fields = 80 tokens): the
attention weights (44, 4, 80, 80), the feed-forward's inner activations (44, 80, 256) and a
layer's outputs (44, 80, 64); a default step draws each of them once per layer (3 layers)
and the outputs twice more. Reported: the median over interleaved rounds of the mean time of
one call, per shape and dtype, and the median of the per-round ratios.

Writes ``bench/results/dropout.json`` and ``.md`` atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from miir.provenance import header_line, run_record, write_result

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "attention weights": (44, 4, 80, 80),
    "feed-forward inner": (44, 80, 256),
    "layer output": (44, 80, 64),
}


def previous_multipliers(shape, p: float, dtype: torch.dtype) -> torch.Tensor:
    """The form before the twentieth session (16-bit path only)."""
    n = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    u16 = words.view(torch.int16)[:n].view(shape)
    return ((u16 >= round(p * 65536) - 32768).to(torch.float32) / (1.0 - p)).to(dtype)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=20, help="Calls per form, shape and round.")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--note", default="", help="Written under the table (the machine's load).")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    from miir.models.layers import dropout_multipliers

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    forms = {
        "previous": lambda s, d: previous_multipliers(s, args.p, d),
        "today": lambda s, d: dropout_multipliers(s, args.p, d, cpu),
    }
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for label, shape in SHAPES.items():
            torch.manual_seed(0)
            a = forms["previous"](shape, dtype)
            torch.manual_seed(0)
            b = forms["today"](shape, dtype)
            same_mask = bool(torch.equal(a == 0, b == 0))
            max_diff = (a.float() - b.float()).abs().max().item()
            times: dict[str, list[float]] = {f: [] for f in forms}
            for f in forms:  # warm-up
                forms[f](shape, dtype)
            for r in range(args.rounds):
                for f in forms if r % 2 == 0 else reversed(list(forms)):
                    t = time.perf_counter()
                    for _ in range(args.reps):
                        forms[f](shape, dtype)
                    times[f].append((time.perf_counter() - t) / args.reps)
            ratio = statistics.median(
                x / y for x, y in zip(times["today"], times["previous"], strict=True)
            )
            rows.append(
                {
                    "shape": label,
                    "size": list(shape),
                    "dtype": str(dtype).removeprefix("torch."),
                    "same_mask": same_mask,
                    "max_value_diff": max_diff,
                    "ms_per_call": {f: 1e3 * statistics.median(t) for f, t in times.items()},
                    "ratio_today_to_previous": ratio,
                    "rounds": times,
                }
            )
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "rounds"}), flush=True)
    info = run_record(p=args.p, threads=args.threads, rows=rows, note=args.note)
    lines = [
        f"# Dropout multipliers (p = {args.p}): today's form against the previous one",
        "",
        f"{header_line(info)}; {args.threads} torch threads, "
        f"{args.rounds} interleaved rounds of {args.reps} calls per form.",
        "",
        "| tensor | shape | dtype | same mask | largest value difference | previous ms/call "
        "| today ms/call | today / previous |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ms = r["ms_per_call"]
        lines.append(
            f"| {r['shape']} | {tuple(r['size'])} | {r['dtype']} | {r['same_mask']} | "
            f"{r['max_value_diff']:.1e} | {ms['previous']:.3f} | {ms['today']:.3f} | "
            f"{r['ratio_today_to_previous']:.2f}x |"
        )
    if args.note:
        lines += ["", args.note]
    write_result(Path(args.out), "dropout", info, lines)


if __name__ == "__main__":
    main()
