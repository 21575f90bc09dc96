"""Measurements in a fresh Python process, for the benchmarks that measure memory.

A process's peak resident memory (``VmHWM``, ``ru_maxrss``) never goes down, so each memory
measurement runs in its own process: the child is a snippet of Python run with ``python -c``,
which prints one line ``RESULT <json>``; :func:`run_child` runs it and returns that JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: defines ``mem()`` in a child: {"VmRSS": MiB now, "VmHWM": peak MiB} from /proc/self/status
PROC_MEMORY = r"""
def mem():
    d = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith(("VmRSS", "VmHWM")))
    return {k: int(v.split()[0]) / 1024 for k, v in d.items()}
"""


def child_process(
    code: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (repository root, one thread unless ``env`` says
    otherwise) with ``args`` as ``sys.argv[1:]``; its output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def run_child(code: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """:func:`child_process`, returning the JSON of its ``RESULT`` line, or stopping with its
    error output."""
    proc = child_process(code, *args, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"child run {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])
