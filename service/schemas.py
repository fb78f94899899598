"""HTTP request and response schemas (pydantic). The pipeline's own types are the dataclasses
in `service.results`; `service.respond` converts one into the other."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_BOXES = 100

# Fixed-length lists rather than tuples: the same JSON, but `items` + min/maxItems in the
# OpenAPI schema instead of `prefixItems`, which some OpenAPI 3.1 tools (schemathesis) mishandle.
Triplet = Annotated[list[float], Field(min_length=3, max_length=3)]
Box = Annotated[list[float], Field(min_length=4, max_length=4)]
Edge = Annotated[list[int], Field(min_length=2, max_length=2)]


def parse_boxes(text: str) -> list[tuple[float, float, float, float]]:
    """`[[x1, y1, x2, y2], ...]` (JSON, image pixels) -> boxes; ValueError says what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("boxes must be JSON: [[x1, y1, x2, y2], ...]") from None
    if not isinstance(data, list) or len(data) > MAX_BOXES:
        raise ValueError(f"boxes must be a JSON list of at most {MAX_BOXES} boxes")
    boxes = []
    for i, box in enumerate(data):
        ok = isinstance(box, list) and len(box) == 4
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
        if not ok or not all(math.isfinite(v) for v in box):
            raise ValueError(f"box {i} must be 4 finite numbers [x1, y1, x2, y2]")
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (x2 > x1 and y2 > y1):
            raise ValueError(f"box {i} must have x2 > x1 and y2 > y1")
        boxes.append((x1, y1, x2, y2))
    return boxes


class _CommonParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refine: bool = Field(True, description="run SCIO refinement when the bundle has it")
    flip: bool | None = Field(
        None,
        description="flip test (average with the mirrored crop) for every person; omitted: the "
        "bundle's default (GET /info: bundle.flip_test), except that detected boxes scoring "
        "below bundle.flip_min_score run without it",
    )
    min_score: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="drop persons whose `confidence` (where the bundle calibrates one, else "
        "`score`) is below this; "
        "omitted: the bundle's for the persons its detector finds (GET /info: "
        "bundle.min_person_score), 0 with boxes",
    )
    detector_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="the person detector's box score threshold: lower finds more people and more "
        "false ones; omitted: the bundle's (GET /info: bundle.detector_threshold). The model "
        "returns no box below its floor (bundle.detector_score_floor); ignored with boxes",
    )
    max_persons: int | None = Field(None, ge=1, le=1000, description="keep the best N persons")
    oks_nms: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="of two detected persons whose poses overlap with OKS above this, answer the "
        "better-scored only; omitted: the bundle's (GET /info: bundle.oks_nms)",
    )
    head_view: bool = Field(
        False,
        description="the head view: the backbone runs again on each person's upper-body crop "
        "(the half-body crop around the first pass's upper-body joints) and its nose, eyes and "
        "ears replace the first crop's; one more backbone pass per person; ignored where the "
        "bundle has no face keypoints (GET /info: bundle.head_view_available)",
    )
    format: Literal["json", "coco"] = Field("json", description="json, or the COCO results list")
    image_id: int = Field(
        0,
        ge=0,
        le=2**53,
        description="image_id in format=coco results (/pose/batch: of the first image; the "
        "next images count up from it)",
    )


class PoseParams(_CommonParams):
    """Query parameters of /pose and /pose/render. Unknown parameters are refused (422)."""

    boxes: str | None = Field(
        None,
        description="person boxes as JSON [[x1, y1, x2, y2], ...] in image pixels (after EXIF "
        "orientation); given boxes replace the detector, [] means no persons",
        max_length=8192,
    )

    @field_validator("boxes")
    @classmethod
    def _check_boxes(cls, value: str | None) -> str | None:
        if value is not None:
            parse_boxes(value)
        return value


class BatchPoseParams(_CommonParams):
    """Query parameters of /pose/batch: those of /pose but `boxes` (boxes belong to one image;
    send such images to /pose). Unknown parameters are refused (422)."""


class Refinement(BaseModel):
    keypoint: int = Field(description="index in keypoint_names")
    name: str
    group: str = Field(description="SCIO structural group whose verifier scored it")
    displacement_px: float = Field(
        description="distance from the backbone's position to the returned one, in image pixels"
    )
    loss_before: float | None = Field(
        default=None,
        description=(
            "Γ's self-constraint loss where the search started (the SCL prior's position); null"
            " where Γ was not run for this keypoint: at the bundle's settings nothing reads its"
            " loss there (no search move, no hypothesis the rule may accept, not in the"
            " confidence)"
        ),
    )
    loss_after: float | None = Field(
        default=None, description="Γ's self-constraint loss at the returned position, or null"
    )
    accepted: bool = Field(description="whether the search's own move was kept")
    confidence: float | None = Field(
        default=None,
        description=(
            "probability that the returned keypoint is correct (OKS term >= 0.5): one logistic "
            "model per SCIO group over the verification loss, the heatmap peak and the other "
            "signals the bundle's calibration names (scio.search.confidence_features), fitted "
            "on a tuning split; null when the bundle has no calibration"
        ),
    )


class Person(BaseModel):
    bbox: Box = Field(description="[x1, y1, x2, y2] in image pixels")
    bbox_score: float
    score: float = Field(description="bbox_score x mean keypoint score above 0.2")
    confidence: float | None = Field(
        None,
        description="for a person the detector found, the probability that the pose is correct "
        "(OKS >= 0.5), where the bundle calibrates one (GET /info: bundle.person_score); "
        "null otherwise",
    )
    keypoints: list[Triplet] = Field(description="K x [x, y, score] in keypoint_names order")
    refinements: list[Refinement] = Field(description="distal keypoints SCIO examined")


class BundleRef(BaseModel):
    name: str
    version: str


class PoseResponse(BaseModel):
    width: int
    height: int
    keypoint_names: list[str]
    skeleton: list[Edge] = Field(description="0-based keypoint index pairs")
    persons: list[Person]
    refined: bool = Field(
        description=(
            "SCIO examined at least one keypoint of the returned persons (false with "
            "refine=false, a bundle without SCIO networks, nobody found, or no group confident "
            "enough to verify)"
        )
    )
    timings_ms: dict[str, float] = Field(
        description="per stage (`*_ms`), plus decode_ms, queue_ms, total_ms"
    )
    bundle: BundleRef


class BatchPoseResponse(BaseModel):
    results: list[PoseResponse] = Field(description="one per image part, in the order sent")


class CocoResult(BaseModel):
    """One entry of the COCO keypoint results format."""

    image_id: int
    category_id: int
    keypoints: list[float] = Field(description="flat [x, y, score] * K")
    score: float
    bbox: Box = Field(description="[x, y, w, h]")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Status(BaseModel):
    status: str


class Info(BaseModel):
    bundle: dict[str, Any] = Field(description="bundle metadata (at least name and version)")
    keypoint_spec: str
    keypoint_names: list[str]
    skeleton: list[Edge]
    refine_available: bool


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the error statuses a route can answer."""
    return {code: {"model": ErrorResponse} for code in codes}
