"""Person rescoring and OKS-based non-maximum suppression (official top-down protocol, facts §7).

Pure numpy; the service and `scio-pose evaluate` both call these, so the AP a benchmark reports
is computed on the same persons the service returns.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

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
