"""Labels read off the rendered label maps: keypoint visibility, boxes, masks, COCO records.

Visibility, per keypoint of person p at pixel (round(x), round(y)):
  v = 0  outside the image;
  v = 2  the owner map says p is the nearest surface there, and that surface is not in front of
         the joint by more than the thickness of the body part the joint sits in (so a joint is
         not hidden by its own limb, but is hidden by p's torso, other arm, etc.); face points
         (eyes, nose, ears) must also face the camera (the sphere's own far side hides them);
  v = 1  otherwise: inside the image, occluded by another person, an object, or p's own body.
Boxes and areas come from p's pixels in the owner map (the visible figure, as COCO's boxes come
from the visible segmentation); the segmentation is that mask as an uncompressed COCO RLE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.keypoints import KeypointSpec
from training.synth.body import Body3D, BodyShape, J
from training.synth.render import Canvas

F64 = npt.NDArray[np.float64]

# Spec keypoint name -> internal joint.
JOINT_OF: dict[str, int] = {
    "nose": J.NOSE,
    "left_eye": J.L_EYE,
    "right_eye": J.R_EYE,
    "left_ear": J.L_EAR,
    "right_ear": J.R_EAR,
    "left_shoulder": J.L_SHOULDER,
    "right_shoulder": J.R_SHOULDER,
    "left_elbow": J.L_ELBOW,
    "right_elbow": J.R_ELBOW,
    "left_wrist": J.L_WRIST,
    "right_wrist": J.R_WRIST,
    "left_hip": J.L_HIP,
    "right_hip": J.R_HIP,
    "left_knee": J.L_KNEE,
    "right_knee": J.R_KNEE,
    "left_ankle": J.L_ANKLE,
    "right_ankle": J.R_ANKLE,
    "top_head": J.TOP_HEAD,
    "neck": J.NECK,
}

# Face points: the smallest z-component of their outward direction at which they are visible.
_FACING = {J.NOSE: -0.1, J.L_EYE: 0.1, J.R_EYE: 0.1, J.L_EAR: 0.0, J.R_EAR: 0.0, J.TOP_HEAD: -2.0}


def _thickness(shape: BodyShape, joint: int) -> float:
    """Radius (body heights) of the thickest part the joint sits in."""
    s = shape
    if joint == J.TOP_HEAD:  # marked inside the skull, under the crown's surface
        return s.head_r
    if joint in _FACING:  # surface points
        return 0.2 * s.head_r
    if joint in (J.L_SHOULDER, J.R_SHOULDER, J.L_HIP, J.R_HIP, J.NECK):
        return max(s.chest_depth, s.r_thigh if joint in (J.L_HIP, J.R_HIP) else s.r_upper_arm * 1.2)
    if joint in (J.L_ELBOW, J.R_ELBOW):
        return s.r_upper_arm * 1.1
    if joint in (J.L_WRIST, J.R_WRIST):
        return max(s.r_forearm, s.r_hand)
    if joint in (J.L_KNEE, J.R_KNEE):
        return s.r_shin * 1.2
    return max(s.r_shin * 0.8, s.r_foot)  # ankles


def depth_tolerance(shape: BodyShape, joint: int, scale: float) -> float:
    """How far (pixels) the nearest surface may stand in front of a joint that is still visible:
    a little more than the radius of the body part the joint sits in."""
    return 1.3 * _thickness(shape, joint) * scale + 1.0


@dataclass(frozen=True)
class PersonLabel:
    person: int  # index in the scene
    keypoints: F64  # (K, 3): x, y (image pixels, true position even when v = 0), v
    bbox: F64  # (4,) x, y, w, h of the visible pixels
    area: int  # visible pixels
    mask: npt.NDArray[np.bool_]  # (H, W) visible pixels

    @property
    def num_keypoints(self) -> int:
        return int((self.keypoints[:, 2] > 0).sum())


def keypoint_visibility(
    canvas: Canvas, body: Body3D, scale: float, joints: list[int], owner: int
) -> F64:
    """(K, 3) x, y, v for the given internal joints of person `owner`."""
    w, h = canvas.size
    p = body.joints[joints]
    out = np.zeros((len(joints), 3))
    out[:, :2] = p[:, :2]
    for k, j in enumerate(joints):
        xi, yi = round(float(p[k, 0])), round(float(p[k, 1]))
        if not (0 <= xi < w and 0 <= yi < h):
            continue
        tol = depth_tolerance(body.shape, j, scale)
        ok = canvas.owner[yi, xi] == owner and canvas.depth[yi, xi] <= p[k, 2] + tol
        if ok and j in _FACING:
            d = p[k] - body.joints[J.HEAD]
            ok = d[2] / max(float(np.linalg.norm(d)), 1e-6) > _FACING[j]
        out[k, 2] = 2 if ok else 1
    return out


def box_of(mask: npt.NDArray[np.bool_]) -> F64:
    """[x, y, w, h] of a mask with pixel centres at integers: x2 = x + w - 1 (as the official
    ground-truth box cleaning in models.geometry expects)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1], float)


def rle(mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
    """Uncompressed COCO RLE: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.T.reshape(-1).astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def label_persons(
    canvas: Canvas, bodies: list[tuple[Body3D, float]], spec: KeypointSpec, min_area: int = 16
) -> list[PersonLabel]:
    """Labels for every person with at least `min_area` visible pixels."""
    joints = [JOINT_OF[n] for n in spec.keypoint_names]
    out = []
    for i, (body, scale) in enumerate(bodies):
        mask = canvas.owner == i
        area = int(mask.sum())
        if area < min_area:
            continue
        kps = keypoint_visibility(canvas, body, scale, joints, i)
        out.append(PersonLabel(i, kps, box_of(mask), area, mask))
    return out


def crowd_index(labels: list[PersonLabel]) -> float:
    """CrowdPose's crowd index: mean over persons of (other persons' labelled keypoints inside
    this person's box) / (this person's labelled keypoints)."""
    ratios = []
    for a in labels:
        n_a = a.num_keypoints
        if n_a == 0:
            continue
        x, y, w, h = a.bbox
        n_b = 0
        for b in labels:
            if b is a:
                continue
            k = b.keypoints[b.keypoints[:, 2] > 0]
            inside = (k[:, 0] >= x) & (k[:, 0] <= x + w) & (k[:, 1] >= y) & (k[:, 1] <= y + h)
            n_b += int(inside.sum())
        ratios.append(n_b / n_a)
    return float(np.mean(ratios)) if ratios else 0.0


def coco_annotation(label: PersonLabel, ann_id: int, image_id: int) -> dict[str, Any]:
    """One COCO `annotations` entry; v = 0 keypoints are written as 0, 0, 0."""
    kps: list[float | int] = []
    for x, y, v in label.keypoints:
        kps += [round(float(x), 2), round(float(y), 2), int(v)] if v > 0 else [0, 0, 0]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "keypoints": kps,
        "num_keypoints": label.num_keypoints,
        "bbox": [round(float(c), 2) for c in label.bbox],
        "area": float(label.area),
        "iscrowd": 0,
        "segmentation": rle(label.mask),
    }


def visibility_counts(labels: list[PersonLabel], num_keypoints: int) -> npt.NDArray[np.int64]:
    """(K, 3) counts of v = 0, 1, 2 per keypoint."""
    counts = np.zeros((num_keypoints, 3), np.int64)
    for lab in labels:
        v = lab.keypoints[:, 2].astype(int)
        counts[np.arange(num_keypoints), v] += 1
    return counts
