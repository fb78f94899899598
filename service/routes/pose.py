"""POST /pose (keypoints as JSON or COCO results) and POST /pose/render (annotated PNG)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, TypeVar

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.decode_budget import DecodeBudget
from service.deps import BudgetDep, EstimatorDep, MetricsDep, RunnerDep, SettingsDep
from service.errors import ApiError
from service.imageio import Decoded, decode_image, probe_image
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
from service.schemas import (
    BatchPoseParams,
    BatchPoseResponse,
    CocoResult,
    PoseParams,
    PoseResponse,
    error_responses,
    parse_boxes,
)
from service.settings import Settings
from service.upload import FIELD, read_image_bytes, read_image_parts

router = APIRouter(tags=["pose"])
T = TypeVar("T")

ParamsDep = Annotated[PoseParams, Query()]
BatchParamsDep = Annotated[BatchPoseParams, Query()]

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
_BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": f"the images: one multipart field `{FIELD}` per image, in order",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        },
    }
}
_ERRORS = error_responses(400, 408, 413, 415, 422, 500, 503, 504)


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
    budget: BudgetDep,
    metrics: MetricsDep,
) -> PoseResponse | list[CocoResult]:
    posed = await _estimate(request, params, settings, estimator, runner, budget, metrics)
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
    budget: BudgetDep,
    metrics: MetricsDep,
) -> Response:
    # drawn on the full-size image, so never decoded shrunk
    posed = await _estimate(
        request, params, settings, estimator, runner, budget, metrics, shrink=False
    )
    png = await asyncio.to_thread(render_png, posed.image, posed.persons, estimator.spec)
    return Response(png, media_type="image/png")


@router.post(
    "/pose/batch",
    response_model=BatchPoseResponse | list[CocoResult],
    responses=_ERRORS,
    openapi_extra=_BATCH_BODY,
    summary="Keypoints of every person in each of several images (one pipeline call)",
)
async def pose_batch(
    request: Request,
    params: BatchParamsDep,
    settings: SettingsDep,
    estimator: EstimatorDep,
    runner: RunnerDep,
    budget: BudgetDep,
    metrics: MetricsDep,
) -> BatchPoseResponse | list[CocoResult]:
    """Several images in one request, each a multipart `image` part (at most
    SCIO_MAX_IMAGES_PER_REQUEST, within SCIO_MAX_UPLOAD_BYTES together): one result per image,
    in order, the same as /pose would give for each. Each image takes its own place in the
    admission queue. A bad image fails the whole request (4xx naming it)."""
    start = time.perf_counter()
    parts = await read_image_parts(
        request,
        settings.max_upload_bytes,
        settings.max_images_per_request,
        settings.body_timeout_s,
    )
    costs = [_named(i, _probe, data, settings) for i, data in enumerate(parts)]
    async with runner.admit(len(parts)) as ticket, budget.hold(sum(costs)) as hold:
        t = time.perf_counter()
        decoded = []
        for i, data in enumerate(parts):
            job = partial(_named, i, _decode, data, settings, True)
            decoded.append(await budget.run(hold, job))
        hold.shrink(sum(d.rgb.nbytes for d in decoded))
        own = {"decode_ms": (time.perf_counter() - t) * 1000.0}
        items = [(d.rgb, _options(params, d.original_hw, d.scale)) for d in decoded]
        results, own["queue_ms"] = await runner.run_many(ticket, estimator, items)
    posed = []
    for d, result in zip(decoded, results, strict=True):
        result = to_original_pixels(result, d.scale, d.original_hw)
        persons = checked_persons(result, estimator.spec)
        metrics.observe_result(result, own)
        posed.append((result, persons))
    total = {"total_ms": (time.perf_counter() - start) * 1000.0}
    if params.format == "coco":
        return [
            r
            for i, (_, persons) in enumerate(posed)
            for r in coco_results(persons, params.image_id + i)
        ]
    return BatchPoseResponse(
        results=[
            pose_response(
                result,
                persons,
                estimator.spec,
                estimator.info,
                {**result.timings_ms, **own, **total},
            )
            for result, persons in posed
        ]
    )


def _named(index: int, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` for image `index` of a batch: its errors name the image."""
    try:
        return fn(*args)
    except ApiError as e:
        raise ApiError(e.status, e.code, f"image {index}: {e.message}", e.headers) from None


def _probe(data: bytes, settings: Settings) -> int:
    return probe_image(data, allowed=settings.allowed_formats, max_pixels=settings.max_pixels)


def _decode(data: bytes, settings: Settings, shrink: bool) -> Decoded:
    return decode_image(
        data,
        allowed=settings.allowed_formats,
        max_pixels=settings.max_pixels,
        max_side=settings.decode_max_side if shrink else 0,
    )


async def _estimate(
    request: Request,
    params: PoseParams,
    settings: Settings,
    estimator: PoseEstimator,
    runner: PipelineRunner,
    budget: DecodeBudget,
    metrics: Metrics,
    shrink: bool = True,
) -> _Posed:
    start = time.perf_counter()
    # the body first (408 past SCIO_BODY_TIMEOUT_S): a slow upload holds no place in the queue
    data = await read_image_bytes(request, settings.max_upload_bytes, settings.body_timeout_s)
    cost = _probe(data, settings)  # format, header and pixel checks; no pixel decoded yet
    # 503 when full; 504 past the deadline; waits while the decode budget is spent
    async with runner.admit() as ticket, budget.hold(cost) as hold:
        t = time.perf_counter()
        decoded = await budget.run(hold, partial(_decode, data, settings, shrink))
        image = decoded.rgb
        hold.shrink(image.nbytes)
        own = {"decode_ms": (time.perf_counter() - t) * 1000.0}
        options = _options(params, decoded.original_hw, decoded.scale)
        result, own["queue_ms"] = await runner.run(ticket, estimator, image, options)
    result = to_original_pixels(result, decoded.scale, decoded.original_hw)
    persons = checked_persons(result, estimator.spec)
    metrics.observe_result(result, own)
    total = {"total_ms": (time.perf_counter() - start) * 1000.0}
    return _Posed(image, result, persons, {**result.timings_ms, **own, **total})


def _options(
    params: PoseParams | BatchPoseParams, image_hw: tuple[int, int], scale: int
) -> PoseOptions:
    boxes = None
    if (
        isinstance(params, PoseParams) and params.boxes is not None
    ):  # checked against the original image, then to decoded pixels
        boxes = _boxes_in_image(params.boxes, image_hw)
        if scale > 1:
            boxes = original_to_decoded(boxes, scale)
    return PoseOptions(
        refine=params.refine,
        flip=params.flip,
        boxes=boxes,
        min_score=params.min_score,
        detector_threshold=params.detector_threshold,
        max_persons=params.max_persons,
        oks_nms_threshold=params.oks_nms,
        head_view=params.head_view,
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
