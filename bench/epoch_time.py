"""Real training epochs of the default MIIR under each form of the full-softmax loss, or under
each of several versions of the code (issue 9: an epoch of about 14 s; a step timed alone is
not an epoch).

    python bench/epoch_time.py --forms recompute,keep --epochs 3 --reps 2
    python bench/epoch_time.py --revs c42e404,HEAD --epochs 3 --reps 2 --name epoch_time_revs

Each run is ``train()`` with the CLI's defaults on amazon-beauty (lean imports, as the CLI; no
final evaluation) in a fresh process, the loss swapped to one form of ``bench/bench_softmax.py``
(``unfused``, ``recompute``, ``keep``); the forms alternate within each repetition (the order
reversed every other one), so their times compare as ratios measured side by side. A Lightning
callback stamps each training epoch's start and end and each validation pass: an epoch is the
time from one training epoch's start to the next one's (its steps, Lightning's loop, the
validation pass, the checkpoint). The first epoch (oneDNN builds its kernels) is left out of
the medians. Writes ``epoch_time.json`` and ``epoch_time.md`` (``--name``) under ``--out``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from childproc import run_child

AS_IS = "as-is"  # the loss as the code imported has it (no form swapped): ``--revs``

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("categories", "brand", "title")


def run(
    data: str, epochs: int, threads: int, seed: int, form_name: str, fields: list[str]
) -> list[dict[str, float]]:
    """Train the default MIIR for ``epochs`` in this process under ``form_name``: per epoch, the
    seconds of its training loop, of its validation pass, and from its start to the next's."""
    from miir.runtime import skip_unused_imports

    skip_unused_imports()  # as the CLI does
    import lightning as L

    import miir.models.fields  # the modules whose loss the form swaps
    import miir.models.miir
    import miir.models.sasrec  # noqa: F401
    from bench_softmax import form
    from heap_trace import train_default

    stamps: list[tuple[str, int, float]] = []

    class Clock(L.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            stamps.append(("train_start", trainer.current_epoch, time.perf_counter()))

        def on_train_epoch_end(self, trainer, module) -> None:
            stamps.append(("train_end", trainer.current_epoch, time.perf_counter()))

        def on_validation_epoch_start(self, trainer, module) -> None:
            stamps.append(("valid_start", trainer.current_epoch, time.perf_counter()))

        def on_validation_epoch_end(self, trainer, module) -> None:
            stamps.append(("valid_end", trainer.current_epoch, time.perf_counter()))

        def on_train_end(self, trainer, module) -> None:
            stamps.append(("end", trainer.current_epoch, time.perf_counter()))

    if form_name == AS_IS:
        train_default(data, epochs, threads, seed, Clock(), fields)
    else:
        with form(form_name):
            train_default(data, epochs, threads, seed, Clock(), fields)
    return epoch_times(stamps)


def epoch_times(stamps: list[tuple[str, int, float]]) -> list[dict[str, float]]:
    """Per training epoch: ``train`` (from its start to its end: the steps, Lightning's work
    between them and the validation pass, which runs before the epoch's end), ``valid`` (the
    validation pass) and ``epoch_s`` (from its start to the next epoch's start, or to the end
    of training for the last). A sanity validation pass before the first epoch is left out."""
    starts = {e: t for kind, e, t in stamps if kind == "train_start"}
    ends = {e: t for kind, e, t in stamps if kind == "train_end"}
    valid: dict[int, float] = {}
    opened: dict[int, float] = {}
    for kind, e, t in stamps:
        if kind == "valid_start":
            opened[e] = t
        elif kind == "valid_end" and e in opened:
            begun = opened.pop(e)
            if e in starts and begun > starts[e]:  # not the sanity pass before training
                valid[e] = valid.get(e, 0.0) + t - begun
    finish = next((t for kind, _, t in reversed(stamps) if kind == "end"), None)
    out = []
    for e in sorted(starts):
        nxt = starts.get(e + 1, finish)
        out.append(
            {
                "epoch": e,
                "train": ends[e] - starts[e] if e in ends else float("nan"),
                "valid": valid.get(e, 0.0),
                "epoch_s": (nxt - starts[e]) if nxt is not None else float("nan"),
            }
        )
    return out


CHILD = r"""
import json, sys
sys.path.insert(0, "bench")
from epoch_time import run
data, form, fields, epochs, threads, seed = *sys.argv[1:4], *map(int, sys.argv[4:])
got = run(data, epochs, threads, seed, form, fields.split(","))
import miir
print("RESULT " + json.dumps({"epochs": got, "miir": miir.__file__}))
"""


def export_src(rev: str, into: Path) -> tuple[Path, str]:
    """``src/`` of git revision ``rev`` extracted under ``into`` -> (its folder, the commit);
    ``worktree``: the working tree's own ``src/`` (the commit: HEAD's, marked dirty if so)."""
    if rev == "worktree":
        from miir.provenance import git_commit

        c = git_commit()
        return ROOT / "src", f"{c.get('commit')}{'+dirty' if c.get('dirty') else ''}"
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tar = subprocess.run(
        ["git", "archive", commit, "src"], cwd=ROOT, capture_output=True, check=True
    )
    folder = into / commit[:12]
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as t:
        t.extractall(folder, filter="data")
    return folder / "src", commit


def summary(epochs: list[list[dict[str, float]]]) -> dict[str, float]:
    """Medians over every run's epochs after the first."""
    later = [e for run in epochs for e in run if e["epoch"] > 0]
    if not later:
        raise ValueError("no epoch after the first to time")
    out = {k: statistics.median(e[k] for e in later) for k in ("epoch_s", "train", "valid")}
    out["train_without_valid"] = statistics.median(e["train"] - e["valid"] for e in later)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="artifacts/beauty")
    ap.add_argument("--fields", default=",".join(FIELDS), help="MIIR's side fields.")
    ap.add_argument(
        "--forms", default=None, help="Comma-separated; first: baseline (recompute,keep)."
    )
    ap.add_argument(
        "--revs",
        default=None,
        help="Comma-separated git revisions of src/ (or worktree) instead of forms; first: "
        "baseline.",
    )
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42, help="The CLI's default seed.")
    ap.add_argument("--note", default="")
    ap.add_argument("--name", default="epoch_time")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    if args.forms and args.revs:
        ap.error("--forms or --revs, not both")
    if args.epochs < 2:
        ap.error("--epochs: at least 2 (the first is left out)")

    from miir.provenance import git_commit, header_line, run_record, write_result

    commit = git_commit()  # the code measured (read before the runs)
    # the exported revisions live as long as their runs, and go whatever happens
    with tempfile.TemporaryDirectory() as tmp:
        # variant label -> (form, PYTHONPATH entry or None, commit or None)
        variants: dict[str, tuple[str, str | None, str | None]] = {}
        if args.revs:
            for rev in args.revs.split(","):
                src, rev_commit = export_src(rev, Path(tmp))
                variants[rev] = (AS_IS, str(src), rev_commit)
        else:
            for f in (args.forms or "recompute,keep").split(","):
                variants[f] = (f, None, None)
        forms = list(variants)
        runs: dict[str, list[list[dict[str, float]]]] = {f: [] for f in forms}
        imported: dict[str, str] = {}
        for rep in range(args.reps):
            for f in forms if rep % 2 == 0 else list(reversed(forms)):
                form_name, path, _ = variants[f]
                argv = [args.data, form_name, args.fields]
                argv += [str(x) for x in (args.epochs, args.threads, args.seed)]
                env = {"OMP_NUM_THREADS": str(args.threads)}
                if path is not None:
                    env["PYTHONPATH"] = os.pathsep.join(
                        [path, *filter(None, [os.environ.get("PYTHONPATH")])]
                    )
                got = run_child(CHILD, *argv, env=env)
                runs[f].append(got["epochs"])
                imported[f] = got["miir"]
                print(f"rep {rep} · {f}: {json.dumps(got['epochs'])}", flush=True)
    sums = {f: summary(r) for f, r in runs.items()}
    base = forms[0]
    # per repetition, the ratio of the two forms' median later epoch (side by side)
    ratios = {
        f: statistics.median(
            statistics.median(e["epoch_s"] for e in a if e["epoch"] > 0)
            / statistics.median(e["epoch_s"] for e in b if e["epoch"] > 0)
            for a, b in zip(runs[f], runs[base], strict=True)
        )
        for f in forms
    }
    info = run_record(
        **commit,
        forms=forms,
        revs={f: c for f, (_, _, c) in variants.items()} if args.revs else None,
        miir_imported=imported,
        epochs=args.epochs,
        reps=args.reps,
        threads=args.threads,
        summary=sums,
        ratio_to_baseline=ratios,
        runs=runs,
        note=args.note,
    )
    kind = "code version" if args.revs else "softmax form"
    lines = [
        f"# Real training epochs of the default MIIR by {kind} (ratios to {base})",
        "",
        f"{header_line(info)}.",
        "",
        f"`train()` with the CLI's defaults on {args.data}, {args.epochs} epochs per run, "
        f"{args.reps} fresh processes per {kind}, alternated; medians over the epochs after the "
        f"first; {args.threads} threads. Epoch: one training epoch's start to the next's "
        "(steps, Lightning's loop, validation, checkpoint).",
        "",
        f"| {'revision (commit)' if args.revs else 'form'} | epoch s | training loop without "
        f"validation s | validation s | epoch ratio to {base} (median of the repetitions' "
        "ratios) |",
        "|---|---:|---:|---:|---:|",
    ]
    for f in forms:
        s = sums[f]
        label = f"{f} ({variants[f][2][:10]})" if args.revs else f
        lines.append(
            f"| {label} | {s['epoch_s']:.1f} | {s['train_without_valid']:.1f} | "
            f"{s['valid']:.1f} | {ratios[f]:.2f}x |"
        )
    if args.note:
        lines += ["", args.note]
    write_result(Path(args.out), args.name, info, lines)


if __name__ == "__main__":
    main()
