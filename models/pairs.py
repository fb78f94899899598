"""Left/right pairs decoded on one spot, split by the joints next to them (torch-free).

A backbone that cannot tell a person's left ankle from the right one gives both channels the
same map, with a peak on each foot; decoding takes each channel's highest peak, so both ankles
land on one foot (the shipped demo backbone: 99.8% of persons, benchmarks/results/mirror_pairs.md).
Which foot is which is then a question of structure, not of appearance: the left ankle belongs
under the left knee. `split_pairs` finds such a pair (the two decoded points within `max_apart`
heatmap px) whose averaged map has a second peak of at least `min_second` of its maximum, and
puts the pair's two keypoints on the two peaks, the assignment that keeps each nearer its own
anchor (the sum of the two anchor-to-keypoint distances is the smaller one). The second peak is
read to sub-pixel precision the way the bundle decodes (`HeatmapCodec.refine_at`), and the moved
keypoint's score is its own map's value there.

Which pairs and what threshold: chosen per bundle on a tuning split
(`benchmarks/pair_split.py --choose`), stored in bundle.json's `pose.pair_split`; a bundle
without it decodes as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.codec import HeatmapCodec
from models.keypoints import KeypointSpec
from models.scio_search import local_maxima

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Pair = tuple[int, int, int, int]  # (left, right, left's anchor, right's anchor), keypoint indices


@dataclass(frozen=True)
class PairSplit:
    pairs: tuple[Pair, ...] = ()
    min_second: float = 0.3  # the second peak's height over the averaged map's maximum
    max_apart: float = 1.0  # heatmap px: the two decoded points this close are "on one spot"

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_second <= 1.0:
            raise ValueError(f"pair_split.min_second must be in [0, 1], got {self.min_second}")
        if self.max_apart <= 0:
            raise ValueError(f"pair_split.max_apart must be > 0, got {self.max_apart}")
        for p in self.pairs:
            if len(p) != 4 or len(set(p)) != 4:
                raise ValueError(f"pair_split pair {p}: need four distinct keypoint indices")

    def check(self, spec: KeypointSpec) -> None:
        """Raise ValueError unless every index is a keypoint of `spec`."""
        k = spec.num_keypoints
        for p in self.pairs:
            if not all(0 <= i < k for i in p):
                raise ValueError(f"pair_split pair {p}: indices must be in [0, {k})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": [list(p) for p in self.pairs],
            "min_second": self.min_second,
            "max_apart": self.max_apart,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairSplit:
        pairs = tuple(tuple(int(i) for i in p) for p in d.get("pairs", ()))
        return cls(
            pairs=pairs,  # type: ignore[arg-type]
            min_second=float(d.get("min_second", 0.3)),
            max_apart=float(d.get("max_apart", 1.0)),
        )


def candidate_pairs(spec: KeypointSpec) -> tuple[Pair, ...]:
    """The pairs a split can use: the distal keypoints D of two mirror-image SCIO groups, each
    anchored by its group's A (COCO: ankles by knees, wrists by elbows, ears by eyes)."""
    flip = spec.flip_index
    return tuple(
        (g.d, h.d, g.a, h.a)
        for g in spec.groups
        for h in spec.groups
        if g.d < h.d and flip[g.d] == h.d and flip[g.a] == h.a
    )


def split_pairs(
    heatmaps: F32,
    coords: F64,
    scores: F64,
    split: PairSplit,
    codec: HeatmapCodec,
    decode: str,
) -> tuple[F64, F64, npt.NDArray[np.bool_]]:
    """heatmaps (N, K, h, w), decoded coords (N, K, 2) and scores (N, K) -> new coords and
    scores (copies) and which pairs were split (N, len(split.pairs))."""
    coords = np.array(coords, dtype=np.float64)
    scores = np.array(scores, dtype=np.float64)
    n = len(coords)
    moved = np.zeros((n, len(split.pairs)), dtype=bool)
    for j, (left, right, al, ar) in enumerate(split.pairs):
        near = np.linalg.norm(coords[:, left] - coords[:, right], axis=-1) < split.max_apart
        rows = np.flatnonzero(near)
        if len(rows) == 0:
            continue
        both = 0.5 * (
            heatmaps[rows, left].astype(np.float32) + heatmaps[rows, right].astype(np.float32)
        )
        pos, val = local_maxima(both, 1)  # the highest one 2 px or more from the peak
        peak = both.reshape(len(rows), -1).max(axis=1)
        has = (val[:, 0] > split.min_second * peak) & (peak > 0)
        rows, pos, both = rows[has], pos[has, 0], both[has]
        if len(rows) == 0:
            continue
        x, y = pos[:, 0].astype(np.intp), pos[:, 1].astype(np.intp)
        second = codec.refine_at(both, x, y, decode)
        first = 0.5 * (coords[rows, left] + coords[rows, right])
        a_l, a_r = coords[rows, al], coords[rows, ar]
        keep = np.linalg.norm(first - a_l, axis=-1) + np.linalg.norm(second - a_r, axis=-1)
        swap = np.linalg.norm(second - a_l, axis=-1) + np.linalg.norm(first - a_r, axis=-1)
        left_second = swap < keep  # the left keypoint goes to the second peak
        go = np.where(left_second, left, right)  # the other one keeps its own decoded position
        coords[rows, go] = second
        scores[rows, go] = heatmaps[rows, go, y, x]
        moved[rows, j] = True
    return coords, scores, moved
