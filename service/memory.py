"""Giving freed memory back to the system after a burst of large images (glibc only; a no-op
elsewhere).

glibc serves allocations below its mmap threshold from per-thread heaps and keeps what is freed
there for reuse; the threshold also grows on its own after large blocks are freed, up to 32 MB.
Pillow decodes into blocks of a few MB on the decode threads, so after four 36-megapixel PNGs
the process kept about 0.7 GB it no longer used (measured, tests/service/test_hostile.py).
`tune_malloc` fixes the threshold at 4 MB (large buffers are mapped and unmapped directly, as
image-sized buffers should be), and `trim` returns the heaps' free tops after a large decode.

Fixing the mmap threshold also fixes glibc's trim threshold at its default, 128 kB: a heap whose
free top grows past it is shrunk at once. Every request frees its crops, network inputs and
outputs (a few MB below the mmap threshold), so each one gave the pages back and took them again
(measured, stop 23's demo bundle: 600 page faults per one-person `/pose`, 2,500 for five persons;
stop 24's, 3,720 for five). `tune_malloc` keeps 16 MB of free top per heap instead (the faults of
a 1-, 5- or 20-person request stop falling at that value: 89, 447, 1,940 with stop 23's bundle;
5 persons 224 with stop 24's, 7 ms of 147); the explicit `trim` after a large decode is
unaffected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers in glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 16 * 1024 * 1024


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018  (glibc's; musl and macOS have none)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds (process-wide); False where there is no glibc."""
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    ok &= bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    log.debug(
        "malloc thresholds fixed: mmap %d, trim %d bytes: %s",
        MMAP_THRESHOLD_BYTES,
        TRIM_THRESHOLD_BYTES,
        ok,
    )
    return ok


def trim() -> None:
    """Return free heap memory to the system (glibc's malloc_trim)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
