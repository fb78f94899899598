"""The synthetic body model and renderer: proportions, joint limits, views, depth ordering."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from training.synth.body import (
    Body3D,
    J,
    Pose,
    pose_body,
    sample_pose,
    sample_shape,
    view_rotation,
)
from training.synth.figure import draw_person, sample_look
from training.synth.labels import keypoint_visibility
from training.synth.render import Canvas, Light, Material, draw_capsule


def _bodies(n: int, seed: int = 0) -> list[tuple[Body3D, Pose]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        shape, pose = sample_shape(rng), sample_pose(rng)
        out.append((pose_body(shape, pose), pose))
    return out


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    c = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


def test_bone_lengths_follow_the_shape() -> None:
    for body, _ in _bodies(50):
        p, s = body.joints, body.shape
        for side in (0, 1):
            pairs = [
                (J.L_SHOULDER, J.L_ELBOW, s.upper_arm),
                (J.L_ELBOW, J.L_WRIST, s.forearm),
                (J.L_HIP, J.L_KNEE, s.thigh),
                (J.L_KNEE, J.L_ANKLE, s.shin),
            ]
            for a, b, length in pairs:
                assert np.linalg.norm(p[b + side] - p[a + side]) == pytest.approx(length)
        height = p[J.L_ANKLE, 1] - p[J.TOP_HEAD, 1]
        assert 0.3 < height < 1.05  # body heights; crouching people are shorter


def test_elbows_and_knees_bend_one_way_within_limits() -> None:
    for body, pose in _bodies(300, seed=1):
        p = body.joints
        for side in (0, 1):
            sh, el, wr = p[J.L_SHOULDER + side], p[J.L_ELBOW + side], p[J.L_WRIST + side]
            hip, kn, an = p[J.L_HIP + side], p[J.L_KNEE + side], p[J.L_ANKLE + side]
            assert _angle(el - sh, wr - el) <= 150.5
            assert _angle(kn - hip, an - kn) <= 150.5
            # Thigh hanging down: a bent knee sends the shin backwards (body -Z), never forwards.
            if pose.leg_elev[side] < 20 and pose.knee[side] > 30 and abs(pose.lean) < 30:
                assert (an - kn)[2] < 0
            # Arm hanging down, little humeral rotation: a bent elbow brings the forearm forwards.
            if (
                pose.arm_elev[side] < 20
                and pose.elbow[side] > 30
                and abs(pose.arm_twist[side]) < 45
            ):
                assert (wr - el)[2] > 0


def _render_one(yaw: float) -> np.ndarray:
    """One standing person at the given yaw on an empty canvas -> COCO-17 (17, 3) x, y, v."""
    rng = np.random.default_rng(4)
    shape, pose = sample_shape(rng), sample_pose(rng)
    pose = replace(
        pose, head_yaw=0.0, head_pitch=0.0, head_roll=0.0, twist=0.0, lean=0.0, side=0.0,
        arm_elev=np.array([15.0, 15.0]), arm_azim=np.array([80.0, 80.0]),
        elbow=np.array([10.0, 10.0]), leg_elev=np.zeros(2), knee=np.zeros(2),
    )  # fmt: skip
    body = pose_body(shape, pose).rotated(view_rotation(yaw, 0, 0))
    scale, t = 200.0, np.array([100.0, 110.0, 0.0])
    body = replace(
        body, joints=body.joints * scale + t, torso_corners=body.torso_corners * scale + t
    )
    canvas = Canvas.from_background(np.zeros((230, 200, 3), np.float32))
    light = Light(np.array([0.0, 0.0, 1.0]), 0.5, 0.5)
    draw_person(canvas, body, scale, sample_look(rng), light, owner=0)
    from models.keypoints import COCO17
    from training.synth.labels import JOINT_OF

    joints = [JOINT_OF[n] for n in COCO17.keypoint_names]
    return keypoint_visibility(canvas, body, scale, joints, owner=0)


NOSE, L_EYE, R_EYE, L_EAR, R_EAR, L_SH, R_SH = 0, 1, 2, 3, 4, 5, 6


def test_front_view_shows_the_face_and_left_is_image_right() -> None:
    k = _render_one(0.0)
    assert k[L_SH, 0] > k[R_SH, 0]
    assert (k[[NOSE, L_EYE, R_EYE, L_EAR, R_EAR, L_SH, R_SH], 2] == 2).all()


def test_back_view_hides_the_face_and_left_is_image_left() -> None:
    k = _render_one(180.0)
    assert k[L_SH, 0] < k[R_SH, 0]
    assert (k[[NOSE, L_EYE, R_EYE, L_EAR, R_EAR], 2] == 1).all()
    assert (k[[L_SH, R_SH], 2] == 2).all()


def test_profile_hides_the_far_side() -> None:
    k = _render_one(90.0)  # facing image right: the person's right side is towards us
    assert (k[[R_EAR, R_EYE, NOSE], 2] == 2).all()
    assert (k[[L_EAR, L_EYE, L_SH], 2] == 1).all()


def test_depth_buffer_not_draw_order_decides_who_is_in_front() -> None:
    light = Light(np.array([0.0, 0.0, 1.0]), 0.5, 0.5)
    mat = Material(color=np.array([0.5, 0.5, 0.5]))
    near = (np.array([10.0, 20, 100]), np.array([50.0, 20, 100]))
    far = (np.array([30.0, 0, 0]), np.array([30.0, 40, 0]))
    owners = []
    for order in ((near, far), (far, near)):
        c = Canvas.from_background(np.zeros((40, 60, 3), np.float32))
        for a, b in order:
            draw_capsule(c, a, b, 5, 5, mat, light, owner=0 if a[2] > 50 else 1, part=0)
        owners.append(c.owner.copy())
    np.testing.assert_array_equal(owners[0], owners[1])
    assert owners[0][20, 30] == 0  # where they cross, the near one
    assert owners[0][5, 30] == 1
    assert owners[0][20, 12] == 0
