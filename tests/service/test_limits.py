"""Admission (503 + Retry-After), deadlines (504, slots freed), micro-batching, and health and
metrics staying fast while the pipeline is busy."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
from fastapi.testclient import TestClient

from service.limits import PipelineRunner
from service.state import ServiceState
from tests.service.fakes import FakeEstimator
from tests.service.support import png_of, post_image, rgb_pattern, serve

PNG = png_of(rgb_pattern(32, 24))


def _runner(client: TestClient) -> PipelineRunner:
    state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
    assert state.runner is not None
    return state.runner


def _until(cond: Callable[[], bool], timeout_s: float = 3.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


def _timed_get(client: TestClient, path: str) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    r = client.get(path)
    return r, time.perf_counter() - start


def test_full_queue_is_503_with_retry_after_while_health_stays_fast() -> None:
    fake = FakeEstimator(delay_s=5.0)
    with serve(fake, max_concurrency=1, max_queue=1) as client, ThreadPoolExecutor(2) as pool:
        runner = _runner(client)
        first = pool.submit(post_image, client, PNG)
        _until(lambda: runner.running == 1)
        second = pool.submit(post_image, client, PNG)
        _until(lambda: runner.queued == 1)

        third = post_image(client, PNG)
        assert third.status_code == 503
        assert int(third.headers["retry-after"]) >= 1
        assert third.json()["error"]["code"] == "overloaded"
        for path in ("/health/live", "/health/ready", "/metrics"):
            r, seconds = _timed_get(client, path)
            assert r.status_code == 200, path
            assert seconds < 1.0, (path, seconds)  # the pipeline call takes 5 s
        metrics = client.get("/metrics").text
        assert "scio_pose_queue_depth 1.0" in metrics
        assert "scio_pose_pipeline_calls_in_flight 1.0" in metrics
        assert 'scio_pose_rejections_total{reason="overloaded"} 1.0' in metrics

        fake.release.set()
        assert first.result().status_code == 200
        assert second.result().status_code == 200
        assert post_image(client, PNG).status_code == 200  # capacity is back


def test_deadline_is_504_and_slots_are_freed_when_the_work_ends() -> None:
    fake = FakeEstimator(delay_s=5.0)
    with serve(fake, max_concurrency=1, max_queue=4, request_timeout_s=0.3) as client:
        runner = _runner(client)
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(post_image, client, PNG)
            _until(lambda: runner.running == 1)
            start = time.perf_counter()
            waiting = post_image(client, PNG)  # queued behind the stuck call
            assert waiting.status_code == 504
            assert time.perf_counter() - start < 1.0
            assert running.result().status_code == 504
        assert waiting.json()["error"]["code"] == "deadline_exceeded"
        # The requests have gone, the stuck call still holds its slot, nothing is queued.
        assert (runner.running, runner.queued) == (1, 0)
        assert not runner._pending  # the timed-out request's job left the queue with it
        fake.release.set()
        _until(lambda: runner.running == 0)
        assert post_image(client, PNG).status_code == 200
        assert fake.batches == [1, 1]  # the request that timed out in the queue never ran
        metrics = client.get("/metrics").text
        assert 'scio_pose_rejections_total{reason="deadline_exceeded"} 2.0' in metrics


def _concurrently(client: TestClient, images: list[bytes]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(images)) as pool:
        futures: list[Future[httpx.Response]] = [
            pool.submit(post_image, client, img) for img in images
        ]
        return [f.result() for f in futures]


def test_micro_batching_sends_waiting_requests_in_one_call() -> None:
    fake = FakeEstimator()
    images = [png_of(rgb_pattern(20 + i, 10 + i)) for i in range(3)]
    # a full batch goes at once; the long window only makes the test robust on a busy machine
    with serve(fake, batch_window_ms=1000, max_batch=3) as client:
        responses = _concurrently(client, images)
        assert fake.batches == [3]
        # each request got its own image's result back
        assert [(r.json()["width"], r.json()["height"]) for r in responses] == [
            (20, 10),
            (21, 11),
            (22, 12),
        ]
        assert "scio_pose_batch_size_sum 3.0" in client.get("/metrics").text


def test_micro_batches_are_capped_at_max_batch() -> None:
    fake = FakeEstimator()
    with serve(fake, batch_window_ms=500, max_batch=2, max_concurrency=1) as client:
        start = time.perf_counter()
        responses = _concurrently(client, [PNG] * 3)
        elapsed = time.perf_counter() - start
    assert all(r.status_code == 200 for r in responses)
    assert sorted(fake.batches) == [1, 2]
    assert elapsed >= 0.5  # the one left over waited for its window to close


def test_without_a_window_every_call_has_one_image() -> None:
    fake = FakeEstimator(delay_s=0.05)
    with serve(fake, batch_window_ms=0, max_batch=8, max_concurrency=1) as client:
        responses = _concurrently(client, [PNG] * 3)
    assert all(r.status_code == 200 for r in responses)
    assert fake.batches == [1, 1, 1]
