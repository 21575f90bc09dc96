"""Peak resident memory of whole `miir train` runs, sampled through the run (issue 9's goal:
peak training memory under 1 GB, for a whole default run and not only for the 30 steps that
``bench_memory.py`` measures phase by phase).

Each repetition runs the command in a fresh process and reads its ``VmRSS`` and ``VmHWM``
(the peak so far) from ``/proc/<pid>/status`` every ``--every`` seconds, so the record shows
not only the peak but when it was reached: the trace (every 10 s) and each moment the peak
rose by 5 MiB or more. The default command is the README's default training on
amazon-beauty, as a user runs it (progress bar on, two threads):

    python bench/memory_run.py --reps 3
    python bench/memory_run.py --reps 2 --label "2 epochs" -- --epochs 2 --min-epochs 2

Arguments after ``--`` are added to the default command. ``--env KEY=VALUE`` (repeatable)
sets environment variables for an arm (for example ``ONEDNN_PRIMITIVE_CACHE_CAPACITY=128``);
arms given with ``--arm LABEL:KEY=VALUE,...`` run interleaved within each repetition, so their
times compare as a ratio. Each label's record lands in ``--out`` (``memory_run.json``: one entry
per label, replaced when measured again) and ``memory_run.md`` is written from all of them.
Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MIIR = shutil.which("miir", path=str(Path(sys.executable).parent)) or shutil.which("miir") or "miir"
DEFAULT = ["train", "--data", "artifacts/beauty", "--fields", "categories,brand,title"]


def status_mib(pid: int) -> dict[str, float]:
    """{"VmRSS": MiB, "VmHWM": MiB} of a live process ({} once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            lines = [x for x in f if x.startswith(("VmRSS", "VmHWM"))]
    except OSError:
        return {}
    return {k: int(v.split()[0]) / 1024 for k, v in (x.split(":", 1) for x in lines)}


def trace(cmd: list[str], env: dict[str, str], every: float, log: Path) -> dict[str, Any]:
    """Run ``cmd`` and sample its memory until it exits: the peak, the wall time, the trace
    every 10 s and the rises of the peak (stops naming ``log`` if the command fails). The peak
    is the kernel's own (``ru_maxrss`` of the reaped process), so a spike between two samples
    or in the last half second is not missed; the samples say when the peak rose."""
    start = time.perf_counter()
    samples: list[tuple[float, float, float]] = []
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
        while True:
            got = status_mib(proc.pid)
            if got:
                samples.append((time.perf_counter() - start, got["VmRSS"], got["VmHWM"]))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(every)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here, not by Popen
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}); its output: {log}")
    every_10s, rises, next_t, last_peak = [], [], 0.0, 0.0
    for t, rss, hwm in samples:
        if t >= next_t:
            every_10s.append([round(t), round(rss), round(hwm)])
            next_t += 10
        if hwm >= last_peak + 5:
            rises.append([round(t, 1), round(hwm)])
            last_peak = hwm
    return {
        "peak_mib": round(usage.ru_maxrss / 1024),  # kB on Linux
        "peak_source": "ru_maxrss",
        "seconds": round(wall, 1),
        "trace_10s": every_10s,
        "peak_rises": rises,
    }


def run_summary(run: Path) -> dict[str, Any]:
    """What the traced run trained to, so that arms and runs compare as the same training: the
    epochs, the best epoch, the training seconds and the test NDCG@10 under each protocol
    (``results.json`` and the CSV log of a finished ``miir train``; {} where absent)."""
    path = run / "results.json"
    if not path.is_file():
        return {}
    res = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, Any] = {
        "best_epoch": {k: v.get("epoch") for k, v in res.get("stages", {}).items()},
        "train_seconds": round(res.get("train_seconds", 0.0), 1),
        "test_ndcg10": {p: round(m["NDCG@10"], 4) for p, m in res.get("test", {}).items()},
    }
    for log in sorted(run.glob("logs/*/metrics.csv")):
        lines = log.read_text(encoding="utf-8").splitlines()
        epochs = {line.split(",", 1)[0] for line in lines[1:] if line}
        out.setdefault("epochs", {})[log.parent.name] = len(epochs)
    return out


