"""Admission, bounded concurrency, deadlines and optional micro-batching for pipeline calls.

A request holds a `Ticket` from admission to its answer:
- it is admitted only while fewer than `max_queue` requests wait beyond what the free pipeline
  slots can take at once; otherwise 503 with Retry-After (`OverloadedError`);
- its deadline (`request_timeout_s`) runs from admission: body, decode, wait and pipeline call;
  when it passes the client gets 504 at once (`DeadlineExceededError`).

Pipeline calls run in a thread pool with exactly `max_concurrency` workers, never on the event
loop. A call holds its slot until its thread returns: a request that timed out stops waiting,
but the slot is freed only when the work it started really ends, so the number of running
calls never exceeds `max_concurrency` and a stuck call is visible as a held slot.

One dispatcher task hands waiting jobs to free slots. With `batch_window_ms` = 0 each call gets
one image; otherwise the dispatcher waits up to the window after the oldest waiting job (or
until `max_batch` are waiting) and sends them together to `estimate_many`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import numpy.typing as npt

from service.errors import ApiError
from service.metrics import Metrics
from service.request_id import REQUEST_ID
from service.results import PoseEstimator, PoseOptions, PoseResult

log = logging.getLogger(__name__)


class OverloadedError(ApiError):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            503,
            "overloaded",
            "too many requests waiting; retry later",
            headers={"Retry-After": str(retry_after_s)},
        )


class DeadlineExceededError(ApiError):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(504, "deadline_exceeded", f"no result within {timeout_s:g} s")


class PipelineError(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(500, "pipeline_error", message)


class ShuttingDownError(ApiError):
    def __init__(self) -> None:
        super().__init__(503, "shutting_down", "the service is shutting down")


@dataclass(frozen=True)
class Limits:
    max_concurrency: int
    max_queue: int
    timeout_s: float
    batch_window_s: float = 0.0  # 0: one image per pipeline call
    max_batch: int = 1

    @property
    def per_call(self) -> int:
        return self.max_batch if self.batch_window_s > 0 else 1


class Ticket:
    """A request's place in the queue, `images` places for a request with several images; it
    leaves the queue once (taken, or finished)."""

    def __init__(self, runner: PipelineRunner, images: int = 1) -> None:
        self._runner = runner
        self.images = images
        self.queued = True

    def leave_queue(self) -> None:
        if self.queued:
            self.queued = False
            self._runner.queued -= self.images


# eq=False: jobs are compared by identity. repr=False: the generated repr prints the image
# array; deque.remove puts the repr of a missing item into its ValueError, which cost every
# request about 0.5 ms before `run` stopped removing jobs that were already taken.
@dataclass(eq=False, repr=False)
class _Job:
    """One request's images; they go into one pipeline call together."""

    estimator: PoseEstimator
    items: list[tuple[npt.NDArray[np.uint8], PoseOptions]]
    ticket: Ticket
    future: asyncio.Future[list[PoseResult]]
    submitted: float = field(default_factory=time.monotonic)
    queue_ms: float = 0.0
    request_id: str = field(default_factory=REQUEST_ID.get)  # made in the request's task


def _ids(batch: list[_Job]) -> str:
    return ",".join(dict.fromkeys(job.request_id for job in batch))


