"""Benchmark ``miir prepare`` end to end, as a user runs it.

Usage (from the repository root)::

    python bench/bench_prepare.py [--runs 5] [--text-runs 3] [--data ../shared/data/amazon-beauty]

Two cases, each run N times in a fresh process:

- ``no-text``: ``miir prepare DATA --out TMPDIR/art --no-text --overwrite``
- ``text``:    ``miir prepare DATA --out TMPDIR/art --overwrite`` with ``MIIR_TEXT_CACHE=0`` (the
  title encoder runs every time; nothing is read from or written to the text cache).

How it measures: every run starts a small Python wrapper process, which starts the ``miir``
command, waits for it, and reports (a) the wall time of the command (``time.perf_counter``
around ``subprocess.run``: interpreter start, imports, reading, preparing and writing all
included; the wrapper's own start is not) and (b) the peak resident memory of the command,
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` read in the wrapper after the command ended.
On Linux that is the largest peak RSS of any process the wrapper waited for, i.e. of this one
run only, because each run has its own wrapper.

Results go to ``bench/results/prepare.json`` (every run, the machine, the commit, versions) and
``bench/results/prepare.md`` (a short table), both written to a temporary name and then renamed.
Target: under 10 s median without text on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from miir.provenance import header_line, run_record, write_result

REPO = Path(__file__).resolve().parents[1]
TARGET_NO_TEXT_S = 10.0
TARGET_CORES = 2

# Runs one command, prints {"wall_s": ..., "maxrss_kib": ..., "rc": ...} as JSON on stdout.
WRAPPER = r"""
import json, resource, subprocess, sys, time
log = open(sys.argv[1], "wb")
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT).returncode
wall = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
if sys.platform == "darwin":
    rss //= 1024  # bytes there, KiB on Linux
