"""The malloc tuning: large freed blocks are reused instead of page-faulted in again, and\nhanded back to the system on request (around each evaluation pass)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CHILD = r"""
import resource, sys, torch
from miir.runtime import keep_freed_memory
active = keep_freed_memory()
for _ in range(10):
    torch.ones(16 * 1024 * 1024)  # 64 MiB, allocated and freed (glibc settles within a few rounds)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 * 1024 * 1024)
print(int(active), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(tuning: str) -> tuple[bool, int]:
    env = {**os.environ, "MIIR_MALLOC_TUNING": tuning}
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "1", int(out[1])


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only"
)
def test_freed_large_blocks_are_reused() -> None:
    off_active, off_faults = faults("0")
    on_active, on_faults = faults("1")
    assert not off_active and on_active
    # untuned: every 64 MiB block is a fresh mmap, 16,384 page faults each
    assert off_faults > 20 * 10_000
    assert on_faults < off_faults / 20


RELEASE = r"""
import sys, torch
from miir.runtime import keep_freed_memory, release_freed_memory
def rss():
    line = next(x for x in open("/proc/self/status") if x.startswith("VmRSS"))
    return int(line.split()[1]) // 1024
active = keep_freed_memory()
keep = torch.ones(1024)
blocks = [torch.ones(8 * 1024 * 1024) for _ in range(8)]  # 8 x 32 MiB
tail = torch.ones(1024)  # allocated after the blocks: the heap's top is not free
del blocks
kept = rss()
released = release_freed_memory()
print(int(active), int(released), kept, rss())
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only"
)
def test_release_hands_kept_memory_back() -> None:
    def run(tuning: str) -> list[int]:
        env = {**os.environ, "MIIR_MALLOC_TUNING": tuning}
        return [
            int(x)
            for x in subprocess.run(
                [sys.executable, "-c", RELEASE],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
        ]

    active, released, kept, after = run("1")
    assert active and released
    assert kept - after > 200  # MiB: the 256 MiB of freed blocks the tuned heap kept
    active, released, _, _ = run("0")
    assert not active and not released  # untuned: nothing to do (glibc unmapped the blocks)


LEAN = r"""
import json, sys
from miir.runtime import skip_unused_imports
active = skip_unused_imports()
import lightning.pytorch
from lightning_utilities.core.imports import RequirementCache, package_available
loaded = [m for m in ("scipy.signal", "matplotlib.pyplot", "transformers") if m in sys.modules]
import scipy.stats  # miir's own imports are not affected
print(json.dumps({"active": active, "loaded": loaded, "torchmetrics": "torchmetrics" in sys.modules,
                  "torch": bool(RequirementCache("torch>=2.0")), "numpy": package_available("numpy"),
                  "scipy_seen": bool(RequirementCache("scipy"))}))
"""


def lean_child(setting: str) -> dict:
    env = {**os.environ, "MIIR_LEAN_IMPORTS": setting}
    out = subprocess.run(
        [sys.executable, "-c", LEAN], env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_lightning_is_imported_without_what_torchmetrics_would_load() -> None:
    """Lightning imports torchmetrics, whose import loads scipy.signal, matplotlib.pyplot and
    transformers (all installed with miir): the CLI's skip_unused_imports keeps them out, and
    the other availability checks answer as before."""
    lean = lean_child("1")
    assert lean["active"] and lean["torchmetrics"]
    assert lean["loaded"] == []
    assert lean["torch"] and lean["numpy"] and not lean["scipy_seen"]
    full = lean_child("0")  # turned off: the checks are untouched (with torchmetrics 1.9 the
    assert not full["active"] and full["scipy_seen"]  # three modules load then)


def test_training_and_serving_do_not_import_the_data_readers_stack() -> None:
    """Polars (about 25 MiB resident) is for reading raw data: `miir train`, `evaluate` and
    `serve` read prepared NumPy/JSON artifacts and never load it (issue 9's memory goal)."""
    code = (
        "import sys\n"
        "import miir.cli, miir.training.train, miir.evaluation.evaluate, miir.serve\n"
        "import miir.recommender, miir.inference, miir.data.artifact\n"
        "print(sorted(m for m in ('polars', 'pyarrow') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"
    # and the readers still work where a format is read (polars imported on demand)
    import polars as pl

    from miir.data.schema import FieldKind, infer_schema

    schema = infer_schema(pl.DataFrame({"item_id": ["a"], "tags": [["x", "y"]]}))
    assert schema.fields[0].kind == FieldKind.MULTI_CATEGORICAL
