"""Giving freed memory back to the system after a burst of large images (glibc only; a no-op
elsewhere).

glibc serves allocations below its mmap threshold from per-thread heaps and keeps what is freed
there for reuse; the threshold also grows on its own after large blocks are freed, up to 32 MB.
Pillow decodes into blocks of a few MB on the decode threads, so after four 36-megapixel PNGs
the process kept about 0.7 GB it no longer used (measured, tests/service/test_hostile.py).
`tune_malloc` fixes the threshold at 4 MB (large buffers are mapped and unmapped directly, as
image-sized buffers should be), and `trim` returns the heaps' free tops after a large decode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024


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
    """Fix glibc's mmap threshold (process-wide); False where there is no glibc."""
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    log.debug("malloc mmap threshold fixed at %d bytes: %s", MMAP_THRESHOLD_BYTES, ok)
    return ok


def trim() -> None:
    """Return free heap memory to the system (glibc's malloc_trim)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
