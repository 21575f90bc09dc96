"""Peak resident memory of MIIR training and evaluation on amazon-beauty, phase by phase
(issue 9's goal: peak training memory under 1 GB).

Each phase runs in a fresh process (peak RSS, ``ru_maxrss``, is per process and never goes
down), ``--reps`` times (the median is reported: the peaks of identical runs spread by
hundreds of MiB, see recipe.md), as the code runs today (glibc malloc tuned,
``miir.runtime.keep_freed_memory``; evaluation batches scored in chunks of
``miir.evaluation.evaluate.SCORE_CHUNK`` rows, with the kept memory released around each
pass and the ranks written into buffers allocated before it; the finished trainer's reference
cycles collected before the final evaluation); the phases that evaluate also as before those
changes (``before``), ``fit+val``, ``eval@512`` and ``train`` also without the rank buffers
alone (``no-buffer``), ``train`` also without the collection alone (``no-collect``) and with
the training stage's callback kept through the final evaluation (``kept-callback``), ``fit+val``
and ``train`` also without oneDNN's primitive cache (``no-kernel-cache``: its JIT-compiled
matmul kernels for every shape seen stay in memory; the phase's time is compared), ``fit+val``,
``eval@512`` and ``train`` also with evaluation's shapes not blocked (``any-shape``:
``TRIM_BLOCK`` 1 and no ``padded_rows``, every chunk its own widths; the evaluation's time is
compared; ``--primitives`` counts the distinct primitives of both), the same three also with
each evaluation batch ranked whole (``whole-ranks``: its chunks' scores gathered into one
matrix, as before ``rank_in_chunks``; the evaluation's time is compared), ``imports``, ``fit+val``
and ``train`` also with Lightning's full imports (``full-imports``: every other arm applies
:func:`miir.runtime.skip_unused_imports` first, as the CLI does), and with
``--untuned`` also with malloc untuned (``MIIR_MALLOC_TUNING=0``):

- ``imports``: ``import miir.training.train`` (torch, Lightning, and what they import);
- ``setup``: + the artifact, the model and the training windows;
- ``steps``: + N plain training steps (the model's loss, backward, Adam; no Lightning);
- ``fit``: ``train()`` for ``--steps`` batches and one validation batch, no final evaluation;
- ``fit+val``: the same with the whole validation split (as every real epoch);
- ``train``: ``fit+val`` followed by the final evaluation (valid and test) in the same
  process, as ``miir train`` runs it;
- ``eval``: ``evaluate_run`` on the validation split at two evaluation batch sizes.

The evaluation's time (``evaluate_run`` on the validation split, 512 users per batch, one
thread) is measured for today's code and ``before`` in interleaved rounds, as a ratio.

Peaks vary from run to run with where malloc happens to place blocks (hence the medians);
this runs beside other work, which slows the evaluation time (its ratio less so). ``--phases``
measures a subset and carries the other rows over from the previous record, named in the
table with its commit (their code may predate changes measured since).

    python bench/bench_memory.py --data artifacts/beauty
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from childproc import child_process, run_child

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("categories", "brand", "title")

CHILD = r"""
import json, resource, sys
import torch
torch.set_num_threads(1)
phase, data, steps, run = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
arm = sys.argv[5]
if arm != "full-imports":  # as the CLI does (`miir train`)
    from miir.runtime import skip_unused_imports
    skip_unused_imports()
from miir.training.train import TrainConfig, build_model, evaluate_run, train
import types
import miir.evaluation.evaluate as ev, miir.evaluation.metrics as me
import miir.training.module as mod, miir.training.train as tr
if arm in ("before", "no-collect"):  # no cycle collection after training
    tr.gc = types.SimpleNamespace(collect=lambda: 0)
if arm in ("before", "kept-callback"):  # the stage's callback kept (it holds the trainer)
    _kept, _binit = [], tr.BestSafetensors.__init__
    def _keep(self, *a, **k):
        _binit(self, *a, **k)
        _kept.append(self)
    tr.BestSafetensors.__init__ = _keep
