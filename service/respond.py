"""`PoseResult` -> HTTP schemas, with the output contract enforced on the way.

Every number that leaves the service is finite, and every keypoint and box lies inside the
image: x in [0, W-1], y in [0, H-1] (pixel centres at integer coordinates, as in
`models.geometry`). Keypoints are clipped, never dropped or zeroed; their scores are returned as
the pipeline gave them. A non-finite value or a wrongly shaped array is a pipeline bug: it is
logged and answered as a JSON 500, not passed on.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from models.keypoints import KeypointSpec
from service.errors import ApiError
from service.results import PersonPose, PoseResult, RefinedKeypoint
from service.schemas import BundleRef, CocoResult, Person, PoseResponse, Refinement

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]


class BadPipelineOutputError(ApiError):
    def __init__(self, what: str) -> None:
        log.error("pipeline output violates the contract: %s", what)
        super().__init__(500, "bad_pipeline_output", "the pipeline produced an invalid result")


def checked_persons(result: PoseResult, spec: KeypointSpec) -> list[PersonPose]:
    """The result's persons with boxes and keypoints clipped to the image; raises on bad output."""
    h, w = result.image_hw
    k = spec.num_keypoints
    hi = np.array([w - 1.0, h - 1.0])
    out = []
    for i, p in enumerate(result.persons):
        bbox = np.asarray(p.bbox, dtype=np.float64)
        kps = np.asarray(p.keypoints, dtype=np.float64)
        if bbox.shape != (4,) or kps.shape != (k, 3):
            raise BadPipelineOutputError(f"person {i}: bbox {bbox.shape}, keypoints {kps.shape}")
        if any(not 0 <= r.keypoint < k for r in p.refinements):
            raise BadPipelineOutputError(f"person {i}: refinement of a keypoint outside 0..{k - 1}")
        numbers = [p.bbox_score, p.score] + [v for r in p.refinements for v in _ref_numbers(r)]
        numbers += [] if p.confidence is None else [p.confidence]
        if not (np.isfinite(bbox).all() and np.isfinite(kps).all() and np.isfinite(numbers).all()):
            raise BadPipelineOutputError(f"person {i}: non-finite value")
        kps = kps.copy()
        kps[:, :2] = np.clip(kps[:, :2], 0.0, hi)
        bbox = np.clip(bbox, 0.0, np.tile(hi, 2))
        out.append(replace(p, bbox=bbox, keypoints=kps, refinements=list(p.refinements)))
    return out


def _ref_numbers(r: RefinedKeypoint) -> list[float]:
    """The refinement's numbers that must be finite (a loss may be absent, never NaN)."""
    return [v for v in (r.displacement_px, r.loss_before, r.loss_after) if v is not None]


def _float_or_none(v: float | None) -> float | None:
    return None if v is None else float(v)


def pose_response(
    result: PoseResult,
    persons: list[PersonPose],
    spec: KeypointSpec,
    info: dict[str, Any],
    timings_ms: dict[str, float],
) -> PoseResponse:
    h, w = result.image_hw
    return PoseResponse(
        width=w,
        height=h,
        keypoint_names=list(spec.keypoint_names),
        skeleton=[[a, b] for a, b in spec.skeleton],
        persons=[_person(p, spec) for p in persons],
        refined=result.refined,
        timings_ms=timings_ms,
        bundle=BundleRef(
            name=str(info.get("name", "unknown")), version=str(info.get("version", ""))
        ),
    )


def _person(p: PersonPose, spec: KeypointSpec) -> Person:
    x1, y1, x2, y2 = (float(v) for v in p.bbox)
    return Person(
        bbox=[x1, y1, x2, y2],
        bbox_score=float(p.bbox_score),
        score=float(p.score),
        confidence=_float_or_none(p.confidence),
        keypoints=[[float(x), float(y), float(s)] for x, y, s in p.keypoints],
        refinements=[
            Refinement(
                keypoint=r.keypoint,
                name=spec.keypoint_names[r.keypoint],
                group=r.group,
                displacement_px=float(r.displacement_px),
                loss_before=_float_or_none(r.loss_before),
                loss_after=_float_or_none(r.loss_after),
                accepted=bool(r.accepted),
                confidence=_float_or_none(r.confidence),
            )
            for r in p.refinements
        ],
    )


def coco_results(persons: list[PersonPose], image_id: int) -> list[CocoResult]:
    out = []
    for p in persons:
        x1, y1, x2, y2 = (float(v) for v in p.bbox)
        out.append(
            CocoResult(
                image_id=image_id,
                category_id=1,
                keypoints=[float(v) for v in p.keypoints.reshape(-1)],
                score=float(p.score),
                bbox=[x1, y1, x2 - x1, y2 - y1],
            )
        )
    return out
