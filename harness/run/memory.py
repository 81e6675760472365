"""Keep freed memory in the process for the next training step (glibc malloc on Linux).

By default glibc gives memory back to the kernel: freed space at the top of a heap beyond a trim
threshold is released, and allocations above the mmap threshold (adjusted at run time, at most
32 MiB) get fresh mappings that are unmapped on ``free``. A CPU training step allocates and frees
hundreds of MB of activations, gradients and logits of varying sizes every step, so part of it is
page-faulted in (and zeroed by the kernel) again at every step. Raising both thresholds to 1 GiB
keeps that memory in the process for reuse. Measured on the offline default (SmolLM2-135M, 2 CPU
cores, the same 12 batches, processes alternating with and without): minor page faults per step
11-14k -> 6k, seconds per step 1.19-1.22 -> 1.02-1.04.

This is what PyTorch's CPU performance guide gets from preloading jemalloc or tcmalloc, done with
the C library the process already has. The cost: the process keeps its peak heap after a step instead
of returning it to the system between steps.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's <malloc.h>
THRESHOLD = 1 << 30
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds to :data:`THRESHOLD` once per process.

    Returns whether the setting is in effect (False on other C libraries and systems, where nothing
    is changed)::

        >>> keep_freed_memory() in (True, False)
        True
    """
    global _applied
    if _applied is None:
        _applied = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, THRESHOLD))
            except (OSError, AttributeError) as e:  # no mallopt in this C library
                log.debug("malloc thresholds left as they were: %s", e)
    return _applied