class PipelineRunner:
    """Create and `start()` inside the running event loop (the app lifespan); `stop()` at exit."""

    def __init__(self, limits: Limits, metrics: Metrics | None = None) -> None:
        self.limits = limits
        self._metrics = metrics
        self.queued = 0  # admitted, not yet taken into a pipeline call
        self.running = 0  # pipeline calls whose thread has not returned
        self._pending: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(limits.max_concurrency)
        self._executor = ThreadPoolExecutor(limits.max_concurrency, thread_name_prefix="pose")
        self._call_s = 0.1  # running mean of a call's duration, for Retry-After
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._dispatch_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(ShuttingDownError())
        # A stuck call cannot be interrupted; do not wait for it here.
        self._executor.shutdown(wait=False, cancel_futures=True)

    @contextlib.asynccontextmanager
    async def admit(self, images: int = 1) -> AsyncIterator[Ticket]:
        """503 when full; otherwise a ticket whose deadline covers everything inside the block.
        A request with several images takes that many places in the queue."""
        free_slots = self.limits.max_concurrency - self.running
        room = self.limits.max_queue + max(free_slots, 0) * self.limits.per_call
        # the first request always fits, however many images it has
        if self.queued and self.queued + images > room:
            raise OverloadedError(self._retry_after_s())
        self.queued += images
        ticket = Ticket(self, images)
        try:
            async with asyncio.timeout(self.limits.timeout_s) as deadline:
                yield ticket
        except TimeoutError:
            if deadline.expired():
                raise DeadlineExceededError(self.limits.timeout_s) from None
            raise
        finally:
            ticket.leave_queue()

    async def run(
        self,
        ticket: Ticket,
        estimator: PoseEstimator,
        image: npt.NDArray[np.uint8],
        options: PoseOptions,
    ) -> tuple[PoseResult, float]:
        """The pose of one image and the ms it waited for the pipeline."""
        results, queue_ms = await self.run_many(ticket, estimator, [(image, options)])
        return results[0], queue_ms

    async def run_many(
        self,
        ticket: Ticket,
        estimator: PoseEstimator,
        items: list[tuple[npt.NDArray[np.uint8], PoseOptions]],
    ) -> tuple[list[PoseResult], float]:
        """The poses of several images, in one pipeline call, and the ms they waited for it."""
        job = _Job(estimator, items, ticket, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._wakeup.set()
        try:
            result = await job.future
        finally:  # on a deadline the job may still be waiting: take it out
            if job in self._pending:
                self._pending.remove(job)
        return result, job.queue_ms

    def _retry_after_s(self) -> int:
        waiting = self.queued + self.running
        return max(1, math.ceil(self._call_s * waiting / self.limits.max_concurrency))

    async def _dispatch_forever(self) -> None:
        while True:
            await self._wait_for_batch()
            await self._slots.acquire()
            batch = self._take_batch()
            if batch:
                self._launch(batch)
            else:  # every waiting job hit its deadline meanwhile
                self._slots.release()

    async def _wait_for_batch(self) -> None:
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        window = self.limits.batch_window_s
        if window <= 0:
            return
        close_at = self._pending[0].submitted + window
        while len(self._pending) < self.limits.max_batch:
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _take_batch(self) -> list[_Job]:
        batch: list[_Job] = []
        images = 0
        while self._pending:
            head = self._pending[0]
            if batch and (
                head.estimator is not batch[0].estimator  # only differs when tests swap it
                or images + len(head.items) > self.limits.per_call
            ):
                break
            job = self._pending.popleft()
            if not job.future.done():  # done = abandoned at its deadline
                job.ticket.leave_queue()
                batch.append(job)
                images += len(job.items)
        return batch

    def _launch(self, batch: list[_Job]) -> None:
        started = time.monotonic()
        for job in batch:
            job.queue_ms = (started - job.submitted) * 1000.0
        items = [item for job in batch for item in job.items]
        self.running += 1
        if self._metrics is not None:
            self._metrics.batch_size.observe(len(items))
        # the pipeline's own log lines carry the IDs of the requests in this call
        ctx = contextvars.copy_context()
        ctx.run(REQUEST_ID.set, _ids(batch))
        call = self._executor.submit(ctx.run, batch[0].estimator.estimate_many, items)
        done = asyncio.wrap_future(call)
        done.add_done_callback(partial(self._finish, batch, started))

    def _finish(
        self, batch: list[_Job], started: float, done: asyncio.Future[list[PoseResult]]
    ) -> None:
        self.running -= 1
        self._slots.release()
        self._call_s = 0.8 * self._call_s + 0.2 * (time.monotonic() - started)
        n = sum(len(job.items) for job in batch)
        outcome = _outcome(done, n)
        if isinstance(outcome, PipelineError):
            cause = done.exception()
            token = REQUEST_ID.set(_ids(batch))
            try:
                log.error("pipeline call on %d image(s): %s", n, outcome.message, exc_info=cause)
            finally:
                REQUEST_ID.reset(token)
        first = 0
        for job in batch:
            k = len(job.items)
            first += k
            if job.future.done():
                continue  # its request has gone (deadline); the result is dropped
            if isinstance(outcome, ApiError):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome[first - k : first])


def _outcome(done: asyncio.Future[list[PoseResult]], n: int) -> list[PoseResult] | ApiError:
    if done.cancelled():
        return ShuttingDownError()
    exc = done.exception()
    if exc is not None:
        return PipelineError(f"the pipeline failed: {type(exc).__name__}")
    results = done.result()
    if len(results) != n:
        return PipelineError(f"the pipeline returned {len(results)} results for {n} images")
    return results
