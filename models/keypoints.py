"""Keypoint specifications: names, flip pairs, OKS sigmas, skeleton and SCIO structural groups.

A spec is plain data. It travels inside `bundle.json` (see `KeypointSpec.to_dict`) so that a
served model carries the exact groups it was trained with, and other group assignments can be
trained and compared without code changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class ScioGroup:
    """One structural group `{A, B, C | D}` (paper eq. 2), as keypoint indices.

    D is the distal, low-accuracy keypoint. Φ predicts D from (A, B, C); Γ predicts A back from
    (B, C, D). A is the joint next to D, so Γ's back-prediction of A depends strongly on D.
    """

    name: str
    a: int
    b: int
    c: int
    d: int

    @property
    def members(self) -> tuple[int, int, int, int]:
        return (self.a, self.b, self.c, self.d)


@dataclass(frozen=True)
class KeypointSpec:
    name: str
    keypoint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]  # 0-based (left, right)
    sigmas: tuple[float, ...]  # OKS per-keypoint constants k_i (already divided by 10)
    skeleton: tuple[tuple[int, int], ...]  # 0-based edges, for drawing
    groups: tuple[ScioGroup, ...]
    # pycocotools/xtcocotools iouType: "keypoints" for COCO, "keypoints_crowd" for CrowdPose.
    eval_iou_type: str = "keypoints"

    def __post_init__(self) -> None:
        k = len(self.keypoint_names)
        if len(self.sigmas) != k:
            raise ValueError(f"{self.name}: {len(self.sigmas)} sigmas for {k} keypoints")
        used: set[int] = set()
        for left, right in self.flip_pairs:
            if not (0 <= left < k and 0 <= right < k) or left == right:
                raise ValueError(f"{self.name}: bad flip pair ({left}, {right})")
            if left in used or right in used:
                raise ValueError(f"{self.name}: keypoint in two flip pairs ({left}, {right})")
            used.update((left, right))
        for i, j in self.skeleton:
            if not (0 <= i < k and 0 <= j < k):
                raise ValueError(f"{self.name}: skeleton edge ({i}, {j}) out of range")
        for g in self.groups:
            if len(set(g.members)) != 4 or not all(0 <= m < k for m in g.members):
                raise ValueError(f"{self.name}: group {g.name} has bad members {g.members}")

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    @property
    def flip_index(self) -> npt.NDArray[np.intp]:
        """Permutation that maps each keypoint to its mirror partner (identity if unpaired)."""
        perm = np.arange(self.num_keypoints)
        for left, right in self.flip_pairs:
            perm[left], perm[right] = right, left
        return perm

    @property
    def sided_edges(self) -> tuple[tuple[int, int], ...]:
        """Skeleton edges that belong to one side: those the left/right flip maps onto another
        edge (a shin, a forearm, nose to one eye), not those it maps onto themselves (hip to
        hip, shoulder to shoulder)."""
        perm = self.flip_index
        out = []
        for i, j in self.skeleton:
            mirrored = {int(perm[i]), int(perm[j])}
            if mirrored != {i, j}:
                out.append((i, j))
        return tuple(out)

    @property
    def sigmas_array(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.sigmas, dtype=np.float64)

    def index(self, keypoint_name: str) -> int:
        return self.keypoint_names.index(keypoint_name)

    def named(self, words: tuple[str, ...]) -> npt.NDArray[np.bool_]:
        """(K,) which keypoints' names contain one of `words` ("eye": both eyes)."""
        return np.array([any(w in n for w in words) for n in self.keypoint_names], dtype=bool)

    def with_groups(self, groups: tuple[ScioGroup, ...], name: str | None = None) -> KeypointSpec:
        """The same spec with another group assignment (for ablations)."""
        return KeypointSpec(
            name=name or self.name,
            keypoint_names=self.keypoint_names,
            flip_pairs=self.flip_pairs,
            sigmas=self.sigmas,
            skeleton=self.skeleton,
            groups=groups,
            eval_iou_type=self.eval_iou_type,
        )

    def coco_category(self) -> dict[str, Any]:
        """The COCO `categories` entry (skeleton is 1-based there, as in the COCO files)."""
        return {
            "supercategory": "person",
            "id": 1,
            "name": "person",
            "keypoints": list(self.keypoint_names),
            "skeleton": [[i + 1, j + 1] for i, j in self.skeleton],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "keypoint_names": list(self.keypoint_names),
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "sigmas": list(self.sigmas),
            "skeleton": [list(e) for e in self.skeleton],
            "groups": [
                {"name": g.name, "a": g.a, "b": g.b, "c": g.c, "d": g.d} for g in self.groups
            ],
            "eval_iou_type": self.eval_iou_type,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KeypointSpec:
        return cls(
            name=str(d["name"]),
            keypoint_names=tuple(str(n) for n in d["keypoint_names"]),
            flip_pairs=tuple((int(p[0]), int(p[1])) for p in d["flip_pairs"]),
            sigmas=tuple(float(s) for s in d["sigmas"]),
            skeleton=tuple((int(e[0]), int(e[1])) for e in d["skeleton"]),
            groups=tuple(
                ScioGroup(str(g["name"]), int(g["a"]), int(g["b"]), int(g["c"]), int(g["d"]))
                for g in d["groups"]
            ),
            eval_iou_type=str(d.get("eval_iou_type", "keypoints")),
        )


def _groups(
    names: tuple[str, ...], table: list[tuple[str, str, str, str, str]]
) -> tuple[ScioGroup, ...]:
    idx = {n: i for i, n in enumerate(names)}
    return tuple(ScioGroup(g, idx[a], idx[b], idx[c], idx[d]) for g, a, b, c, d in table)


_COCO_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

# The groups of DESIGN.md: A is the joint next to the distal keypoint D.
_COCO_GROUPS = [
    ("left_arm", "left_elbow", "left_shoulder", "left_hip", "left_wrist"),
    ("right_arm", "right_elbow", "right_shoulder", "right_hip", "right_wrist"),
    ("left_leg", "left_knee", "left_hip", "left_shoulder", "left_ankle"),
    ("right_leg", "right_knee", "right_hip", "right_shoulder", "right_ankle"),
    ("left_head", "left_eye", "nose", "left_shoulder", "left_ear"),
    ("right_head", "right_eye", "nose", "right_shoulder", "right_ear"),
]

# fmt: off
COCO17 = KeypointSpec(
    name="coco17",
    keypoint_names=_COCO_NAMES,
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    sigmas=tuple(
        s / 10.0
        for s in (
            0.26,
            0.25,
            0.25,
            0.35,
            0.35,
            0.79,
            0.79,
            0.72,
            0.72,
            0.62,
            0.62,
            1.07,
            1.07,
            0.87,
            0.87,
            0.89,
            0.89,
        )
    ),
    # The COCO annotation file's skeleton, made 0-based.
    skeleton=(
        (15, 13),
        (13, 11),
        (16, 14),
        (14, 12),
        (11, 12),
        (5, 11),
        (6, 12),
        (5, 6),
        (5, 7),
        (6, 8),
        (7, 9),
        (8, 10),
        (1, 2),
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 6),
    ),
    groups=_groups(_COCO_NAMES, _COCO_GROUPS),
)
# fmt: on

