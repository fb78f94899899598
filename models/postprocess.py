"""Person rescoring and OKS-based non-maximum suppression (official top-down protocol, facts §7),
and the calibrated person confidence a bundle may carry beside the official score.

Pure numpy; the service and `scio-pose evaluate` both call these, so the AP a benchmark reports
is computed on the same persons the service returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.scio_search import sigmoid

F64 = npt.NDArray[np.float64]

IN_VIS_THRE = 0.2
OKS_THRE = 0.9


def rescore(
    box_scores: npt.ArrayLike, keypoint_scores: npt.ArrayLike, in_vis_thre: float = IN_VIS_THRE
) -> F64:
    """score = box_score × mean of the keypoint scores above `in_vis_thre` (0 if none is).

    box_scores (N,), keypoint_scores (N, K) -> (N,)."""
    b = np.asarray(box_scores, dtype=np.float64).reshape(-1)
    k = np.asarray(keypoint_scores, dtype=np.float64)
    if k.ndim != 2 or len(k) != len(b):
        raise ValueError(f"keypoint_scores must be (N, K) with N = {len(b)}, got {k.shape}")
    above = k > in_vis_thre
    n = above.sum(axis=1)
    mean = np.divide((k * above).sum(axis=1), n, out=np.zeros(len(b)), where=n > 0)
    out: F64 = b * mean
    return out


# What the calibrated person score reads of a person the detector found (`person_features`).
PERSON_FEATURES = (
    "box_logit",  # log(b / (1 - b)) of the detector's box score b
    "keypoint_mean",  # mean of all keypoint scores
    "keypoint_median",
    "keypoint_share",  # share of keypoints scoring above 0.5
    "keypoint_max",
    "log_size",  # log of sqrt(box area / image area)
    "log_rescored",  # log of the official score (`rescore`)
)


def person_features(
    box_scores: npt.ArrayLike,
    keypoint_scores: npt.ArrayLike,
    boxes: npt.ArrayLike,
    image_hw: Sequence[tuple[int, int]] | npt.ArrayLike,
) -> F64:
    """`PERSON_FEATURES` of each person: box scores (N,), keypoint scores (N, K), boxes (N, 4)
    as [x1, y1, x2, y2] in image pixels and each person's image (height, width) (N, 2)
    -> (N, len(PERSON_FEATURES))."""
    b = np.clip(np.asarray(box_scores, dtype=np.float64).reshape(-1), 1e-4, 1 - 1e-4)
    if not len(b):
        return np.zeros((0, len(PERSON_FEATURES)))
    k = np.asarray(keypoint_scores, dtype=np.float64).reshape(len(b), -1)
    if not k.shape[1]:
        raise ValueError("person features need keypoint scores")
    xyxy = np.asarray(boxes, dtype=np.float64).reshape(len(b), 4)
    hw = np.asarray(image_hw, dtype=np.float64).reshape(len(b), 2)
    wh = np.maximum(xyxy[:, 2:] - xyxy[:, :2], 1.0)
    size = np.sqrt(wh.prod(axis=1) / np.maximum(hw.prod(axis=1), 1.0))
    srt = np.sort(k, axis=1)  # median and maximum from one sort (this runs per request)
    n = k.shape[1]
    out = np.empty((len(b), len(PERSON_FEATURES)))
    out[:, 0] = np.log(b / (1 - b))
    out[:, 1] = k.mean(axis=1)
    out[:, 2] = 0.5 * (srt[:, (n - 1) // 2] + srt[:, n // 2])
    out[:, 3] = (k > 0.5).mean(axis=1)
    out[:, 4] = srt[:, -1]
    out[:, 5] = np.log(size)
    out[:, 6] = np.log(np.maximum(rescore(b, k), 1e-4))
    return out


@dataclass(frozen=True)
class PersonScoreModel:
    """A calibrated person score: the probability that a person the detector found is answered
    with a correct pose (OKS >= 0.5 with someone not answered yet), a logistic model over
    `PERSON_FEATURES` fitted on a tuning split (training.probes.fit_person_score, from
    benchmarks/person_score.py). bundle.json's
    `detector.person_score`: the `confidence` of the persons the detector finds, which the
    bundle's minimum reads instead of `rescore`'s official score."""

    weights: tuple[float, ...]
    bias: float
    features: tuple[str, ...] = PERSON_FEATURES

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in PERSON_FEATURES]
        if unknown:
            raise ValueError(f"unknown person score features {unknown}; known: {PERSON_FEATURES}")
        if len(self.weights) != len(self.features):
            raise ValueError(
                f"person score: {len(self.weights)} weights for {len(self.features)} features"
            )
        if not all(np.isfinite([*self.weights, self.bias])):
            raise ValueError("person score weights and bias must be finite")

    def __call__(self, features: npt.ArrayLike) -> F64:
        """Probabilities (N,) from `person_features`' (N, len(PERSON_FEATURES))."""
        x = np.asarray(features, dtype=np.float64).reshape(-1, len(PERSON_FEATURES))
        cols = [PERSON_FEATURES.index(f) for f in self.features]
        return sigmoid(x[:, cols] @ np.asarray(self.weights, dtype=np.float64) + self.bias)

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "weights": list(self.weights), "bias": self.bias}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PersonScoreModel:
        return cls(
            weights=tuple(float(w) for w in d["weights"]),
            bias=float(d["bias"]),
            features=tuple(str(f) for f in d.get("features", PERSON_FEATURES)),
        )


def oks_iou(
    g: npt.ArrayLike,
    d: npt.ArrayLike,
    area_g: float,
    area_d: npt.ArrayLike,
    sigmas: npt.ArrayLike,
    in_vis_thre: float | None = None,
) -> F64:
    """OKS between one pose g (K, 3) and poses d (M, K, 3), as the official oks_iou: every joint
    counts unless `in_vis_thre` is given, areas are averaged, no visibility from ground truth."""
    g = np.asarray(g, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64).reshape(-1, *g.shape)
    var = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    a_d = np.asarray(area_d, dtype=np.float64).reshape(-1)
    sq = ((d[:, :, :2] - g[None, :, :2]) ** 2).sum(-1)  # (M, K)
    e = sq / var / ((area_g + a_d[:, None]) / 2 + np.spacing(1)) / 2
    if in_vis_thre is None:
        out: F64 = np.exp(-e).mean(axis=1)
        return out
    use = (g[None, :, 2] > in_vis_thre) & (d[:, :, 2] > in_vis_thre)
    n = use.sum(axis=1)
    masked: F64 = np.divide((np.exp(-e) * use).sum(axis=1), n, out=np.zeros(len(d)), where=n > 0)
    return masked


def oks_nms(
    keypoints: npt.ArrayLike,
    scores: npt.ArrayLike,
    areas: npt.ArrayLike,
    sigmas: npt.ArrayLike,
    thresh: float = OKS_THRE,
    official_order: bool = False,
) -> list[int]:
    """Greedy NMS in descending score order: keep the best, drop the others whose OKS with it
    is above `thresh`. keypoints (N, K, 3), scores (N,), areas (N,) -> kept indices.
    Equal scores: the earlier person first; `official_order`: the order the official code's
    `scores.argsort()[::-1]` gives (numpy's default sort, reversed: for a few persons, the later
    one first)."""
    kp = np.asarray(keypoints, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    ar = np.asarray(areas, dtype=np.float64).reshape(-1)
    order = sc.argsort()[::-1] if official_order else np.argsort(-sc, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        ovr = oks_iou(kp[i], kp[rest], ar[i], ar[rest], sigmas)
        order = rest[ovr <= thresh]
    return keep
