"""Keep large CPU buffers in the heap between iterations (glibc malloc).

PyTorch's CPU allocator hands every buffer straight to ``malloc``.  glibc serves buffers
above its mmap threshold (128 KiB, raised dynamically to at most 32 MiB) with fresh ``mmap``
pages and unmaps them on free, so every iteration page-faults its large activations again:
at batch 32, 224x224 that is ~10-15 % of EnFormer's CPU eval time on one core
(``docs/benchmarks.md``).  :func:`tune_malloc` raises the mmap and trim thresholds so freed
buffers stay in the heap and are reused.  The cost: the process keeps its peak heap (plus
``trim_threshold``) instead of returning freed memory to the system.  A no-op where glibc's
``mallopt`` is not available.  (Setting ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
/ ``MALLOC_TOP_PAD_`` in the environment before start-up does the same.)
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_malloc(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 30,
                top_pad: int = 256 << 20) -> bool:
    """Raise glibc's mmap/trim thresholds (bytes); True when every setting was accepted."""
    name = ctypes.util.find_library('c')
    try:
        mallopt = ctypes.CDLL(name or 'libc.so.6').mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = [mallopt(_M_MMAP_THRESHOLD, mmap_threshold), mallopt(_M_TRIM_THRESHOLD, trim_threshold),
          mallopt(_M_TOP_PAD, top_pad)]
    return all(r == 1 for r in ok)
