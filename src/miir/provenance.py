"""Where a measurement came from: the command, the commit, the date and the machine.

Every benchmark record (``miir benchmark``'s run records and the scripts under ``bench/``)
starts with the same header, written by :func:`run_record`, and every Markdown table under
``bench/results/`` opens with the line :func:`header_line` makes of it, so a number can always
be traced to the code and the machine that measured it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from miir.atomic import atomic_write_text


def git_commit() -> dict[str, Any]:
    """The commit of the miir checkout (and whether tracked files differ from it); ``None``
    for both outside a git checkout."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def machine() -> dict[str, Any]:
    """:func:`miir.runtime.machine_info` (CPU, cores, the flags that decide bf16 speed, torch
    and its threads, package versions) plus the GPU where there is one, the cores this process
    may use, memory, the load average at the time of the call, the platform and Python."""
    import torch

    from miir.runtime import machine_info

    info = machine_info()
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info["cores_usable"] = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    info["ram_mib"] = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        info["ram_mib"] = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    info["load_avg"] = None
    with contextlib.suppress(OSError, AttributeError):
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    info["platform"] = platform.platform()
    info["python"] = platform.python_version()
    return info


def machine_line(m: dict[str, Any]) -> str:
    """The machine in a sentence: CPU, cores, flags, torch (and the GPU where there is one)."""
    flags = ", ".join(m.get("flags") or []) or "none of note"
    bf16 = "native" if m.get("native_bf16") else "emulated"
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (
        f"{m.get('cpu')}, {m.get('cores')} cores ({m.get('torch_threads')} torch threads), "
        f"CPU flags: {flags} (bf16 {bf16}), torch {m.get('torch')}{gpu}"
    )


def run_record(command: str | None = None, **fields: Any) -> dict[str, Any]:
    """A record's header (the command, by default this process's as run; the commit and
    whether the tree was dirty; the date; the machine) followed by ``fields``, which may
    replace any of them."""
    # a script that read the commit before its runs (the code measured) passes it
    code = (
        {"commit": fields.pop("commit"), "dirty": fields.pop("dirty", None)}
        if "commit" in fields
        else git_commit()
    )
    return {
        "command": command or shlex.join(["python", *sys.argv]),
        **code,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        # a script that read the machine itself (before a server started, say) passes it
        "machine": fields.pop("machine") if "machine" in fields else machine(),
        **fields,
    }


def commit_label(record: dict[str, Any]) -> str:
    """``abcdef1234`` or ``abcdef1234 (dirty)`` from a record (older records kept the commit
    under ``git``)."""
    git = record.get("git") or record
    commit = git.get("commit")
    return (commit or "no commit")[:10] + (" (dirty)" if git.get("dirty") else "")


def header_line(record: dict[str, Any]) -> str:
    """The sentence a results table opens with: command, commit, date and machine."""
    return (
        f"`{record['command']}` at {commit_label(record)}, {record['date']}, "
        f"{machine_line(record['machine'])}"
    )


def write_result(out: Path, stem: str, record: dict[str, Any], lines: list[str]) -> None:
    """``<out>/<stem>.json`` (the record) and ``<out>/<stem>.md`` (``lines``), each written
    atomically; the table is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.json", json.dumps(record, indent=1))
    atomic_write_text(out / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
