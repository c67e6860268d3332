"""glibc malloc settings for processes that allocate large, short-lived numpy arrays.

Why: scoring a batch allocates dozens of temporaries of a few MB each ((512, 4, 168) float64
is 2.75 MB). glibc serves blocks above its mmap threshold with fresh mappings and hands free
memory at the top of the heap back to the kernel above its trim threshold, so every batch's
temporaries arrive as new pages, each zero-filled by the kernel on first touch (a page fault
per 4 KiB). That was a fifth of the scoring core's CPU on the sustained benchmark's population
(``bench/scoring_core.py``, best of 15 calls, batch 512: ``Scorer.score_windows`` 169-178 ->
137-142 us per video; 267-274 -> 224-262 on simulated videos with real texture). Keeping freed
memory in the heap lets the next batch reuse pages that are already mapped.

Either setting alone is worse than none (measured): a trim threshold alone freezes the mmap
threshold at 128 KiB, so every large block is mapped afresh; an mmap threshold alone lets the
heap grow and shrink every batch. The cost is memory: the heap keeps up to ``keep_mb`` MB of
free memory after a batch (a scoring process then stays at its peak working set, ~150 MB at
batch 512, instead of shrinking between batches).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("stream_detector.malloc_policy")

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
TOP_PAD_MAX = 64 * 1024 * 1024


def apply(keep_mb: int) -> bool:
    """Serve blocks up to 32 MB from the heap and keep up to ``keep_mb`` MB of free memory in
    it. ``keep_mb`` 0 keeps glibc's defaults. False where there is no glibc ``mallopt`` (other
    C libraries: nothing changes) or glibc refused a value."""
    if keep_mb <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    keep = min(keep_mb, 2047) * 1024 * 1024
    done = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (M_TRIM_THRESHOLD, keep), (M_TOP_PAD, min(keep, TOP_PAD_MAX))))
    log.info("malloc: heap keeps up to %d MB free, blocks up to %d MB from the heap (%s)", keep_mb,
             MMAP_THRESHOLD_MAX // (1024 * 1024), "applied" if done else "refused by the C library")
    return done