if arm in ("before", "no-buffer"):  # ranks kept batch by batch, no buffers
    _init = me.RankAccumulator.__init__
    me.RankAccumulator.__init__ = lambda self, capacity=0, device=None: _init(self)
if arm in ("before", "any-shape"):  # trimmed widths and compact rows not blocked
    import miir.models.batch as mb, miir.models.miir as mm
    mb.TRIM_BLOCK = 1
    mm.padded_rows = lambda m: m
if arm == "whole-ranks":  # as before rank_in_chunks: the chunks' scores written into one
    def _whole_ranks(ranks, score_fn, history, target, negatives, seen):  # buffer, ranked whole
        c = ev.SCORE_CHUNK
        scores = score_fn(history[:c])
        if len(history) > c:
            first, scores = scores, scores.new_empty((len(history), *scores.shape[1:]))
            scores[:c] = first
            del first
            for i in range(c, len(history), c):
                scores[i : i + c] = score_fn(history[i : i + c])
        ranks.update(scores.float(), target, negatives, seen)
    ev.rank_in_chunks = mod.rank_in_chunks = _whole_ranks
if arm == "before":  # evaluation before issue 9's change: whole batches, no release
    ev.SCORE_CHUNK = 1 << 30
    ev.release_freed_memory = mod.release_freed_memory = lambda: False
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {"imports": peak()}
if phase in ("setup", "steps"):
    from miir.data.artifact import Artifact
    from miir.models import model_config
    from miir.models.batch import make_batch
    from miir.training.data import training_windows
    art = Artifact(data)
    model = build_model(art, model_config("miir", {"fields": FIELDS}), "miir")
    windows = training_windows(art, model.config.max_len)
    out["setup"] = peak()
    if phase == "steps":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            idx = torch.randint(len(windows), (128,), generator=g)
            loss, _ = model.loss(make_batch(windows[idx], "packed", model.config.max_len), g)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out["steps"] = peak()
elif phase in ("fit", "fit+val", "train"):
    import time
    from miir.models import model_config
    cfg = TrainConfig(max_epochs=1, min_epochs=1, limit_train_batches=steps,
                      limit_val_batches=1 if phase == "fit" else None, threads=1,
                      progress=False, seed=1)
    start = time.perf_counter()
    train(data, run, "miir", model_config("miir", {"fields": FIELDS}), cfg, overwrite=True,
          stages=("valid", "test") if phase == "train" else ())
    out["seconds"] = time.perf_counter() - start
    out[phase] = peak()
elif phase.startswith("eval"):
    import time
    start = time.perf_counter()
    evaluate_run(run, stages=("valid",), eval_batch_size=int(phase.split("@")[1]))
    out["seconds"] = time.perf_counter() - start
    out[phase] = peak()
