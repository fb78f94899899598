"""POST /pose (keypoints as JSON or COCO results) and POST /pose/render (annotated PNG)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.deps import EstimatorDep, MetricsDep, RunnerDep, SettingsDep
from service.errors import ApiError
from service.imageio import decode_image
from service.limits import PipelineRunner
from service.metrics import Metrics
from service.render import render_png
from service.respond import checked_persons, coco_results, pose_response
from service.results import (
    PersonPose,
    PoseEstimator,
    PoseOptions,
    PoseResult,
    original_to_decoded,
    to_original_pixels,
)
from service.schemas import CocoResult, PoseParams, PoseResponse, error_responses, parse_boxes
from service.settings import Settings
from service.upload import read_image_bytes

router = APIRouter(tags=["pose"])

ParamsDep = Annotated[PoseParams, Query()]

_BINARY = {"schema": {"type": "string", "format": "binary"}}
# The body is read by hand (to cap it while it streams), so it is declared here for OpenAPI.
_IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the image: multipart field `image`, or the raw body",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
            "image/jpeg": _BINARY,
            "image/png": _BINARY,
            "image/webp": _BINARY,
        },
    }
}
_ERRORS = error_responses(400, 413, 415, 422, 500, 503, 504)


@dataclass
class _Posed:
    image: npt.NDArray[np.uint8]
    result: PoseResult
    persons: list[PersonPose]  # checked and clipped
    timings_ms: dict[str, float]


@router.post(
    "/pose",
    response_model=PoseResponse | list[CocoResult],
    responses=_ERRORS,
    openapi_extra=_IMAGE_BODY,
    summary="Keypoints of every person in the image",
)
async def pose(
    request: Request,
    params: ParamsDep,
    settings: SettingsDep,
    estimator: EstimatorDep,
    runner: RunnerDep,
    metrics: MetricsDep,
) -> PoseResponse | list[CocoResult]:
    posed = await _estimate(request, params, settings, estimator, runner, metrics)
    if params.format == "coco":
        return coco_results(posed.persons, params.image_id)
    return pose_response(
        posed.result, posed.persons, estimator.spec, estimator.info, posed.timings_ms
    )


@router.post(
    "/pose/render",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **_ERRORS},
    openapi_extra=_IMAGE_BODY,
    summary="The image with boxes and skeletons drawn (PNG)",
)
async def pose_render(
    request: Request,
    params: ParamsDep,
    settings: SettingsDep,
    estimator: EstimatorDep,
    runner: RunnerDep,
    metrics: MetricsDep,
) -> Response:
    # drawn on the full-size image, so never decoded shrunk
    posed = await _estimate(request, params, settings, estimator, runner, metrics, shrink=False)
    png = await asyncio.to_thread(render_png, posed.image, posed.persons, estimator.spec)
    return Response(png, media_type="image/png")


async def _estimate(
    request: Request,
    params: PoseParams,
    settings: Settings,
    estimator: PoseEstimator,
    runner: PipelineRunner,
    metrics: Metrics,
    shrink: bool = True,
) -> _Posed:
    start = time.perf_counter()
    async with runner.admit() as ticket:  # 503 when full; 504 past the deadline
        data = await read_image_bytes(request, settings.max_upload_bytes)
        t = time.perf_counter()
        decoded = await asyncio.to_thread(
            decode_image,
            data,
            allowed=settings.allowed_formats,
            max_pixels=settings.max_pixels,
            max_side=settings.decode_max_side if shrink else 0,
        )
        image = decoded.rgb
        own = {"decode_ms": (time.perf_counter() - t) * 1000.0}
        options = _options(params, decoded.original_hw, decoded.scale)
        result, own["queue_ms"] = await runner.run(ticket, estimator, image, options)
    result = to_original_pixels(result, decoded.scale, decoded.original_hw)
    persons = checked_persons(result, estimator.spec)
    metrics.observe_result(result, own)
    total = {"total_ms": (time.perf_counter() - start) * 1000.0}
    return _Posed(image, result, persons, {**result.timings_ms, **own, **total})


def _options(params: PoseParams, image_hw: tuple[int, int], scale: int) -> PoseOptions:
    boxes = None
    if params.boxes is not None:  # checked against the original image, then to decoded pixels
        boxes = _boxes_in_image(params.boxes, image_hw)
        if scale > 1:
            boxes = original_to_decoded(boxes, scale)
    return PoseOptions(
        refine=params.refine,
        flip=params.flip,
        boxes=boxes,
        min_score=params.min_score,
        max_persons=params.max_persons,
    )


def _boxes_in_image(text: str, hw: tuple[int, ...]) -> npt.NDArray[np.float64]:
    boxes = np.array(parse_boxes(text), dtype=np.float64).reshape(-1, 4)
    h, w = hw
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0.0, w - 1.0)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0.0, h - 1.0)
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if empty.any():
        raise ApiError(
            422,
            "boxes_outside_image",
            f"box {int(np.argmax(empty))} lies outside the {w}x{h} image",
        )
    return boxes