_CROWDPOSE_NAMES = (
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
    "top_head",
    "neck",
)

# fmt: off
CROWDPOSE14 = KeypointSpec(
    name="crowdpose14",
    keypoint_names=_CROWDPOSE_NAMES,
    flip_pairs=((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)),
    sigmas=tuple(
        s / 10.0
        for s in (
            0.79,
            0.79,
            0.72,
            0.72,
            0.62,
            0.62,
            1.07,
            1.07,
            0.87,
            0.87,
            0.89,
            0.89,
            0.79,
            0.79,
        )
    ),
    skeleton=(
        (12, 13),
        (13, 0),
        (13, 1),
        (0, 2),
        (2, 4),
        (1, 3),
        (3, 5),
        (0, 6),
        (1, 7),
        (6, 7),
        (6, 8),
        (8, 10),
        (7, 9),
        (9, 11),
    ),
    groups=_groups(_CROWDPOSE_NAMES, _COCO_GROUPS[:4]),
    eval_iou_type="keypoints_crowd",
)
# fmt: on

SPECS: dict[str, KeypointSpec] = {COCO17.name: COCO17, CROWDPOSE14.name: CROWDPOSE14}


def get_spec(name: str) -> KeypointSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown keypoint spec {name!r}; choose from {sorted(SPECS)}") from None


def proximal_groups(spec: KeypointSpec) -> tuple[ScioGroup, ...]:
    """The alternative assignment for the ablation: A is the group's torso joint, not D's neighbour.

    The torso joint (a shoulder or hip) takes A's role and the old A takes its slot, so
    left_arm becomes {shoulder, elbow, hip | wrist}, left_leg {hip, knee, shoulder | ankle} and
    left_head {shoulder, nose, eye | ear}. D is unchanged.
    """
    torso = {i for i, n in enumerate(spec.keypoint_names) if n.endswith(("shoulder", "hip"))}
    out = []
    for g in spec.groups:
        if g.b in torso:
            out.append(ScioGroup(g.name, a=g.b, b=g.a, c=g.c, d=g.d))
        elif g.c in torso:
            out.append(ScioGroup(g.name, a=g.c, b=g.b, c=g.a, d=g.d))
        else:
            raise ValueError(f"group {g.name} has no torso joint among B and C")
    return tuple(out)