print(json.dumps({"wall_s": wall, "maxrss_kib": rss, "rc": rc}))
"""


# ----------------------------------------------------------------------------- environment


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("miir", "polars", "torch", "numpy", "sentence-transformers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def find_miir(explicit: str | None) -> str:
    if explicit:
        return explicit
    beside = Path(sys.executable).with_name("miir")  # the CLI of this interpreter's environment
    if beside.exists():
        return str(beside)
    found = shutil.which("miir")
    if not found:
        sys.exit(
            "cannot find the 'miir' command: activate the project's environment or pass --miir"
        )
    return found


# ----------------------------------------------------------------------------- running


def run_once(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(log), *cmd],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        sys.exit(f"wrapper failed:\n{res.stderr}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out["rc"] != 0:
        tail = log.read_text(errors="replace")[-3000:]
        sys.exit(f"command failed (exit {out['rc']}): {shlex.join(cmd)}\n{tail}")
    return out


def bench_case(
    name: str, cmd: list[str], env: dict[str, str], runs: int, warmup: int, tmp: Path
) -> dict[str, Any]:
    log = tmp / f"{name}.log"
    for k in range(warmup):
        print(f"  {name}: warm-up {k + 1}/{warmup}", file=sys.stderr, flush=True)
        run_once(cmd, env, log)
    results = []
    for k in range(runs):
        r = run_once(cmd, env, log)
        print(
            f"  {name}: run {k + 1}/{runs}: {r['wall_s']:.2f} s, "
            f"peak RSS {r['maxrss_kib'] / 1024:.0f} MiB",
            file=sys.stderr,
            flush=True,
        )
        results.append(r)
    walls = [r["wall_s"] for r in results]
    rss = [r["maxrss_kib"] / 1024 for r in results]
    manifest = json.loads((tmp / "art" / "manifest.json").read_text(encoding="utf-8"))
    return {
        "command": shlex.join(cmd).replace(str(tmp), "TMPDIR"),  # exact, temp folder named TMPDIR
        "command_short": shlex.join(["miir", *cmd[1:]]).replace(str(tmp), "TMPDIR"),
        "env": {k: env[k] for k in ("MIIR_TEXT_CACHE",) if k in env},
        "runs": runs,
        "warmup_runs": warmup,
        "wall_s": {
            "median": statistics.median(walls),
            "min": min(walls),
            "max": max(walls),
            "all": walls,
        },
        "peak_rss_mib": {"max": max(rss), "median": statistics.median(rss), "all": rss},
        "counts": {k: manifest["counts"][k] for k in ("users", "items", "interactions")},
        "fields": sorted(manifest["fields"]),
    }


# ----------------------------------------------------------------------------- output


def target_verdict(report: dict[str, Any]) -> str:
    case = report["cases"].get("no-text")
    if case is None:
        return "not measured (no-text case skipped)"
    med = case["wall_s"]["median"]
    verdict = "MET" if med < TARGET_NO_TEXT_S else "MISSED"
    cores = report["machine"]["cores_usable"]
    note = (
        ""
        if cores == TARGET_CORES
        else f" (measured on {cores} cores, target is for {TARGET_CORES})"
    )
    return f"{verdict}: median {med:.2f} s vs target < {TARGET_NO_TEXT_S:.0f} s{note}"


def markdown(report: dict[str, Any]) -> list[str]:
    m, v = report["machine"], report["versions"]
    lines = [
        "# `miir prepare` benchmark",
        "",
        f"- {header_line(report)}",
        f"- data: `{report['data']}`; {m['cores_usable']} usable cores, {m['ram_mib']} MiB RAM",
        f"- versions: python {v['python']}, torch {v['torch']}, polars {v['polars']}, "
        f"numpy {v['numpy']}, sentence-transformers {v['sentence-transformers']}",
        f"- method: {report['method']}",
        "",
        "| case | command | runs | median s | min s | max s | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, c in report["cases"].items():
        env = " ".join(f"{k}={val}" for k, val in c["env"].items())
        cmd = f"{env} {c['command_short']}".strip()
        w = c["wall_s"]
        lines.append(
            f"| {name} | `{cmd}` | {c['runs']} | {w['median']:.2f} | {w['min']:.2f} | "
            f"{w['max']:.2f} | {c['peak_rss_mib']['max']:.0f} |"
        )
    lines += [
        "",
        f"Target (no text, {TARGET_CORES} CPU cores): < {TARGET_NO_TEXT_S:.0f} s — "
        f"{report['target']['verdict']}",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/amazon-beauty", help="source folder")
    ap.add_argument("--runs", type=int, default=5, help="runs without text (default 5)")
    ap.add_argument("--text-runs", type=int, default=3, help="runs with text (default 3; 0 skips)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed runs before each case")
    ap.add_argument("--format", default=None, help="passed to 'miir prepare --format' if given")
    ap.add_argument("--miir", default=None, help="the miir executable (default: this env's)")
    ap.add_argument("--results-dir", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    if args.runs < 0 or args.text_runs < 0 or args.runs + args.text_runs == 0:
        ap.error("nothing to run")

    data = Path(args.data)
    if not data.exists():
        ap.error(f"data folder not found: {data}")
    miir = find_miir(args.miir)
    extra = ["--format", args.format] if args.format else []
    report = run_record(
        benchmark="miir prepare",
        data=str(args.data),
        versions=versions(),
        method="each run in a fresh wrapper process: wall = perf_counter around "
        "subprocess.run of the CLI; peak memory = getrusage(RUSAGE_CHILDREN).ru_maxrss "
        "of the wrapper after the run",
        cases={},
    )
    env_base = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp_name:
        tmp = Path(tmp_name)
        base = [miir, "prepare", str(data), *extra, "--out", str(tmp / "art")]
        cases = [
            ("no-text", [*base, "--no-text", "--overwrite"], {}, args.runs),
            ("text", [*base, "--overwrite"], {"MIIR_TEXT_CACHE": "0"}, args.text_runs),
        ]
        for name, cmd, env_extra, runs in cases:
            if runs == 0:
                continue
            print(f"{name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
            env = {**env_base, **env_extra}
            report["cases"][name] = bench_case(name, cmd, env, runs, args.warmup, tmp)
    report["target"] = {
        "no_text_median_s_below": TARGET_NO_TEXT_S,
        "cpu_cores": TARGET_CORES,
        "verdict": target_verdict(report),
    }

    out = Path(args.results_dir)
    write_result(out, "prepare", report, markdown(report))
    for name, c in report["cases"].items():
        w = c["wall_s"]
        print(
            f"{name:8s} median {w['median']:.2f} s (min {w['min']:.2f}, max {w['max']:.2f}, "
            f"{c['runs']} runs), peak RSS {c['peak_rss_mib']['max']:.0f} MiB"
        )
    print(
        f"target: no text < {TARGET_NO_TEXT_S:.0f} s on {TARGET_CORES} CPU cores -> "
        f"{report['target']['verdict']}"
    )
    print(f"wrote {out / 'prepare.json'} and {out / 'prepare.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
