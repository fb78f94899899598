"""Person tracks across video frames and optional keypoint smoothing, for `scio-pose predict`.

`Tracker`: greedy matching of each frame's persons to the live tracks by box IoU, best pairs
first, against where each track's box is predicted to be (its last box moved at its recent
velocity: a constant-velocity motion model without SORT's Kalman covariance). A track that finds
no person keeps its ID for `memory` frames, so a person the detector misses for a few frames
comes back under the same ID even after walking on meanwhile; after that the ID is retired and
never reused.

`OneEuroFilter`: Casiez, Roussel and Vogel's 1€ filter (CHI 2012): an exponential smoother whose
cut-off frequency rises with the signal's speed, so a still keypoint is smoothed hard and a fast
one follows with little lag. One filter per track holds all its keypoints' x and y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def greedy_pairs(iou: F64, threshold: float) -> list[tuple[int, int]]:
    """(row, column) pairs of an IoU matrix at or above `threshold`, the best overlaps first
    (ties in row-major order), each row and each column used once."""
    pairs: list[tuple[int, int]] = []
    if iou.size == 0:
        return pairs
    used_row, used_col = set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] < threshold:
            break
        if i in used_row or j in used_col:
            continue
        used_row.add(i)
        used_col.add(j)
        pairs.append((i, j))
    return pairs


def box_iou(a: F64, b: F64) -> F64:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4), [x1, y1, x2, y2] -> (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0.0, None).prod(axis=-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0.0, None).prod(axis=-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0.0, None).prod(axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    out: F64 = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return out


@dataclass
class _Track:
    track_id: int
    box: F64
    last_frame: int
    velocity: F64 = field(default_factory=lambda: np.zeros(4))  # box corners, px per frame

    def predicted(self, frame: int) -> F64:
        out: F64 = self.box + self.velocity * (frame - self.last_frame)
        return out

    def moved_to(self, box: F64, frame: int) -> None:
        step = (box - self.box) / max(frame - self.last_frame, 1)
        # the newest step counts half: one jumpy detection does not throw the prediction far
        self.velocity = 0.5 * self.velocity + 0.5 * step
        self.box, self.last_frame = box, frame


@dataclass
class Tracker:
    """`update(boxes, frame)` -> a track ID per box. Frames must come in increasing order."""

    iou_threshold: float = 0.3  # a person continues a track only above this IoU
    memory: int = 30  # frames a track waits for its person before its ID is retired
    _tracks: list[_Track] = field(default_factory=list)
    _next_id: int = 1

    def update(self, boxes: F64, frame: int) -> list[int]:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        self._tracks = [t for t in self._tracks if frame - t.last_frame - 1 <= self.memory]
        ids = [0] * len(boxes)
        if self._tracks and len(boxes):
            iou = box_iou(boxes, np.stack([t.predicted(frame) for t in self._tracks]))
            for i, j in greedy_pairs(iou, self.iou_threshold):
                self._tracks[j].moved_to(boxes[i], frame)
                ids[i] = self._tracks[j].track_id
        for i, box in enumerate(boxes):
            if ids[i] == 0:
                self._tracks.append(_Track(self._next_id, box, frame))
                ids[i] = self._next_id
                self._next_id += 1
        return ids


def _alpha(cutoff_hz: float, dt_s: float) -> float:
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt_s)


@dataclass
class OneEuroFilter:
    """The 1€ filter over an array of values (a person's keypoints, (K, 2) pixels).

    min_cutoff_hz: the cut-off of a still signal (lower: smoother, more lag when it starts);
    beta: how fast the cut-off rises with speed (per pixel/s; higher: less lag on fast limbs);
    d_cutoff_hz: the cut-off of the speed estimate itself."""

    min_cutoff_hz: float = 1.0
    beta: float = 0.01
    d_cutoff_hz: float = 1.0
    _x: F64 | None = None
    _dx: F64 | None = None
    _t: float = 0.0

    def __call__(self, x: F64, t_s: float) -> F64:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._dx is None or t_s <= self._t:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t_s
            return x.copy()
        dt = t_s - self._t
        a_d = _alpha(self.d_cutoff_hz, dt)
        dx = a_d * (x - self._x) / dt + (1.0 - a_d) * self._dx
        cutoff = self.min_cutoff_hz + self.beta * np.abs(dx)
        tau = 1.0 / (2.0 * np.pi * cutoff)
        a = 1.0 / (1.0 + tau / dt)
        out: F64 = a * x + (1.0 - a) * self._x
        self._x, self._dx, self._t = out, dx, t_s
        return out.copy()


@dataclass
class KeypointSmoother:
    """A 1€ filter per track ID; a track's filter restarts after it was away `reset_s`."""

    min_cutoff_hz: float = 1.0
    beta: float = 0.01
    reset_s: float = 1.0
    _filters: dict[int, OneEuroFilter] = field(default_factory=dict)
    _seen: dict[int, float] = field(default_factory=dict)

    def __call__(self, track_id: int, xy: F64, t_s: float) -> F64:
        f = self._filters.get(track_id)
        if f is None or t_s - self._seen.get(track_id, t_s) > self.reset_s:
            f = self._filters[track_id] = OneEuroFilter(self.min_cutoff_hz, self.beta)
        self._seen[track_id] = t_s
        return f(xy, t_s)
