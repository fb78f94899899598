"""A simulated person detector, so the detector-box evaluation protocol runs without a detector.

Its errors are modelled on what a COCO-trained detector does with people:
- misses: the chance of detecting a person falls for small and for heavily occluded people;
- localisation: box centre and size jitter (a few percent, with a heavy tail), clipped to the
  image; the score falls with the jittered box's IoU, the person's size and visibility;
- duplicates: sometimes a second, partial box on the same person (upper body, or a grown box);
- merges: in crowds, sometimes one box spanning two overlapping people;
- false positives: a few low-scoring person-shaped boxes on the background.
Output is the COCO results format: image_id, category_id, bbox [x, y, w, h], score.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def iou(a: F64, b: F64) -> float:
    """IoU of two [x, y, w, h] boxes."""
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(x2 - x1, 0) * max(y2 - y1, 0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def _clip(box: F64, w: int, h: int) -> F64:
    x1, y1 = np.clip(box[:2], 0, [w - 1, h - 1])
    x2, y2 = np.clip(box[:2] + box[2:], 0, [w, h])
    return np.array([x1, y1, max(x2 - x1, 1.0), max(y2 - y1, 1.0)])


def _jitter(rng: np.random.Generator, box: F64, w: int, h: int) -> F64:
    sd = 0.04 if rng.random() > 0.1 else 0.12
    size = box[2:] * np.exp(rng.normal(0, sd * 1.5, 2))
    centre = box[:2] + box[2:] / 2 + rng.normal(0, sd, 2) * box[2:]
    return _clip(np.concatenate([centre - size / 2, size]), w, h)


def simulate_detections(
    rng: np.random.Generator,
    boxes: F64,
    visible_fraction: F64,
    image_id: int,
    width: int,
    height: int,
) -> list[dict[str, Any]]:
    """Detections for one image. boxes: (N, 4) ground-truth [x, y, w, h]; visible_fraction: (N,)
    share of each person's keypoints inside the image that are visible. Sorted by score."""
    dets: list[tuple[F64, float]] = []
    for box, vis in zip(boxes, visible_fraction, strict=True):
        size = float(np.sqrt(box[2] * box[3]))
        p_hit = (0.6 if size < 32 else 0.88 if size < 96 else 0.97) * (0.7 + 0.3 * vis)
        if rng.random() > p_hit:
            continue
        jittered = _jitter(rng, box, width, height)
        quality = iou(jittered, box) * (0.6 + 0.4 * vis) * (0.75 if size < 32 else 1.0)
        score = float(np.clip(rng.beta(8, 2) * (0.35 + 0.65 * quality), 0.01, 0.999))
        dets.append((jittered, score))
        if rng.random() < 0.08:  # duplicate: a partial or a grown box
            part = box.copy()
            if rng.random() < 0.5:
                part[3] *= rng.uniform(0.4, 0.7)
            else:
                part[:2] -= part[2:] * 0.1
                part[2:] *= 1.2
            dets.append((_jitter(rng, part, width, height), score * float(rng.uniform(0.2, 0.6))))
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if iou(boxes[i], boxes[j]) > 0.15 and rng.random() < 0.15:
                lo = np.minimum(boxes[i][:2], boxes[j][:2])
                hi = np.maximum(boxes[i][:2] + boxes[i][2:], boxes[j][:2] + boxes[j][2:])
                merged = _jitter(rng, np.concatenate([lo, hi - lo]), width, height)
                dets.append((merged, float(rng.uniform(0.1, 0.5))))
    for _ in range(int(rng.poisson(0.6))):
        bh = rng.uniform(0.1, 0.6) * height
        bw = bh * rng.uniform(0.3, 0.8)
        xy = rng.uniform(0, 1, 2) * [width - bw, height - bh]
        fp = _clip(np.array([xy[0], xy[1], bw, bh]), width, height)
        dets.append((fp, float(np.clip(rng.beta(1.5, 6), 0.01, 0.9))))
    dets.sort(key=lambda d: -d[1])
    return [
        {
            "image_id": image_id,
            "category_id": 1,
            "bbox": [round(float(c), 2) for c in box],
            "score": round(score, 4),
        }
        for box, score in dets
    ]
