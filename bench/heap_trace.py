"""What the heap holds through a short training (issue 9: peak training memory under 1 GB).

``bench/memory_run.py`` says how high a whole ``miir train`` goes and when; this says what the
memory is. It runs ``train()`` with the CLI's defaults on amazon-beauty (lean imports, as the
CLI; no final evaluation) in ``--reps`` fresh processes (medians reported) and, every ``--every`` training steps and at the start
and end of each validation pass, reads the resident size (``VmRSS``, ``VmHWM``) and glibc's
heap accounting (``mallinfo2``, over every arena): the bytes in use (live allocations: tensors,
arrays, oneDNN's cached kernels), the free bytes the heap keeps (``miir.runtime`` tells malloc to
keep them; they stay resident until the trim around each validation pass) and what is mapped
outside the heap. The resident size is about the heap's resident part plus ~205 MiB of code and
Python objects that glibc's heap does not hold.

Each ``--label`` is one record in ``--out`` (``heap_trace.json``, replaced when measured again),
and ``heap_trace.md`` tabulates them all. To compare with earlier code, run the same command
with that code first on the path (a worktree of its commit):

    python bench/heap_trace.py --epochs 3 --label today
    git worktree add /tmp/before 4943a1f
    PYTHONPATH=/tmp/before/src python bench/heap_trace.py --epochs 3 --label "before (4943a1f)"

Linux with glibc only (``/proc``, ``mallinfo2``, glibc 2.33 or later). One process per
trace: the peak of a process never goes down.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from childproc import run_child
from memory_run import status_mib

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("categories", "brand", "title")
MIB = 1 << 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes the heaps (every arena) hold, from the system
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes in blocks mapped outside the heap
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes in use
            "fordblks",  # free bytes kept in the heap
            "keepcost",  # of them, the releasable top
        )
    ]


def heap_mib() -> dict[str, float] | None:
    """glibc's heap accounting now, in MiB: ``in_use``, ``free`` (kept in the heap),
    ``heap`` (what the heaps hold), ``mapped`` (blocks outside them); None without
    ``mallinfo2``."""
    from miir.runtime import libc

    fn = getattr(libc(), "mallinfo2", None)
    if fn is None:
        return None
    fn.restype = _MallInfo2
    m = fn()
    return {
        "in_use": m.uordblks / MIB,
        "free": m.fordblks / MIB,
        "heap": m.arena / MIB,
        "mapped": m.hblkhd / MIB,
    }


def proc_mib() -> dict[str, float]:
    """``{"rss": VmRSS, "peak": VmHWM}`` of this process, in MiB."""
    got = status_mib(os.getpid())
    return {"rss": got["VmRSS"], "peak": got["VmHWM"]}


def sample(tag: str, start: float) -> dict[str, Any]:
    return {"tag": tag, "t": round(time.perf_counter() - start, 1), **proc_mib(), **heap_mib()}


def train_default(
    data: str, epochs: int, threads: int, seed: int, callback: Any, fields=FIELDS
) -> None:
    """Train the default MIIR (the CLI's defaults, no final evaluation) for exactly ``epochs``
    on ``data`` in this process, ``callback`` added to its Lightning trainer. Call
    ``miir.runtime.skip_unused_imports()`` first, as the CLI does."""
    import lightning as L

    from miir.models import model_config
    from miir.training.train import TrainConfig, train

    init = L.Trainer.__init__

    def with_callback(self, *args, callbacks=None, **kwargs) -> None:
        init(self, *args, callbacks=[*(callbacks or []), callback], **kwargs)

    L.Trainer.__init__ = with_callback
    try:
        cfg = TrainConfig(
            max_epochs=epochs, min_epochs=epochs, progress=False, seed=seed, threads=threads
        )
        with tempfile.TemporaryDirectory() as tmp:
            config = model_config("miir", {"fields": list(fields)})
            train(data, Path(tmp) / "run", "miir", config, cfg, stages=())
    finally:
        L.Trainer.__init__ = init


def trace(data: str, epochs: int, threads: int, every: int, seed: int) -> list[dict[str, Any]]:
    """Train the default MIIR for ``epochs`` on ``data`` in this process; the samples."""
    from miir.runtime import skip_unused_imports

    skip_unused_imports()  # as the CLI does
    import lightning as L

    start = time.perf_counter()
    samples = [sample("imports", start)]

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if batch_idx % every == 0:
                samples.append(sample(f"epoch {trainer.current_epoch} step {batch_idx}", start))

        def on_validation_epoch_start(self, trainer, module) -> None:
            samples.append(sample(f"epoch {trainer.current_epoch} validation start", start))

        def on_validation_epoch_end(self, trainer, module) -> None:
            samples.append(sample(f"epoch {trainer.current_epoch} validation end", start))

    train_default(data, epochs, threads, seed, Probe())
    samples.append(sample("end", start))
    return samples


def summarise(samples: list[dict[str, Any]]) -> dict[str, float]:
    """The peak, and the heap through training from the second epoch on (medians of the
    step samples; the first epoch creates most of oneDNN's kernels)."""
    steps = [s for s in samples if " step " in s["tag"]]
    later = [s for s in steps if not s["tag"].startswith("epoch 0 ")] or steps
    return {
        "peak_mib": max(s["peak"] for s in samples),
        "imports_rss_mib": samples[0]["rss"],
        "imports_in_use_mib": samples[0]["in_use"],
        "first_step_in_use_mib": steps[0]["in_use"] if steps else float("nan"),
        "train_rss_mib": median(s["rss"] for s in later),
        "train_in_use_mib": median(s["in_use"] for s in later),
        "train_free_mib": median(s["free"] for s in later),
    }


def table(records: dict[str, Any]) -> str:
    lines = [
        "# What the heap holds through a short training (`bench/heap_trace.py`)",
        "",
        "`train()` with the CLI's defaults on amazon-beauty in one process (lean imports, no final "
        "evaluation), sampled every few training steps and around each validation pass: resident "
        "size and glibc's heap accounting (`mallinfo2`, every arena). In use: live allocations; "
        "free: freed memory the heap keeps (resident until the trim around each validation pass). "
        "Training columns: medians of the step samples from the second epoch on; every column the "
        "median over fresh processes. MiB.",
        "",
        "| label | epochs | threads | runs | peak, median (min-max) | imports: RSS / in use "
        "| in use after step 1 "
        "| training: RSS / in use / free | commit | command |",
        "|---|---:|---:|---:|---|---|---:|---|---|---|",
    ]
    for label, r in records.items():
        s = r["summary"]
        peaks = r.get("peaks") or [s["peak_mib"]]
        lines.append(
            f"| {label} | {r['epochs']} | {r['threads']} | {r.get('reps', 1)} | {s['peak_mib']:.0f}"
            f" ({min(peaks):.0f}-{max(peaks):.0f}) "
            f"| {s['imports_rss_mib']:.0f} / {s['imports_in_use_mib']:.0f} "
            f"| {s['first_step_in_use_mib']:.0f} "
            f"| {s['train_rss_mib']:.0f} / {s['train_in_use_mib']:.0f} / "
            f"{s['train_free_mib']:.0f} | {str(r.get('commit'))[:10]} | `{r['command']}` |"
        )
    return "\n".join(lines) + "\n"


#: one trace in a fresh process (:func:`childproc.run_child`): argv data, epochs, threads, every, seed
CHILD = r"""
import json, sys
sys.path.insert(0, "bench")
from heap_trace import trace
data, epochs, threads, every, seed = sys.argv[1], *map(int, sys.argv[2:])
print("RESULT " + json.dumps({"samples": trace(data, epochs, threads, every, seed)}))
"""


def child(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One trace in a fresh process: its samples."""
    argv = [args.data, *map(str, (args.epochs, args.threads, args.every, args.seed))]
    return run_child(CHILD, *argv, env={"OMP_NUM_THREADS": str(args.threads)})["samples"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="artifacts/beauty")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every", type=int, default=20, help="Sample every this many steps.")
    ap.add_argument("--seed", type=int, default=42, help="The CLI's default seed.")
    ap.add_argument("--reps", type=int, default=3, help="Fresh processes (medians reported).")
    ap.add_argument("--label", default="today")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "heap_trace"))
    args = ap.parse_args()
    if heap_mib() is None:
        raise SystemExit("heap_trace needs glibc's mallinfo2 (Linux, glibc 2.33 or later)")
    from miir.provenance import git_commit, run_record

    commit = git_commit()  # the code on the path (a worktree's under PYTHONPATH)
    runs = [child(args) for _ in range(args.reps)]
    summaries = [summarise(r) for r in runs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "heap_trace.json"
    records = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    import miir

    records[args.label] = run_record(
        **commit,
        miir_source=str(Path(miir.__file__).parent),
        pythonpath=os.environ.get("PYTHONPATH"),
        epochs=args.epochs,
        threads=args.threads,
        reps=args.reps,
        summary={k: median(s[k] for s in summaries) for k in summaries[0]},
        peaks=[s["peak_mib"] for s in summaries],
        summaries=summaries,
        samples=runs,
    )
    from miir.atomic import atomic_json, atomic_write_text

    atomic_json(path, records)
    atomic_write_text(out / "heap_trace.md", table(records))
    print(table({args.label: records[args.label]}))


if __name__ == "__main__":
    main()
