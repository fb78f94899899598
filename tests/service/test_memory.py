"""glibc's malloc settings of the service (service.memory)."""

from __future__ import annotations

import resource

import numpy as np
import pytest

from service.memory import MMAP_THRESHOLD_BYTES, _libc, tune_malloc


def _faults_of_repeated_buffers(nbytes: int, times: int) -> int:
    """Minor page faults of allocating, filling and freeing one buffer `times` times."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        buf = np.empty(nbytes, np.uint8)
        buf.fill(1)
        del buf
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(_libc() is None, reason="glibc only")
def test_a_buffer_freed_every_request_keeps_its_pages() -> None:
    # below the mmap threshold, so from the heap: with glibc's 128 kB trim threshold each free
    # gave its pages back and each fill faulted them in again (768 faults per 3 MB buffer)
    assert tune_malloc()
    nbytes = 3 * 1024 * 1024
    assert nbytes < MMAP_THRESHOLD_BYTES
    _faults_of_repeated_buffers(nbytes, 2)  # the heap grows once
    pages = nbytes // 4096
    faults = _faults_of_repeated_buffers(nbytes, 20)
    assert faults < pages, f"{faults} page faults for 20 buffers of {pages} pages"
