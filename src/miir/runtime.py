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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc malloc for this process (once); returns whether the tuning is active."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("MIIR_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # no mmap for large blocks, and never trim the heap's top below 1 GiB of free memory
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _applied
