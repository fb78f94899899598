"""Prometheus metrics, one `CollectorRegistry` per app (tests create many apps; the global
registry would refuse the second). Exposed on `GET /metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.results import PoseResult

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64)
_PIXELS = (0.5, 1, 2, 4, 8, 16, 32)
_PROBABILITY = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "scio_pose_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "scio_pose_http_request_duration_seconds",
            "Time to answer, by route",
            ["route"],
            buckets=_SECONDS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "scio_pose_stage_duration_seconds",
            "Time per pipeline stage (from timings_ms)",
            ["stage"],
            buckets=_SECONDS,
            registry=r,
        )
        self.in_flight = Gauge(
            "scio_pose_pipeline_calls_in_flight", "Pipeline calls running", registry=r
        )
        self.queue_depth = Gauge(
            "scio_pose_queue_depth",
            "Images waiting for the pipeline (/pose/batch: each image)",
            registry=r,
        )
        self.batch_size = Histogram(
            "scio_pose_batch_size", "Images per pipeline call", buckets=_BATCH, registry=r
        )
        self.rejections = Counter(
            "scio_pose_rejections", "Requests refused, by reason", ["reason"], registry=r
        )
        self.decode_bytes = Gauge(
            "scio_pose_decode_bytes_held",
            "Bytes of the decode budget held (decoding, or decoded images awaiting the pipeline)",
            registry=r,
        )
        self.decodes_running = Gauge(
            "scio_pose_decodes_running",
            "Decode threads running (a request that gave up shows until its thread ends)",
            registry=r,
        )
        self.model_ready = Gauge("scio_pose_model_ready", "1 when /health/ready is 200", registry=r)
        self.scio_keypoints = Counter(
            "scio_pose_scio_keypoints",
            "Distal keypoints SCIO examined, by whether its move was kept",
            ["accepted"],
            registry=r,
        )
        self.scio_displacement = Histogram(
            "scio_pose_scio_displacement_pixels",
            "Distance SCIO moved each examined keypoint from the backbone's position (image px;"
            " the SCL prior moves keypoints even when the search's own move is not kept)",
            buckets=_PIXELS,
            registry=r,
        )
        self.person_confidence = Histogram(
            "scio_pose_person_confidence",
            "Calibrated confidence of each answered person the detector found (where the bundle"
            " calibrates one): a shift of this distribution is a shift of the images served",
            buckets=_PROBABILITY,
            registry=r,
        )
        self.scio_acceptance = Gauge(
            "scio_pose_scio_acceptance_ratio",
            "Accepted / examined SCIO moves since start",
            registry=r,
        )
        self._examined = 0
        self._accepted = 0
        self.scio_acceptance.set_function(lambda: self._accepted / max(self._examined, 1))

    def bind(
        self,
        *,
        ready: Callable[[], bool],
        in_flight: Callable[[], int],
        queued: Callable[[], int],
        decode_bytes: Callable[[], int] = lambda: 0,
        decodes_running: Callable[[], int] = lambda: 0,
    ) -> None:
        """Read the live gauges from the app's state at scrape time (no duplicated counters)."""
        self.decode_bytes.set_function(lambda: float(decode_bytes()))
        self.decodes_running.set_function(lambda: float(decodes_running()))
        self.model_ready.set_function(lambda: float(ready()))
        self.in_flight.set_function(lambda: float(in_flight()))
        self.queue_depth.set_function(lambda: float(queued()))

    def observe_result(self, result: PoseResult, extra_ms: dict[str, float]) -> None:
        for key, ms in {**result.timings_ms, **extra_ms}.items():
            self.stage_seconds.labels(key.removesuffix("_ms")).observe(ms / 1000.0)
        for person in result.persons:
            if person.confidence is not None:
                self.person_confidence.observe(person.confidence)
            for ref in person.refinements:
                self._examined += 1
                self.scio_keypoints.labels(str(ref.accepted).lower()).inc()
                self.scio_displacement.observe(ref.displacement_px)
                if ref.accepted:
                    self._accepted += 1

    def count_error(self, status: int, code: str) -> None:
        if 400 <= status < 500 or status in (503, 504):
            self.rejections.labels(code).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetricsMiddleware:
    """Pure ASGI middleware: count every HTTP answer by route template, method and status."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, fixed_paths: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.metrics = metrics
        # routes that are not API routes (FastAPI's /docs, /redoc, /openapi.json leave no
        # route in the scope): counted under their own path rather than "unmatched"
        self.fixed_paths = fixed_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before answering
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            if isinstance(route, BaseRoute) and hasattr(route, "path"):
                name = route.path
            elif scope.get("path") in self.fixed_paths:
                name = scope["path"]
            else:
                name = "unmatched"
            self.metrics.requests.labels(name, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(name).observe(time.perf_counter() - start)
