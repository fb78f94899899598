"""A memory budget for decoded images (`SCIO_DECODE_MEMORY_MB`).

Every image's decode cost is estimated from its header before a pixel is decoded
(`service.imageio.decode_cost_bytes`: pixels x what Pillow holds per pixel for its mode, alpha
and 16-bit included, plus the RGB array). A request holds its images' cost from before decoding
until its answer: while the decode runs the whole estimate, afterwards the size of the RGB arrays
the pipeline still reads. A request whose images do not fit waits for others to finish (within
its deadline: 504); one that could never fit, alone, is refused with 413.

Decoding runs on this budget's own threads, except that of a small image (`inline_bytes`; the
service: `INLINE_DECODE_BYTES`), which runs on the event loop: handing it to a thread and back
cost nearly as much as decoding it (a 256x256 JPEG, `decode_ms` in the service: 1.17 ms on a
thread, 0.81 inline, on 2 cores). When a request gives up (its deadline), a decode already
running on a thread cannot be interrupted: its hold is released only when the thread really
ends, so the gauges (`scio_pose_decode_bytes_held`, `scio_pose_decodes_running`) show abandoned
work until it is gone, and the budget stays a real bound on memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from service.errors import ApiError
from service.memory import trim

T = TypeVar("T")
MB = 1024 * 1024
TRIM_AFTER_BYTES = 64 * MB  # a decode this large returns the heap's free memory afterwards
# A decode whose estimated cost is at most this runs on the event loop: a JPEG up to about 0.1
# megapixels (320x320 costs 7.3 MB and decodes in about 1 ms on a 2-core EPYC)
INLINE_DECODE_BYTES = 8 * MB


def _then_trim(fn: Callable[[], T], trim_after: bool) -> T:
    try:
        return fn()
    finally:
        if trim_after:
            trim()


class DecodeBudget:
    """Create inside the running event loop; `close()` at exit."""

    def __init__(self, total_bytes: int, threads: int, inline_bytes: int = 0) -> None:
        self.total = total_bytes
        self.inline_bytes = inline_bytes  # holds this small decode on the event loop
        self.held = 0
        self.running = 0  # decode threads that have not returned
        self._changed = asyncio.Condition()
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="decode")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @contextlib.asynccontextmanager
    async def hold(self, cost: int) -> AsyncIterator[Hold]:
        """Hold `cost` bytes for the block (waiting while they are not free)."""
        if cost > self.total:
            raise ApiError(
                413,
                "image_too_large_to_decode",
                f"decoding needs about {cost // MB} MB, more than the service's decode budget "
                f"of {self.total // MB} MB (SCIO_DECODE_MEMORY_MB)",
            )
        async with self._changed:
            await self._changed.wait_for(lambda: self.held + cost <= self.total)
            self.held += cost
        h = Hold(self, cost)
        try:
            yield h
        finally:
            h.request_done()

    async def run(self, hold: Hold, fn: Callable[[], T]) -> T:
        """`fn()` on a decode thread (`hold` stays held until the thread returns), or here when
        the hold is at most `inline_bytes`."""
        if hold.bytes <= self.inline_bytes:
            return fn()
        loop = asyncio.get_running_loop()
        hold.threads += 1
        self.running += 1
        future = self._executor.submit(_then_trim, fn, hold.bytes >= TRIM_AFTER_BYTES)

        def finished(_: object) -> None:
            loop.call_soon_threadsafe(hold.thread_done)

        future.add_done_callback(finished)
        return await asyncio.wrap_future(future)

    def _release(self, n: int) -> None:
        self.held -= n

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())


class Hold:
    """Bytes one request holds; released when the request is done and its threads are."""

    def __init__(self, budget: DecodeBudget, cost: int) -> None:
        self._budget = budget
        self.bytes = cost
        self.threads = 0
        self._request_open = True

    def shrink(self, to_bytes: int) -> None:
        """The decode is over: keep only what is still in use (the RGB arrays)."""
        if 0 <= to_bytes < self.bytes:
            self._budget._release(self.bytes - to_bytes)
            self.bytes = to_bytes

    def thread_done(self) -> None:
        self.threads -= 1
        self._budget.running -= 1
        self._maybe_release()

    def request_done(self) -> None:
        self._request_open = False
        self._maybe_release()

    def _maybe_release(self) -> None:
        if not self._request_open and self.threads == 0 and self.bytes:
            self._budget._release(self.bytes)
            self.bytes = 0
