"""Scoring latency of a run: PyTorch (``model.score``) against its ONNX export in onnxruntime.

    python bench/bench_export.py --run RUN [--repeats 200] [--threads 1] [--out bench/results]
    python bench/bench_export.py --run RUN --quick        # smoke test, into a temporary folder

The run's best checkpoint is exported with :func:`miir.export.export_run` (into a temporary
folder, or ``--export DIR`` reuses an export). Requests are real histories where the run's
artifact is there (its users' test histories, right-aligned, with their padding), else random
ones of random lengths. Two request shapes, each timed ``--repeats`` times after a warm-up,
on the same histories for both engines, the engines alternating per request so that a
change in the machine's load hits both alike:

- ``single``: one user's history (batch 1), the latency a service sees per request;
- ``batch64``: 64 users' histories at once.

Reported per shape and engine: the median and the 90th percentile in milliseconds, and the
median per user. PyTorch runs under ``torch.inference_mode`` and cuts the padding a batch
shares (:func:`~miir.models.batch.trim_left_padding`); the ONNX graph always scores the full
width (see :mod:`miir.export`). Both use ``--threads`` threads.

Records the command, the commit, the date and :func:`miir.runtime.machine_info`; writes
``export.json`` and ``export.md`` atomically into ``--out`` (``--quick``: a temporary folder
unless ``--out`` is given; its numbers are not results).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from miir.data.artifact import Artifact
from miir.export import INPUT, OUTPUT, export_run, ort_session
from miir.provenance import header_line, run_record, write_result
from miir.training.checkpoint import load_checkpoint
from miir.training.data import eval_rows

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"single": 1, "batch64": 64}


def request_pool(meta: dict[str, Any], model: Any, seed: int) -> tuple[torch.Tensor, str]:
    """(U, history_len) histories to draw requests from, and where they came from."""
    path = (meta.get("artifact") or {}).get("path")
    if path and Path(path).exists():
        artifact = Artifact(path)
        if artifact.n_items == model.n_items:
            return eval_rows(
                artifact, "test", model.config.max_len
            ).history, f"test histories of {path}"
    g = torch.Generator().manual_seed(seed)
    n = model.history_len
    pool = torch.randint(2, model.n_items + 2, (4096, n), generator=g)
    lengths = torch.randint(1, n + 1, (4096,), generator=g)
    pool[torch.arange(n)[None] < (n - lengths)[:, None]] = 0
    return pool, "random histories of random lengths"


def time_ms(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def measure(model: Any, session: Any, pool: torch.Tensor, repeats: int, seed: int) -> dict:
    """Per shape and engine: latencies (ms) over ``repeats`` requests, after a warm-up."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for shape, batch in SHAPES.items():
        requests = [pool[rng.choice(len(pool), batch, replace=False)] for _ in range(repeats)]
        arrays = [r.numpy() for r in requests]

        def torch_call(r: torch.Tensor) -> None:
            with torch.inference_mode():
                model.score(r)

        def ort_call(a: np.ndarray) -> None:
            session.run([OUTPUT], {INPUT: a})

        for r, a in zip(requests[:5], arrays[:5], strict=True):  # warm-up
            torch_call(r)
            ort_call(a)
        times: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
        for i, (r, a) in enumerate(zip(requests, arrays, strict=True)):
            order = [("pytorch", r), ("onnxruntime", a)]
            for engine, x in order if i % 2 == 0 else order[::-1]:
                call = torch_call if engine == "pytorch" else ort_call
                times[engine].append(time_ms(lambda call=call, x=x: call(x)))
        out[shape] = {
            engine: {
                "median_ms": statistics.median(t),
                "p90_ms": float(np.percentile(t, 90)),
                "median_ms_per_user": statistics.median(t) / batch,
                "repeats": len(t),
            }
            for engine, t in times.items()
        }
        out[shape]["batch"] = batch
        out[shape]["speedup_median"] = (
            out[shape]["pytorch"]["median_ms"] / out[shape]["onnxruntime"]["median_ms"]
        )
    return out


def markdown(rec: dict[str, Any]) -> list[str]:
    lines = [
        "# Scoring latency: PyTorch against the ONNX export (onnxruntime)",
        "",
        f"{header_line(rec)}; onnxruntime {rec['onnxruntime']}, {rec['threads']} thread(s) "
        "for each engine.",
        f"Model: {rec['model']['display_name']} ({rec['model']['name']}), "
        f"{rec['model']['n_items']:,} items, history {rec['model']['history_len']}; "
        f"run `{rec['run']}`. Requests: {rec['requests']}.",
        "",
        "| request | engine | median ms | p90 ms | median ms per user | PyTorch / ONNX |",
        "|---|---|---|---|---|---|",
    ]
    for shape, res in rec["results"].items():
        for engine in ("pytorch", "onnxruntime"):
            r = res[engine]
            ratio = f"{res['speedup_median']:.2f}x" if engine == "onnxruntime" else ""
            lines.append(
                f"| {shape} (batch {res['batch']}) | {engine} | {r['median_ms']:.2f} | "
                f"{r['p90_ms']:.2f} | {r['median_ms_per_user']:.3f} | {ratio} |"
            )
    lines += [
        "",
        "Medians over the repeats, the two engines alternating request by request on the same "
        "histories. PyTorch cuts the padding a batch shares; the ONNX graph scores the full "
        "width. " + (rec.get("note") or ""),
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="Run folder of `miir train`.")
    ap.add_argument("--export", type=Path, help="An existing export of the run (else made now).")
    ap.add_argument("--repeats", type=int, default=200, help="Requests timed per shape.")
    ap.add_argument("--threads", type=int, default=1, help="Threads of each engine.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="Folder for export.json and export.md.")
    ap.add_argument("--quick", action="store_true", help="Smoke test: 20 repeats, temp folder.")
    ap.add_argument("--note", default="", help="A sentence for the Markdown (e.g. the load).")
    args = ap.parse_args(argv)
    repeats = 20 if args.quick else args.repeats
    out = args.out or (Path(tempfile.mkdtemp()) if args.quick else ROOT / "bench" / "results")
    torch.set_num_threads(args.threads)
    model, meta = load_checkpoint(args.run / "best")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.export or Path(tmp) / "export"
        if args.export is None:
            export_run(args.run, folder)
        session = ort_session(folder / "model.onnx", args.threads)
        pool, source = request_pool(meta, model, args.seed)
        results = measure(model, session, pool, repeats, args.seed)
    import onnxruntime

    rec = run_record(
        benchmark="export",
        onnxruntime=onnxruntime.__version__,
        threads=args.threads,
        quick=args.quick,
        run=str(args.run),
        model={
            "name": meta.get("model"),
            "display_name": model.display_name(),
            "n_items": model.n_items,
            "history_len": model.history_len,
        },
        requests=source,
        results=results,
        note=args.note,
    )
    write_result(out, "export", rec, markdown(rec))
    print(f"wrote {out / 'export.json'} and {out / 'export.md'}")


if __name__ == "__main__":
    main()
