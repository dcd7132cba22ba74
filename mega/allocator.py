"""The C allocator's settings for a training process on the CPU.

glibc's malloc serves every allocation above its mmap threshold (128 KiB, rising to at most
32 MiB as such blocks are freed) with a fresh ``mmap`` and gives it back with ``munmap`` when
freed. A joint step at long hair's size makes and frees dozens of [4, 34,000, 256] tensors (70 MB
each): every one was new memory, and the kernel zero-filled each of its pages on first touch,
about a fifth of the step (docs/benchmarks.md). With the threshold and the trim threshold raised,
freed blocks stay in the heap and later steps reuse them (within a few steps: until then the
small blocks torch allocates beside a large one may split it; resident memory then stays level):
the same numbers, the same peak memory within a few per cent, a faster step (docs/benchmarks.md).
torch's CPU performance guides recommend the same through jemalloc or tcmalloc, which the project
does not install; glibc's own settings need no package and no preloading.

The settings are the process's: :func:`reuse_freed_memory` is called once, by the ``mega``
command, before any work. A user who tunes the allocator already (``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` in the environment, or another allocator through ``LD_PRELOAD``) keeps
their choice; ``MEGA_REUSE_FREED_MEMORY=0`` leaves glibc's defaults.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""mallopt's parameter numbers (glibc's malloc.h)."""

REUSE_THRESHOLD_BYTES = 1 << 30
"""Blocks up to 1 GiB come from the heap and freed memory up to 1 GiB stays in it: above every
tensor of an embedded subject's step, far below this machine's memory."""


def _user_tunes_the_allocator() -> bool:
    preload = os.environ.get("LD_PRELOAD", "")
    return (any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))
            or any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")))


def reuse_freed_memory(threshold_bytes: int = REUSE_THRESHOLD_BYTES) -> bool:
    """Keep freed memory in glibc's heap for reuse instead of returning it to the kernel (see the
    module's docstring). Whether the settings were applied: False on another C library or
    system, where the user tunes the allocator, or with ``MEGA_REUSE_FREED_MEMORY=0``."""
    if os.environ.get("MEGA_REUSE_FREED_MEMORY", "1") == "0" or _user_tunes_the_allocator():
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; an older glibc refuses thresholds above 32 MiB.
    applied = bool(mallopt(M_MMAP_THRESHOLD, threshold_bytes)) and bool(mallopt(M_TRIM_THRESHOLD, threshold_bytes))
    if not applied:
        log.debug("glibc refused an mmap/trim threshold of %d bytes; its defaults stay", threshold_bytes)
    return applied
