"""GET /info (what is being served) and GET /metrics (Prometheus)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from service.deps import EstimatorDep, MetricsDep
from service.schemas import Info, error_responses

router = APIRouter(tags=["meta"])


@router.get("/info", response_model=Info, responses=error_responses(503))
async def info(estimator: EstimatorDep) -> Info:
    spec = estimator.spec
    return Info(
        bundle=_jsonable(estimator.info),
        keypoint_spec=spec.name,
        keypoint_names=list(spec.keypoint_names),
        skeleton=[[a, b] for a, b in spec.skeleton],
        refine_available=estimator.refine_available,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
    summary="Prometheus metrics",
)
async def metrics(m: MetricsDep) -> Response:
    body, content_type = m.render()
    return Response(body, media_type=content_type)


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    """Bundle metadata as plain JSON (paths, numpy scalars and the like become strings)."""
    out: dict[str, Any] = json.loads(json.dumps(info, default=str))
    return out