def parse_env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def write_table(out: Path, records: dict[str, Any]) -> None:
    from miir.atomic import atomic_write_text

    lines = [
        "# Whole-run peak memory (`bench/memory_run.py`)",
        "",
        "Peak resident memory (`VmHWM`) of `miir train` processes, sampled every half second "
        "through the run; each row a label, its median over fresh processes and the spread. "
        "Time ratios compare arms measured in the same command only. The peak is the "
        "kernel's (`ru_maxrss` of the finished process); rows marked * took it as the largest "
        "sampled `VmHWM` (before that change; a spike in the last half second would be "
        "missed).",
        "",
        "| label | arm | runs | peak MiB, median (min-max) | seconds, median | command | commit "
        "| CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, rec in records.items():
        for arm, runs in rec["arms"].items():
            peaks = [r["peak_mib"] for r in runs]
            secs = [r["seconds"] for r in runs]
            spread = f" ({min(peaks)}-{max(peaks)})" if len(peaks) > 1 else ""
            sampled = "*" if any("peak_source" not in r for r in runs) else ""
            lines.append(
                f"| {label} | {arm} | {len(runs)} | {median(peaks):.0f}{spread}{sampled} | "
                f"{median(secs):.0f} | `{rec['command']}` | {str(rec['commit'])[:10]} | "
                f"{rec.get('machine', {}).get('cpu', '-')} |"
            )
    lines.append("")
    for label, rec in records.items():
        arms = list(rec["arms"])
        if len(arms) > 1:
            base = median(r["seconds"] for r in rec["arms"][arms[0]])
            ratios = ", ".join(
                f"{a} {median(r['seconds'] for r in rec['arms'][a]) / base:.2f}x" for a in arms[1:]
            )
            lines.append(f"- {label}: time against {arms[0]}: {ratios} (same command).")
        for arm, runs in rec["arms"].items():
            for r in runs:
                if r.get("run"):
                    lines.append(f"- {label}, {arm}: trained {json.dumps(r['run'])}")
                rises = ", ".join(f"{t:.0f} s: {m}" for t, m in r["peak_rises"] if m > 800)
                lines.append(f"- {label}, {arm}: peak rises above 800 MiB at {rises or '-'}")
    lines.append("")
    atomic_write_text(out / "memory_run.md", "\n".join(lines))


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reps", type=int, default=3, help="Fresh processes per arm (median).")
    ap.add_argument("--label", default="default run", help="Name of this record.")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for every arm.")
    ap.add_argument(
        "--arm",
        action="append",
        default=[],
        help="LABEL:KEY=VALUE,... an arm beside 'as is' (interleaved within each repetition).",
    )
    ap.add_argument("--every", type=float, default=0.5, help="Seconds between samples.")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory_run"))
    args = ap.parse_args(argv)

    from miir.atomic import atomic_json
    from miir.provenance import git_commit, run_record

    commit = git_commit()  # the code measured (read before the runs)
    common = parse_env(args.env)
    arms = {"as is": common}
    for spec in args.arm:
        name, _, pairs = spec.partition(":")
        arms[name] = {**common, **parse_env(pairs.split(","))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [MIIR, *DEFAULT, "--out", str(Path(tmp) / "run"), "--overwrite", *extra]
        for rep in range(args.reps):
            for arm, env in arms.items():
                got = trace(
                    cmd,
                    env,
                    args.every,
                    out / f"last-{len(results[arm])}-{list(arms).index(arm)}.log",
                )
                got["run"] = run_summary(Path(tmp) / "run")
                results[arm].append(got)
                print(
                    f"{args.label} · {arm} · rep {rep}: peak {got['peak_mib']} MiB, "
                    f"{got['seconds']:.0f} s, {got['run']}",
                    flush=True,
                )
    for log in out.glob("last-*.log"):
        log.unlink()
    path = out / "memory_run.json"
    records = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    records[args.label] = run_record(
        **commit,  # the code measured, not the code at the end
        miir=" ".join(["miir", *DEFAULT, "--out RUN --overwrite", *extra]),
        env={a: e for a, e in arms.items()},
        arms=results,
    )
    atomic_json(path, records)
    write_table(out, records)


if __name__ == "__main__":
    main()
