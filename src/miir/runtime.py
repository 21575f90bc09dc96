"""Process-level settings for CPU training and evaluation.

glibc's ``malloc`` serves every allocation above its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and gives it back with ``munmap`` when freed. A MIIR training step allocates and
frees several tensors of that size (the item logits of the masked positions and their
gradients: about 1,300 x 12,000 floats on amazon-beauty), so every step page-faults on
hundreds of MiB of new zeroed pages: about 16,000 page faults and 26 ms of system time per
step, measured in ``bench/results/train.md``. :func:`keep_freed_memory` tells glibc to serve
large blocks from the heap and to keep freed memory for reuse instead, which is what a caching
allocator does on a GPU. The peak resident memory stays the same (freed memory is reused, not
accumulated); it is simply not handed back to the system between steps.

Set ``MIIR_MALLOC_TUNING=0`` to leave malloc alone. Without glibc (macOS, musl) this does
nothing.

:func:`skip_unused_imports` keeps ``import lightning`` from loading scipy.signal,
matplotlib.pyplot and transformers through torchmetrics (about 120 MiB of resident memory that
no miir process uses that way); the CLI calls it, ``MIIR_LEAN_IMPORTS=0`` turns it off.

:func:`resolve_precision` picks the training precision for ``auto``: bf16 autocast on a CPU
without native bf16 instructions (no ``avx512_bf16``/``amx_bf16``) emulates it and runs a
matmul about 13x slower than float32, so ``auto`` only picks bf16 where the hardware has it.
:func:`machine_info` records the machine for benchmark results.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import re
import sys
from typing import Any

from miir.errors import ConfigError

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied: bool | None = None


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The process's C library (None where it cannot be loaded)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Tune glibc malloc for this process (once); returns whether the tuning is active."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("MIIR_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # no mmap for large blocks, and never trim the heap's top below 1 GiB of free memory
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _applied


#: packages whose import Lightning's import of torchmetrics triggers, and that no part of miir
#: uses through torchmetrics (:func:`skip_unused_imports`)
UNUSED_VIA_TORCHMETRICS = frozenset({"scipy", "matplotlib", "transformers"})
_lean: bool | None = None


def _top_name(requirement: str) -> str:
    """``'transformers>=4.4.0'`` -> ``'transformers'``; ``'scipy.signal'`` -> ``'scipy'``."""
    return re.split(r"[\s<>=!~;\[.]", requirement.strip(), maxsplit=1)[0]


def skip_unused_imports() -> bool:
    """Keep ``import lightning`` from loading packages miir never uses through it (once per
    process, before Lightning is first imported); returns whether it is active.

    Lightning imports torchmetrics to read its version, and torchmetrics' import loads
    ``scipy.signal``, ``matplotlib.pyplot`` and ``transformers`` wherever they are installed
    (miir installs all three: its t-tests, its plots, and sentence-transformers): about 120 MiB
    of resident memory in every training and serving process, against issue 9's 1 GB goal
    (``bench/results/memory.md``). This makes the availability checks that torchmetrics
    runs (lightning_utilities' ``RequirementCache`` and ``package_available``) report those
    three as absent, so torchmetrics skips them; only its metrics that need them (audio,
    BERTScore, plots), which miir never calls, lose them. miir's own ``import scipy`` and
    ``import matplotlib`` are unaffected. The CLI calls it; a program that imports miir
    and uses those torchmetrics metrics itself should not. ``MIIR_LEAN_IMPORTS=0`` turns it
    off; once torchmetrics is imported it does nothing."""
    global _lean
    if _lean is not None:
        return _lean
    _lean = False
    if os.environ.get("MIIR_LEAN_IMPORTS", "1") == "0" or "torchmetrics" in sys.modules:
        return False
    try:
        from lightning_utilities.core import imports as lu

        check_available, package_available = (
            lu.RequirementCache._check_available,
            lu.package_available,
        )
    except (ImportError, AttributeError):
        return False

    def _check_available(self: Any) -> None:
        name = self.requirement or self.module or ""
        if not hasattr(self, "available") and _top_name(name) in UNUSED_VIA_TORCHMETRICS:
            self.available = False
            self.message = (
                f"{name!r} is not loaded through torchmetrics in miir (MIIR_LEAN_IMPORTS)"
            )
            return
        check_available(self)

    def _package_available(name: str) -> bool:
        return _top_name(name) not in UNUSED_VIA_TORCHMETRICS and package_available(name)

    lu.RequirementCache._check_available = _check_available
    lu.package_available = _package_available
    _lean = True
    return True


def release_freed_memory() -> bool:
    """Hand the freed memory that :func:`keep_freed_memory` keeps back to the system
    (``malloc_trim(0)``, which also returns free pages inside the heap); does nothing unless
    that tuning is active. Returns whether it ran.

    Called around each evaluation pass (a validation epoch, a final evaluation): evaluation
    allocates blocks of other sizes than training, in batches of growing history length, and
    the heap that keeps every freed block grows with the holes they leave (issue 9:
    ``bench/results/memory.md``). Once per pass costs nothing measurable; after every batch it
    bounds memory a little more but makes evaluation about 1.2x slower (page faults on the
    memory handed back), so it is not done."""
    if not _applied:
        return False
    trim = getattr(libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


# ---------------------------------------------------------------------------- precision

PRECISIONS = ("auto", "32-true", "bf16")
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma", "bf16")
_CPUINFO = "/proc/cpuinfo"


def _cpuinfo_field(*names: str) -> str | None:
    """The value of the first line of /proc/cpuinfo whose key is one of ``names``."""
    try:
        with open(_CPUINFO, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip() in names:
                    return value.strip()
    except OSError:
        return None
    return None


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (``flags`` on x86, ``Features`` on ARM); an
    empty set where there is no /proc/cpuinfo (macOS, Windows)."""
    value = _cpuinfo_field("flags", "Features")
    return set(value.split()) if value else set()


def native_bf16(device_type: str = "cpu") -> bool:
    """Whether ``device_type`` computes bf16 in hardware rather than emulating it."""
    if device_type == "cuda":
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type != "cpu":
        return False
    flags = cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device_type: str = "cpu") -> str:
    """``auto`` -> ``bf16`` where :func:`native_bf16`, else ``32-true``; ``32-true`` and
    ``bf16`` pass through."""
    if precision == "auto":
        return "bf16" if native_bf16(device_type) else "32-true"
    if precision in PRECISIONS:
        return precision
    allowed = ", ".join(f"'{p}'" for p in PRECISIONS)
    raise ConfigError(f"unknown precision {precision!r}; allowed: {allowed}")


def machine_info() -> dict[str, Any]:
    """What a benchmark result should record about the machine it ran on."""
    import torch

    flags = cpu_flags()
    cpu = _cpuinfo_field("model name") or platform.processor() or platform.machine()
    return {
        "cpu": cpu,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "flags": [f for f in RELEVANT_FLAGS if f in flags],
        "native_bf16": native_bf16("cpu"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "packages": package_versions(),
    }


#: the installed packages whose versions change what a benchmark measures (memory: what
#: Lightning's import loads; speed: oneDNN inside torch)
RECORDED_PACKAGES = (
    "lightning",
    "torchmetrics",
    "numpy",
    "polars",
    "scipy",
    "transformers",
    "sentence-transformers",
)


def package_versions() -> dict[str, str | None]:
    """name -> installed version (None where absent), read from the package metadata without
    importing anything."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
