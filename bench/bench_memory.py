"""Peak resident memory of MIIR training and evaluation on amazon-beauty, phase by phase
(issue 9's goal: peak training memory under 1 GB).

Each phase runs in a fresh process (peak RSS, ``ru_maxrss``, is per process and never goes
down), with glibc malloc tuned (``miir.runtime.keep_freed_memory``, the default) and untuned
(``MIIR_MALLOC_TUNING=0``):

- ``imports``: ``import miir.training.train`` (torch, Lightning, and what they import);
- ``setup``: + the artifact, the model and the training windows;
- ``steps``: + N plain training steps (the model's loss, backward, Adam; no Lightning);
- ``fit``: ``train()`` for ``--steps`` batches and one validation batch, no final evaluation;
- ``fit+val``: the same with the whole validation split (as every real epoch);
- ``train``: ``fit+val`` followed by the final evaluation (valid and test) in the same
  process, as ``miir train`` runs it;
- ``eval``: ``evaluate_run`` on the validation split at two evaluation batch sizes.

Memory does not depend on how busy the cores are, so this runs beside other work.

    python bench/bench_memory.py --data artifacts/beauty
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("categories", "brand", "title")

CHILD = r"""
import json, resource, sys
import torch
torch.set_num_threads(1)
phase, data, steps, run = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
from miir.training.train import TrainConfig, build_model, evaluate_run, train
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
    from miir.models import model_config
    cfg = TrainConfig(max_epochs=1, min_epochs=1, limit_train_batches=steps,
                      limit_val_batches=1 if phase == "fit" else None, threads=1,
                      progress=False, seed=1)
    train(data, run, "miir", model_config("miir", {"fields": FIELDS}), cfg, overwrite=True,
          stages=("valid", "test") if phase == "train" else ())
    out[phase] = peak()
elif phase.startswith("eval"):
    evaluate_run(run, stages=("valid",), eval_batch_size=int(phase.split("@")[1]))
    out[phase] = peak()
print("RESULT " + json.dumps(out))
""".replace("FIELDS", repr(FIELDS))


def run_phase(phase: str, data: str, steps: int, run: str, tuned: bool) -> dict[str, float]:
    env = {**os.environ, "MIIR_MALLOC_TUNING": "1" if tuned else "0"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, phase, data, str(steps), run],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"phase {phase} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="artifacts/beauty")
    ap.add_argument("--steps", type=int, default=30, help="Training steps per phase.")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    from miir.atomic import atomic_json, atomic_write_text
    from miir.benchmark import git_commit
    from miir.runtime import machine_info

    phases = ["imports", "setup", "steps", "fit", "fit+val", "eval@512", "eval@128", "train"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = str(Path(tmp) / "run")
        for tuned in (True, False):
            for phase in phases:
                got = run_phase(phase, args.data, args.steps, run, tuned)
                rows.append({"phase": phase, "malloc_tuned": tuned, "peak_mib": got[phase]})
                print(f"{phase:10s} tuned={tuned!s:5s} peak {got[phase]:7.0f} MiB", flush=True)
    record = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **git_commit(),
        "machine": machine_info(),
        "data": args.data,
        "steps": args.steps,
        "rows": rows,
    }
    out = Path(args.out)
    atomic_json(out / "memory.json", record)
    by = {(r["phase"], r["malloc_tuned"]): r["peak_mib"] for r in rows}
    lines = [
        "# Peak resident memory of MIIR training and evaluation (issue 9: under 1 GB)",
        "",
        f"`python bench/{record['command']}` at {str(record.get('commit'))[:10]}, "
        f"{record['date']}; MIIR default recipe, fields {', '.join(FIELDS)}, batch 128, "
        f"{args.steps} steps, 1 thread. Each phase is a fresh process; peak RSS (`ru_maxrss`) "
        "includes the phases before it.",
        "",
        "| phase | peak MiB, malloc tuned (default) | peak MiB, `MIIR_MALLOC_TUNING=0` |",
        "|---|---:|---:|",
    ]
    for phase in phases:
        lines.append(f"| {phase} | {by[(phase, True)]:.0f} | {by[(phase, False)]:.0f} |")
    atomic_write_text(out / "memory.md", "\n".join(lines) + "\n")
    print(f"written {out / 'memory.md'}")


if __name__ == "__main__":
    main()
