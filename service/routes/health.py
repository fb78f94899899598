"""Liveness and readiness probes. Neither touches the pipeline or the limiter."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import StateDep
from service.errors import ApiError
from service.schemas import Status, error_responses

router = APIRouter(prefix="/health", tags=["health"])


# HEAD as well as GET: load balancers often probe with HEAD.
@router.api_route(
    "/live", methods=["GET", "HEAD"], response_model=Status, summary="The process is up"
)
async def live() -> Status:
    return Status(status="alive")


@router.api_route(
    "/ready",
    methods=["GET", "HEAD"],
    response_model=Status,
    responses=error_responses(503),
    summary="Bundle loaded, warmed up and not draining; else 503 with the reason",
)
async def ready(state: StateDep) -> Status:
    readiness = state.readiness
    if not readiness.ready:
        raise ApiError(503, str(readiness.phase), readiness.reason)
    return Status(status="ready")
