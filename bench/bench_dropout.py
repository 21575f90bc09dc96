"""The dropout multipliers of ``miir.models.layers`` against their earlier forms, at the
shapes of a default MIIR training step on amazon-beauty (issue 9: a faster epoch).

    python bench/bench_dropout.py [--rounds 7 --reps 20 --threads 1]

For a ``p`` that is not a multiple of 1/256 (the default 0.1), each element takes 16 random
bits and is kept when they are at least ``p * 65536``. Three forms:

- ``bool-float32`` (before the twentieth session): the bits from ``torch.randint``, the boolean
  keep-mask turned into float32 (a scalar loop on the CPU), divided by ``1 - p``, cast;
- ``torch bits`` (the twentieth to the fortieth session): the same bits, the mask viewed as
  uint8 (a vectorised conversion) and multiplied in the model's dtype; the same mask and
  values as ``bool-float32`` from the same seed (checked, column "same mask");
- ``today``: the uint8 view, the bits from numpy's SFC64 seeded by one draw from torch's
  generator (``miir.models.layers.random_words``): other bits, the same law (column "dropped":
  the share of zeros of each form, to compare with ``p``).

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


def bool_float32_multipliers(shape, p: float, dtype: torch.dtype) -> torch.Tensor:
    """The form before the twentieth session (16-bit path only)."""
    n = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    u16 = words.view(torch.int16)[:n].view(shape)
    return ((u16 >= round(p * 65536) - 32768).to(torch.float32) / (1.0 - p)).to(dtype)


def torch_bits_multipliers(shape, p: float, dtype: torch.dtype) -> torch.Tensor:
    """The form of the twentieth to the fortieth session: ``torch.randint``'s bits, the mask
    viewed as uint8 (16-bit path only)."""
    n = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    keep = words.view(torch.int16)[:n].view(shape) >= round(p * 65536) - 32768
    return keep.view(torch.uint8).to(dtype).mul_(1.0 / (1.0 - p))


def ratio(times: dict[str, list[float]], form: str, ref: str) -> float:
    """The median of the per-round ratios of ``form``'s time to ``ref``'s."""
    return statistics.median(x / y for x, y in zip(times[form], times[ref], strict=True))


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
        "bool-float32": lambda s, d: bool_float32_multipliers(s, args.p, d),
        "torch bits": lambda s, d: torch_bits_multipliers(s, args.p, d),
        "today": lambda s, d: dropout_multipliers(s, args.p, d, cpu),
    }
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for label, shape in SHAPES.items():
            torch.manual_seed(0)
            a = forms["bool-float32"](shape, dtype)
            torch.manual_seed(0)
            b = forms["torch bits"](shape, dtype)
            same_mask = bool(torch.equal(a == 0, b == 0) and torch.equal(a, b))
            dropped = {f: (forms[f](shape, dtype) == 0).float().mean().item() for f in forms}
            times: dict[str, list[float]] = {f: [] for f in forms}
            for f in forms:  # warm-up
                forms[f](shape, dtype)
            for r in range(args.rounds):
                for f in list(forms) if r % 2 == 0 else reversed(list(forms)):
                    t = time.perf_counter()
                    for _ in range(args.reps):
                        forms[f](shape, dtype)
                    times[f].append((time.perf_counter() - t) / args.reps)
            rows.append(
                {
                    "shape": label,
                    "size": list(shape),
                    "dtype": str(dtype).removeprefix("torch."),
                    "same_mask_bool_float32_torch_bits": same_mask,
                    "dropped": dropped,
                    "ms_per_call": {f: 1e3 * statistics.median(t) for f, t in times.items()},
                    "ratio_today_to_torch_bits": ratio(times, "today", "torch bits"),
                    "ratio_today_to_bool_float32": ratio(times, "today", "bool-float32"),
                    "rounds": times,
                }
            )
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "rounds"}), flush=True)
    info = run_record(p=args.p, threads=args.threads, rows=rows, note=args.note)
    lines = [
        f"# Dropout multipliers (p = {args.p}): today's form against the earlier ones",
        "",
        f"{header_line(info)}; {args.threads} torch threads, "
        f"{args.rounds} interleaved rounds of {args.reps} calls per form.",
        "",
        "| tensor | shape | dtype | bool-float32 = torch bits (same seed) | dropped: torch bits "
        "/ today | bool-float32 ms/call | torch bits ms/call | today ms/call | today / torch "
        "bits | today / bool-float32 |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ms, dr = r["ms_per_call"], r["dropped"]
        lines.append(
            f"| {r['shape']} | {tuple(r['size'])} | {r['dtype']} | "
            f"{r['same_mask_bool_float32_torch_bits']} | {dr['torch bits']:.4f} / "
            f"{dr['today']:.4f} | {ms['bool-float32']:.3f} | {ms['torch bits']:.3f} | "
            f"{ms['today']:.3f} | {r['ratio_today_to_torch_bits']:.2f}x | "
            f"{r['ratio_today_to_bool_float32']:.2f}x |"
        )
    if args.note:
        lines += ["", args.note]
    write_result(Path(args.out), "dropout", info, lines)


if __name__ == "__main__":
    main()
