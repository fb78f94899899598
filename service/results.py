"""What the pose pipeline takes and returns: the contract between the pipeline (ONNX Runtime),
the HTTP layer and `scio-pose evaluate`. Plain dataclasses over numpy arrays; the HTTP schemas
in `service.schemas` convert these to JSON.

Coordinates are image pixels of the decoded (EXIF-rotated) image; boxes are [x1, y1, x2, y2].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from models.keypoints import KeypointSpec


@dataclass(frozen=True)
class PoseOptions:
    refine: bool = True  # run SCIO refinement (ignored when the bundle has no SCIO networks)
    # flip test: average with the mirrored crop's heatmaps; None: the bundle's default
    # (bundle.json pose.flip_test)
    flip: bool | None = None
    boxes: npt.NDArray[np.float64] | None = None  # (N, 4) person boxes; skips the detector
    box_scores: npt.NDArray[np.float64] | None = None  # (N,) scores of `boxes`; default 1.0
    # drop persons whose `confidence` (where the bundle calibrates one, else `score`) is below
    # this; None: the bundle's (DetectorInfo.min_person_score) for the persons its detector
    # found, 0 for caller-given boxes
    min_score: float | None = None
    # the detector's box score threshold; None: the bundle's (DetectorInfo.score_threshold).
    # The exported model returns no box below its own floor (DetectorInfo.score_floor).
    detector_threshold: float | None = None
    max_persons: int | None = None  # keep at most this many, best first
    # OKS-NMS threshold; None: the bundle's (its detector's `oks_nms`, else the official 0.9)
    oks_nms_threshold: float | None = None
    oks_nms: bool = False  # OKS-NMS on caller-given boxes too (detector boxes always get it)
    # `scio-pose evaluate --protocol official`: keypoints not clipped to the image, and OKS-NMS
    # ties broken as the official code's argsort does (the later person first). The API clips.
    official: bool = False
    # the head view: the backbone run again on the half-body crop of the upper body, whose nose,
    # eyes and ears replace the first crop's (one more backbone pass per person; ignored where
    # the bundle's keypoints have no face keypoints: GET /info head_view_available)
    head_view: bool = False


@dataclass(frozen=True)
class RefinedKeypoint:
    """One distal keypoint that the SCIO search looked at."""

    keypoint: int  # index in the spec
    group: str  # the structural group whose verifier scored it
    displacement_px: float  # distance from the backbone's own position, in image pixels
    # (the SCL prior may move D even when the search's own move is not accepted)
    # Γ's self-constraint loss where the search started (the SCL prior's position, or the
    # backbone's when the prior is the backbone) and at the returned position; None where Γ was
    # not run for this keypoint because nothing at the bundle's settings reads its loss there
    loss_before: float | None
    loss_after: float | None
    accepted: bool  # whether the search's move was kept
    # P(the returned keypoint is correct), calibrated on a tuning split; None without calibration
    confidence: float | None = None


@dataclass
class PersonPose:
    bbox: npt.NDArray[np.float64]  # (4,) x1, y1, x2, y2
    bbox_score: float
    score: float  # rescored: bbox_score × mean of keypoint scores above 0.2 (the official score)
    keypoints: npt.NDArray[np.float64]  # (K, 3) x, y, score, in spec order
    refinements: list[RefinedKeypoint] = field(default_factory=list)
    # P(the pose is correct, OKS >= 0.5) for a person the detector found, where the bundle
    # calibrates one (DetectorInfo.person_score); None elsewhere
    confidence: float | None = None


@dataclass
class PoseResult:
    image_hw: tuple[int, int]
    persons: list[PersonPose]
    refined: bool  # True when SCIO refinement ran on this image
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage


class PoseEstimator(Protocol):
    """The pipeline as the HTTP layer sees it. Images are RGB uint8 arrays (H, W, 3)."""

    spec: KeypointSpec
    refine_available: bool

    @property
    def info(self) -> dict[str, Any]:
        """Bundle metadata for /info and responses: at least `name` and `version`."""
        ...

    def warmup(self) -> None: ...

    def estimate_many(
        self, items: Sequence[tuple[npt.NDArray[np.uint8], PoseOptions]]
    ) -> list[PoseResult]:
        """All images in one pass (one backbone call for all their persons)."""
        ...


def decoded_to_original(v: npt.ArrayLike, scale: int) -> npt.NDArray[np.float64]:
    """Pixel coordinates on an image the JPEG decoder shrank by `scale` (block averages of
    scale x scale pixels) -> the original image's: x = (x' + 0.5) * scale - 0.5."""
    out: npt.NDArray[np.float64] = (np.asarray(v, dtype=np.float64) + 0.5) * scale - 0.5
    return out


def original_to_decoded(v: npt.ArrayLike, scale: int) -> npt.NDArray[np.float64]:
    """The inverse of `decoded_to_original`."""
    out: npt.NDArray[np.float64] = (np.asarray(v, dtype=np.float64) + 0.5) / scale - 0.5
    return out


def to_original_pixels(result: PoseResult, scale: int, original_hw: tuple[int, int]) -> PoseResult:
    """A result on an image the JPEG decoder shrank by `scale`, in the original image's pixels
    (`decoded_to_original`; distances * scale)."""
    if scale == 1:
        return result
    point = partial(decoded_to_original, scale=scale)
    persons = []
    for p in result.persons:
        kps = np.array(p.keypoints, dtype=np.float64)
        kps[:, :2] = point(kps[:, :2])
        refs = [replace(r, displacement_px=r.displacement_px * scale) for r in p.refinements]
        bbox = point(p.bbox)
        persons.append(replace(p, bbox=bbox, keypoints=kps, refinements=refs))
    return PoseResult(original_hw, persons, result.refined, dict(result.timings_ms))