print("RESULT " + json.dumps(out))
""".replace("FIELDS", repr(FIELDS))


def phase_env(tuned: bool, arm: str) -> dict[str, str]:
    env = {"MIIR_MALLOC_TUNING": "1" if tuned else "0"}
    if arm == "no-kernel-cache":
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "0"
    return env


def run_phase(
    phase: str, data: str, steps: int, run: str, tuned: bool, arm: str = "today"
) -> dict[str, float]:
    return run_child(CHILD, phase, data, str(steps), run, arm, env=phase_env(tuned, arm))


def count_primitives(phase: str, data: str, steps: int, run: str, arm: str) -> int:
    """The number of distinct oneDNN primitives (kind, implementation, memory formats,
    attributes and shapes) that ``phase`` executes: what the primitive cache holds at most,
    read from ``ONEDNN_VERBOSE=1``'s execution lines (a separate run: the verbose output
    slows it)."""
    env = {**phase_env(True, arm), "ONEDNN_VERBOSE": "1"}
    proc = child_process(CHILD, phase, data, str(steps), run, arm, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"primitive count of {phase} ({arm}) failed:\n{proc.stderr[-3000:]}")
    seen = set()
    for line in proc.stdout.splitlines():
        if line.startswith("onednn_verbose,v1,primitive,exec,"):
            seen.add(line.rsplit(",", 1)[0].split(",", 4)[4])  # without the time
    return len(seen)


PHASES = ("imports", "setup", "steps", "fit", "fit+val", "eval@512", "eval@128", "train")
EVAL_PHASES = ("fit+val", "eval@512", "eval@128", "train")
ARMS = {  # arm: the phases where it differs from today's code
    "today": PHASES,
    "before": EVAL_PHASES,
    "no-buffer": ("fit+val", "eval@512", "train"),
    "no-collect": ("train",),  # the collection only runs between training and evaluation
    "kept-callback": ("train",),  # the same: the callback outlived training, not its stage
    "no-kernel-cache": ("fit+val", "train"),
    "any-shape": ("fit+val", "eval@512", "train"),
    "whole-ranks": ("fit+val", "eval@512", "train"),
    "full-imports": ("imports", "fit+val", "train"),
}
ARM_HEADS = {
    "today": "today (default)",
    "before": "before (whole batches, no release, no buffers, no collection, callback kept)",
    "no-buffer": "today without the rank buffers",
    "no-collect": "today without the collection",
    "kept-callback": "today with the stage's callback kept",
    "no-kernel-cache": "today without oneDNN's kernel cache",
    "any-shape": "today with evaluation's shapes not blocked",
    "whole-ranks": "today with each batch ranked whole",
    "full-imports": "today with Lightning's full imports",
}


def measure(
    args: argparse.Namespace, phases: list[str], arms: list[tuple[str, bool]]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """Run every selected (phase, arm) ``args.reps`` times, the arms interleaved within each
    repetition (for the time ratios); with ``--primitives`` also count the primitives."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = str(Path(tmp) / "run")
        for rep in range(args.reps):  # repetitions interleave the arms (the time ratio)
            for arm, tuned in arms:
                for phase in phases:
                    if phase not in ARMS[arm]:
                        continue  # the same code as today
                    got = run_phase(phase, args.data, args.steps, run, tuned, arm)
                    row = {"phase": phase, "arm": arm, "malloc_tuned": tuned, "rep": rep}
                    row.update(peak_mib=got[phase], seconds=got.get("seconds"))
                    rows.append(row)
                    print(
                        f"{phase:10s} {arm:6s} tuned={tuned!s:5s} peak {got[phase]:7.0f} MiB",
                        flush=True,
                    )
        primitives: dict[str, dict[str, int]] = {}
        for arm in ("today", "any-shape") if args.primitives else ():
            for phase in ("fit+val", "train"):
                n = count_primitives(phase, args.data, args.steps, run, arm)
                primitives.setdefault(arm, {})[phase] = n
                print(f"{phase:10s} {arm:6s} {n} oneDNN primitives", flush=True)
    return rows, primitives


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="artifacts/beauty")
    ap.add_argument("--steps", type=int, default=30, help="Training steps per phase.")
    ap.add_argument("--reps", type=int, default=3, help="Runs of each phase (median).")
    ap.add_argument("--untuned", action="store_true", help="Also with MIIR_MALLOC_TUNING=0.")
    ap.add_argument(
        "--primitives",
        action="store_true",
        help="Also count the distinct oneDNN primitives of fit+val and train, today and with "
        "evaluation's shapes not blocked (one extra run each, with ONEDNN_VERBOSE=1).",
    )
    ap.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="Comma-separated subset of the phases; the others' rows are carried over from the "
        "previous record (named in the table).",
    )
    ap.add_argument(
        "--arms",
        default=",".join(ARMS),
        help="Comma-separated subset of the arms; the other cells are carried over from the "
        "previous record (named under the table).",
    )
    ap.add_argument(
        "--tables-only",
        action="store_true",
        help="Measure nothing: write memory.md again from memory.json.",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    from statistics import median

    from miir.atomic import atomic_json, atomic_write_text
    from miir.provenance import header_line, run_record

    phases = [p for p in PHASES if p in args.phases.split(",")]
    arm_names = [a for a in ARMS if a in args.arms.split(",")]
    arms = [(arm, True) for arm in arm_names]
    arms += [("today", False)] if args.untuned else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tables_only:  # the table again from the record (after a change to this script)
        record = json.loads((out / "memory.json").read_text(encoding="utf-8"))
        rows, primitives = record["rows"], record.get("primitives", {})
        carried = record.get("carried_note", "")
        phases = [p for p in PHASES if any(r["phase"] == p for r in rows)]
    else:
        rows, primitives = measure(args, phases, arms)
        record = run_record(
            data=args.data, steps=args.steps, reps=args.reps, rows=rows, primitives=primitives
        )
        carried = ""
        selected = {(p, a) for a in arm_names for p in phases if p in ARMS[a]}
        if (out / "memory.json").is_file():
            old = json.loads((out / "memory.json").read_text(encoding="utf-8"))
            commit = str(old.get("commit"))[:10]
            kept = [r for r in old["rows"] if (r["phase"], r["arm"]) not in selected]
            by_commit: dict[str, dict[str, list[str]]] = {}
            for r in kept:
                r.setdefault("carried_from", commit)
                arms_of = by_commit.setdefault(r["carried_from"], {}).setdefault(r["phase"], [])
                if r["arm"] not in arms_of:
                    arms_of.append(r["arm"])
            rows += kept
            if kept:
                parts = [
                    f"at {c}: "
                    + "; ".join(
                        f"{p} ({', '.join(a)})"
                        for p, a in sorted(got.items(), key=lambda x: PHASES.index(x[0]))
                    )
                    for c, got in by_commit.items()
                ]
                carried = (
                    " Cells carried over from earlier records (this command measured "
                    f"{', '.join(phases)} for {', '.join(arm_names)}): {' / '.join(parts)}."
                )
            if not primitives and old.get("primitives"):
                primitives.update(old["primitives"])
                record["primitives_from"] = old.get("primitives_from", commit)
            phases = [p for p in PHASES if p in phases or any(r["phase"] == p for r in kept)]
        record["carried_note"] = carried
        atomic_json(out / "memory.json", record)

    def cell(phase: str, arm: str, tuned: bool, key: str = "peak_mib") -> str:
        got = [
            r[key] for r in rows if (r["phase"], r["arm"], r["malloc_tuned"]) == (phase, arm, tuned)
        ]
        if not got:
            return "-"
        fmt = "{:.0f}" if key == "peak_mib" else "{:.1f}"
        spread = f" ({fmt.format(min(got))}-{fmt.format(max(got))})" if len(got) > 1 else ""
        return fmt.format(median(got)) + spread

    head = ["phase"] + [f"peak MiB, {ARM_HEADS[arm]}" for arm in ARMS]
    if args.untuned:
        head.append("peak MiB, today with `MIIR_MALLOC_TUNING=0`")
    lines = [
        "# Peak resident memory of MIIR training and evaluation (issue 9: under 1 GB)",
        "",
        f"{header_line(record)}; MIIR default recipe, fields "
        f"{', '.join(FIELDS)}, batch 128, {record['steps']} steps, 1 thread. Each phase is a fresh "
        "process; peak RSS (`ru_maxrss`) includes the phases before it. Cells: median of "
        f"{record['reps']} runs (range). *Before*: evaluation as it was before issue 9's change "
        "(each batch of 512 users scored in one forward pass, and the memory malloc keeps never "
        "released, the stage's callback kept); today it is scored in forward passes of 128 and the kept memory is released "
        "before and after each evaluation pass, the ranks go into buffers allocated before the "
        "pass, and the finished trainer's reference cycles are collected before the final "
        "evaluation. *Without the rank buffers*: each batch's ranks kept as their own small "
        "tensor (malloc places them in the holes that freed score matrices leave, and the heap "
        "grows). *Without the collection*: no `gc.collect()` between training and the final "
        "evaluation (it only differs there). *With the stage's callback kept*: the training "
        "stage's `BestSafetensors` callback alive through the final evaluation, as `train()` "
        "kept it before (Lightning binds the module's `log` methods to every callback, so it "
        "holds the trainer, the module, the optimizer state and the validation rows). *Without "
        "oneDNN's kernel cache*: `ONEDNN_PRIMITIVE_CACHE_CAPACITY=0` (oneDNN keeps the "
        "primitives, and their JIT-compiled kernels, of up to 1,024 matmul shapes; packed "
        "batches and evaluation chunks come in hundreds of shapes). *With evaluation's shapes "
        "not blocked*: trimmed batches cut to the longest history's width, and the compact "
        "inference pass on exactly its real tokens (`TRIM_BLOCK` 1, no `padded_rows`), as "
        "before: a set of matmul shapes for every evaluation chunk. *With each batch ranked "
        "whole*: the chunks' scores gathered into one (512, N + 2) matrix and the batch ranked "
        "from it (the masks and comparisons of 512 users at once), as before `rank_in_chunks`. "
        "*With Lightning's full "
        "imports*: without `miir.runtime.skip_unused_imports` (`MIIR_LEAN_IMPORTS=0`), which "
        "the CLI and every other arm here apply: `import lightning` imports torchmetrics, "
        "whose import loads scipy.signal, matplotlib.pyplot and transformers."
        f"{carried}",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for phase in phases:
        cells = [cell(phase, arm, True) for arm in ARMS]
        if args.untuned:
            cells.append(cell(phase, "today", False))
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")

    def time_ratio(phase: str, arm: str, base: str) -> str | None:
        """The median (range) over rounds of ``arm``'s time over ``base``'s in ``phase``."""
        key = ("phase", "arm", "malloc_tuned")
        own = [r for r in rows if "carried_from" not in r]  # both sides from this run
        num = [r["seconds"] for r in own if tuple(r[k] for k in key) == (phase, arm, True)]
        den = [r["seconds"] for r in own if tuple(r[k] for k in key) == (phase, base, True)]
        if not num or len(num) != len(den) or None in num + den:
            return None
        ratios = [a / b for a, b in zip(num, den, strict=True)]
        return f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"

    # (phase, arm, base, what is timed, the arm's name in the sentence, the base's)
    timed = [
        ("eval@512", "today", "before",
         "Evaluation time (`evaluate_run`, validation split, 512 users per batch, 1 thread, "
         "rounds interleaved)", "today", "before"),
        ("eval@512", "any-shape", "today",
         "Evaluation time with its shapes not blocked (`evaluate_run` as above, rounds "
         "interleaved)", "not blocked", "today"),
        ("eval@512", "whole-ranks", "today",
         "Evaluation time with each batch ranked whole (`evaluate_run` as above, rounds "
         "interleaved)", "ranked whole", "today"),
        ("fit+val", "no-kernel-cache", "today",
         "Time of the fit+val phase (`train()`, rounds interleaved)",
         "without oneDNN's kernel cache", "today"),
    ]  # fmt: skip
    for phase, arm, base, what, arm_name, base_name in timed:
        if ratio := time_ratio(phase, arm, base):
            lines += [
                "",
                f"{what}: {base_name} {cell(phase, base, True, 'seconds')} s, {arm_name} "
                f"{cell(phase, arm, True, 'seconds')} s; ratio {arm_name} / {base_name}, "
                f"median of the rounds: {ratio}.",
            ]
    if primitives:
        counts = "; ".join(
            f"{phase}: today {primitives['today'][phase]}, not blocked "
            f"{primitives['any-shape'][phase]}"
            for phase in ("fit+val", "train")
        )
        lines += [
            "",
            "Distinct oneDNN primitives executed (each one cached with its JIT-compiled kernel; "
            f"`--primitives`, one run each with `ONEDNN_VERBOSE=1`): {counts}.",
        ]
    atomic_write_text(out / "memory.md", "\n".join(lines) + "\n")
    print(f"written {out / 'memory.md'}")


if __name__ == "__main__":
    main()
