"""The app factory. Importing this module loads no model and reads no settings.

`create_app(settings, estimator_factory)` builds the FastAPI app; its lifespan starts the
pipeline runner and loads the estimator **in the background**, so /health/live answers at once
while the bundle loads and warms up, and /health/ready turns 200 only after `warmup()`. If the
factory or the warm-up fails, the app keeps running, not ready, and /health/ready says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import warnings
from collections.abc import AsyncIterator, Callable
from typing import cast

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from PIL import Image

from service.api_docs import render_docs
from service.cli import _version
from service.decode_budget import INLINE_DECODE_BYTES, MB, DecodeBudget
from service.errors import install_error_handlers
from service.guards import DrainGuardMiddleware
from service.limits import Limits, PipelineRunner
from service.metrics import RequestMetricsMiddleware
from service.request_id import RequestIdMiddleware
from service.results import PoseEstimator
from service.routes import health, meta, pose
from service.settings import Settings, get_settings
from service.state import Phase, Readiness, ServiceState

log = logging.getLogger(__name__)

EstimatorFactory = Callable[[Settings], PoseEstimator]


def load_pipeline(settings: Settings) -> PoseEstimator:
    """The default factory: the ONNX Runtime pipeline, imported only when it is needed."""
    module = importlib.import_module("service.pipeline")
    loader = cast(EstimatorFactory, module.load_estimator)
    return loader(settings)


def create_app(
    settings: Settings | None = None, estimator_factory: EstimatorFactory | None = None
) -> FastAPI:
    settings = settings or get_settings()
    state = ServiceState(settings)
    factory = estimator_factory or load_pipeline
    # Pillow's own bomb guard, set to our cap (process-wide; one app per process): it raises
    # DecompressionBombError above twice the cap, which decoding answers 413. Between the cap and
    # twice it, Pillow only warns and our header check refuses the image: the warning is noise.
    Image.MAX_IMAGE_PIXELS = settings.max_pixels
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

    app = FastAPI(
        title="scio-pose",
        summary="Top-down human pose estimation with SCIO refinement",
        version=_version(),
        lifespan=lambda app: _running(state, factory),
        docs_url=None,  # FastAPI's Swagger UI and ReDoc load from a CDN: /docs is ours
        redoc_url=None,
    )
    app.state.service = state
    install_error_handlers(app, state.metrics.count_error)
    docs = {app.openapi_url, "/docs"}
    app.add_middleware(
        RequestMetricsMiddleware,
        metrics=state.metrics,
        fixed_paths=frozenset(p for p in docs if p),
    )
    app.add_middleware(DrainGuardMiddleware)  # the drain's end: JSON 503, not uvicorn's 500
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer carries the ID
    for module in (pose, health, meta):
        app.include_router(module.router)

    @app.get("/docs", include_in_schema=False)
    async def docs_page() -> HTMLResponse:
        return HTMLResponse(render_docs(app.openapi()))

    return app


def begin_drain(app: FastAPI) -> None:
    """Shutdown has started: /health/ready answers 503 from now on (in-flight requests go on)."""
    cast(ServiceState, app.state.service).readiness.drain()


@contextlib.asynccontextmanager
async def _running(state: ServiceState, factory: EstimatorFactory) -> AsyncIterator[None]:
    """The lifespan: start the runner, load in the background, drain and stop at the end."""
    runner = PipelineRunner(_limits(state.settings), state.metrics)
    budget = DecodeBudget(
        state.settings.decode_memory_mb * MB,
        threads=2 * state.settings.max_concurrency,
        inline_bytes=INLINE_DECODE_BYTES,
    )
    state.runner, state.estimator, state.readiness = runner, None, Readiness()
    state.decode_budget = budget
    state.metrics.bind(
        ready=lambda: state.readiness.ready,
        in_flight=lambda: runner.running,
        queued=lambda: runner.queued,
        decode_bytes=lambda: budget.held,
        decodes_running=lambda: budget.running,
    )
    runner.start()
    loading = asyncio.create_task(_load(state, factory))
    try:
        yield
    finally:
        state.readiness.drain()
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        await runner.stop()
        budget.close()
        state.runner = None
        state.decode_budget = None


async def _load(state: ServiceState, factory: EstimatorFactory) -> None:
    bundle = state.settings.bundle
    try:
        estimator = await asyncio.to_thread(factory, state.settings)
        state.readiness.advance(Phase.WARMING_UP, "warming up the model")
        await asyncio.to_thread(estimator.warmup)
    except Exception as e:
        # the log gets the path and the message; clients only the kind of failure
        log.error(
            "could not load the model bundle %s: %s: %s; the service stays up but not ready",
            bundle,
            type(e).__name__,
            e,
            exc_info=e,
        )
        reason = (
            f"could not load the model bundle ({type(e).__name__}); the server log has the details"
        )
        state.readiness.advance(Phase.LOAD_FAILED, reason)
        return
    state.estimator = estimator
    state.readiness.advance(Phase.READY, "ready")
    log.info("model ready: bundle %s", bundle)


def _limits(settings: Settings) -> Limits:
    return Limits(
        max_concurrency=settings.max_concurrency,
        max_queue=settings.max_queue,
        timeout_s=settings.request_timeout_s,
        batch_window_s=settings.batch_window_ms / 1000.0,
        max_batch=settings.max_batch,
    )
