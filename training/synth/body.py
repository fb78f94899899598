"""Articulated 3D people: proportions, joint angles within human ranges, forward kinematics.

Frames. The *body* frame has X = the person's left, Y = down, Z = the way the person faces. The
*camera* frame has x = image right, y = image down, z = towards the viewer. A person at yaw 0 faces
the camera, the two frames coincide, and the person's left appears on the image right, as in a
photograph. Lengths are in units of the person's standing height.

Proportions follow the anthropometric segment table of Drillis & Contini (as reproduced in Winter,
*Biomechanics and Motor Control of Human Movement*): shoulder line at 0.82 H, hip joints at 0.53 H,
upper arm 0.186 H, forearm 0.146 H, thigh 0.245 H, shin 0.246 H. Joints are limited to human
ranges: elbows and knees flex one way only (0-150°), shoulders and hips move inside cones that
shrink towards the back, the neck turns at most 80°.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


class J:
    """Indices of the internal joints: COCO-17's points plus the anchors the renderer needs."""

    PELVIS = 0
    L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE, L_TOE, R_TOE = 1, 2, 3, 4, 5, 6, 7, 8
    NECK_BASE = 9  # centre of the shoulder line
    L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 10, 11, 12, 13, 14, 15
    L_HAND, R_HAND = 16, 17  # finger tips
    HEAD, NOSE, L_EYE, R_EYE, L_EAR, R_EAR, TOP_HEAD, NECK = 18, 19, 20, 21, 22, 23, 24, 25
    L_HEEL, R_HEEL = 26, 27
    COUNT = 28


# Directions of the face features from the head centre, in the head frame (X left, Y down,
# Z forward). Ears point slightly forward so that a head seen from behind hides them.
FACE_DIRS: dict[int, tuple[float, float, float]] = {
    J.NOSE: (0.0, 0.16, 0.987),
    J.L_EYE: (0.36, -0.08, 0.93),
    J.R_EYE: (-0.36, -0.08, 0.93),
    J.L_EAR: (0.985, 0.02, 0.17),
    J.R_EAR: (-0.985, 0.02, 0.17),
    J.TOP_HEAD: (0.0, -1.0, 0.0),
}


@dataclass(frozen=True)
class BodyShape:
    """One person's proportions (fractions of height). Radii are half thicknesses."""

    shoulder_half: float  # half the distance between the shoulder joints
    hip_half: float  # half the distance between the hip joints
    waist_half: float  # half the pelvis breadth (the torso's lower corners)
    torso: float  # pelvis centre to the shoulder line
    neck: float  # shoulder line to the head centre
    head_r: float
    upper_arm: float
    forearm: float
    hand: float
    thigh: float
    shin: float
    foot: float
    r_upper_arm: float
    r_forearm: float
    r_hand: float
    r_thigh: float
    r_shin: float
    r_foot: float
    r_neck: float
    chest_depth: float  # half the chest's front-to-back thickness


def sample_shape(rng: np.random.Generator) -> BodyShape:
    """Average adult proportions, varied per person (girth, limb lengths, head size); a few
    children."""
    girth = rng.uniform(0.85, 1.25)
    child = rng.random() < 0.08

    def vary(x: float, sd: float = 0.04) -> float:
        return float(x * np.clip(rng.normal(1.0, sd), 1 - 2.5 * sd, 1 + 2.5 * sd))

    head = vary(0.062, 0.05) * (1.3 if child else 1.0)
    limb = 0.92 if child else 1.0
    return BodyShape(
        shoulder_half=vary(0.112) * (0.9 if child else 1.0),
        hip_half=vary(0.078),
        waist_half=vary(0.098) * girth,
        torso=vary(0.30, 0.03),
        neck=vary(0.112, 0.05) * (0.9 if child else 1.0),
        head_r=head,
        upper_arm=vary(0.186) * limb,
        forearm=vary(0.146) * limb,
        hand=vary(0.085),
        thigh=vary(0.245, 0.03) * limb,
        shin=vary(0.246, 0.03) * limb,
        foot=vary(0.13),
        r_upper_arm=0.030 * girth,
        r_forearm=0.024 * girth,
        r_hand=0.021,
        r_thigh=0.050 * girth,
        r_shin=0.034 * girth,
        r_foot=0.024,
        r_neck=0.027 * girth,
        chest_depth=0.064 * girth,
    )


@dataclass(frozen=True)
class Pose:
    """Joint angles in degrees. Sided fields are (left, right)."""

    lean: float  # torso bends forward (+) or back (-)
    side: float  # torso bends sideways
    twist: float  # shoulders turn against the hips
    head_yaw: float
    head_pitch: float  # + looks down
    head_roll: float
    arm_elev: F64  # upper arm's angle away from hanging down
    arm_azim: F64  # direction of that raise: 0 forward, 90 sideways, 180 backwards, < 0 across
    arm_twist: F64  # humeral rotation: turns the plane the elbow bends in
    elbow: F64  # flexion, 0 = straight
    wrist: F64
    leg_elev: F64
    leg_azim: F64
    leg_twist: F64
    knee: F64  # flexion, 0 = straight; the shin folds backwards
    ankle: F64  # + points the toes down
    toe_out: F64


# Human ranges (degrees). Elevation limits also depend on the azimuth, see _cone_limit.
LIMITS: dict[str, tuple[float, float]] = {
    "lean": (-20, 75),
    "side": (-25, 25),
    "twist": (-40, 40),
    "head_yaw": (-80, 80),
    "head_pitch": (-40, 50),
    "head_roll": (-30, 30),
    "arm_elev": (0, 172),
    "arm_azim": (-45, 180),
    "arm_twist": (-95, 95),
    "elbow": (0, 150),
    "wrist": (-40, 50),
    "leg_elev": (0, 120),
    "leg_azim": (-30, 180),
    "leg_twist": (-30, 30),
    "knee": (0, 150),
    "ankle": (-20, 45),
    "toe_out": (-5, 30),
}

# Largest elevation at a given azimuth: (azimuth points, elevation limits), linearly interpolated.
# Arms reach overhead forwards and sideways but only ~60° backwards; legs ~120° forwards only.
_ARM_CONE = ((-45.0, -10.0, 100.0, 130.0, 180.0), (120.0, 172.0, 172.0, 90.0, 60.0))
_LEG_CONE = ((-30.0, 20.0, 90.0, 180.0), (70.0, 120.0, 70.0, 40.0))


def _cone_limit(azim: F64, cone: tuple[tuple[float, ...], tuple[float, ...]]) -> F64:
    return np.interp(azim, cone[0], cone[1])


def _u(rng: np.random.Generator, lo: float, hi: float) -> F64:
    return rng.uniform(lo, hi, 2)


def _stand(rng: np.random.Generator) -> dict[str, F64]:
    return {
        "arm_elev": _u(rng, 3, 28),
        "arm_azim": _u(rng, -10, 80),
        "elbow": _u(rng, 0, 45),
        "leg_elev": _u(rng, 0, 12),
        "leg_azim": _u(rng, -10, 90),
        "knee": _u(rng, 0, 12),
    }


def _walk(rng: np.random.Generator, run: bool) -> dict[str, F64]:
    amp = rng.uniform(30, 55) if run else rng.uniform(12, 30)
    phase = rng.uniform(0, 2 * np.pi)
    swing = amp * np.sin(np.array([phase, phase + np.pi]))  # + = leg forward
    arm = -swing * (0.9 if run else 0.7)
    forward_leg = swing > 0
    knee = np.where(forward_leg, _u(rng, 5, 40), _u(rng, 0, 15))
    if run:
        knee = np.where(forward_leg, _u(rng, 20, 70), _u(rng, 50, 110))
    return {
        "lean": np.array([rng.uniform(8, 20) if run else rng.uniform(0, 6)]),
        "arm_elev": np.abs(arm) + _u(rng, 0, 8),
        "arm_azim": np.where(arm > 0, _u(rng, -20, 20), _u(rng, 160, 180)),
        "elbow": _u(rng, 70, 110) if run else _u(rng, 5, 40),
        "arm_twist": _u(rng, -10, 30),
        "leg_elev": np.abs(swing),
        "leg_azim": np.where(forward_leg, _u(rng, -10, 10), _u(rng, 170, 180)),
        "knee": knee,
    }


def _raise(rng: np.random.Generator) -> dict[str, F64]:
    d = _stand(rng)
    up = rng.random(2) < 0.7
    d["arm_elev"] = np.where(up, _u(rng, 60, 170), d["arm_elev"])
    d["arm_azim"] = np.where(up, _u(rng, -20, 110), d["arm_azim"])
    d["elbow"] = np.where(up, _u(rng, 0, 130), d["elbow"])
    d["arm_twist"] = np.where(up, _u(rng, -60, 90), _u(rng, -10, 20))
    return d


def _standing_arms(rng: np.random.Generator, **ranges: tuple[float, float]) -> dict[str, F64]:
    """A standing pose with these arm angles drawn, in the order given (the order of the random
    draws is part of what a seed produces)."""
    d = _stand(rng)
    d.update({k: _u(rng, lo, hi) for k, (lo, hi) in ranges.items()})
    return d


def _reach(rng: np.random.Generator) -> dict[str, F64]:
    return _standing_arms(
        rng, arm_elev=(25, 95), arm_azim=(-40, 45), elbow=(20, 135), arm_twist=(-30, 60)
    )


def _crouch(rng: np.random.Generator) -> dict[str, F64]:
    kneel = rng.random() < 0.35
    d = {
        "lean": np.array([rng.uniform(5, 45)]),
        "arm_elev": _u(rng, 10, 75),
        "arm_azim": _u(rng, -20, 45),
        "elbow": _u(rng, 20, 110),
        "leg_elev": _u(rng, 55, 110),
        "leg_azim": _u(rng, -10, 40),
        "knee": _u(rng, 60, 140),
    }
    if kneel:  # one thigh down and back, that shin folded under
        side = int(rng.integers(2))
        d["leg_elev"][side] = rng.uniform(0, 20)
        d["leg_azim"][side] = rng.uniform(150, 180)
        d["knee"][side] = rng.uniform(80, 110)
    return d


def _akimbo(rng: np.random.Generator) -> dict[str, F64]:
    return _standing_arms(
        rng, arm_elev=(30, 50), arm_azim=(60, 100), arm_twist=(-95, -75), elbow=(80, 130)
    )


def _behind(rng: np.random.Generator) -> dict[str, F64]:
    """Hands behind the back (or in back pockets)."""
    return _standing_arms(
        rng, arm_elev=(10, 35), arm_azim=(140, 180), arm_twist=(-95, -70), elbow=(50, 110)
    )


def _anything(rng: np.random.Generator) -> dict[str, F64]:
    d = {k: _u(rng, lo, hi) for k, (lo, hi) in LIMITS.items() if k.startswith(("arm", "elbow"))}
    d.update(leg_elev=_u(rng, 0, 70), leg_azim=_u(rng, -20, 180), knee=_u(rng, 0, 120))
    d["lean"] = np.array([rng.uniform(-10, 40)])
    return d


_ACTIVITIES = (
    (0.26, _stand),
    (0.20, lambda r: _walk(r, run=False)),
    (0.08, lambda r: _walk(r, run=True)),
    (0.14, _raise),
    (0.12, _reach),
    (0.10, _crouch),
    (0.04, _akimbo),
    (0.04, _behind),
    (0.06, _anything),
)


def sample_pose(rng: np.random.Generator) -> Pose:
    """An everyday pose: standing, walking, running, gesturing, reaching, crouching, or anything."""
    weights = np.array([w for w, _ in _ACTIVITIES])
    activity = _ACTIVITIES[int(rng.choice(len(weights), p=weights / weights.sum()))][1]
    d: dict[str, F64] = {
        "lean": np.array([rng.normal(3, 4)]),
        "side": np.array([rng.normal(0, 4)]),
        "twist": np.array([rng.normal(0, 10)]),
        "head_yaw": np.array([rng.normal(0, 28)]),
        "head_pitch": np.array([rng.normal(5, 12)]),
        "head_roll": np.array([rng.normal(0, 7)]),
        "arm_twist": _u(rng, -20, 40),
        "wrist": _u(rng, -25, 35),
        "leg_twist": _u(rng, -12, 12),
        "ankle": _u(rng, -10, 15),
        "toe_out": _u(rng, 0, 22),
    }
    d.update(activity(rng))
    noise = {"arm_elev": 6.0, "arm_azim": 8.0, "elbow": 6.0, "leg_elev": 3.0, "knee": 4.0}
    for k, sd in noise.items():
        d[k] = d[k] + rng.normal(0, sd, 2)
    for k, (lo, hi) in LIMITS.items():
        d[k] = np.clip(d[k], lo, hi)
    d["arm_elev"] = np.minimum(d["arm_elev"], _cone_limit(d["arm_azim"], _ARM_CONE))
    d["leg_elev"] = np.minimum(d["leg_elev"], _cone_limit(d["leg_azim"], _LEG_CONE))

    def one(k: str) -> float:
        return float(d[k][0])

    def two(k: str) -> F64:
        return np.asarray(d[k], dtype=np.float64)

    return Pose(
        lean=one("lean"),
        side=one("side"),
        twist=one("twist"),
        head_yaw=one("head_yaw"),
        head_pitch=one("head_pitch"),
        head_roll=one("head_roll"),
        arm_elev=two("arm_elev"),
        arm_azim=two("arm_azim"),
        arm_twist=two("arm_twist"),
        elbow=two("elbow"),
        wrist=two("wrist"),
        leg_elev=two("leg_elev"),
        leg_azim=two("leg_azim"),
        leg_twist=two("leg_twist"),
        knee=two("knee"),
        ankle=two("ankle"),
        toe_out=two("toe_out"),
    )


def rotation(axis: F64 | tuple[float, float, float], degrees: float) -> F64:
    """Rodrigues: the 3x3 rotation by `degrees` about `axis` (right-hand rule in x, y, z)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = np.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.asarray(np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k), dtype=np.float64)


def _align(src: F64, dst: F64) -> F64:
    """The smallest rotation taking unit vector src onto unit vector dst."""
    axis = np.cross(src, dst)
    s, c = np.linalg.norm(axis), float(np.dot(src, dst))
    if s < 1e-9:
        return np.eye(3) if c > 0 else rotation(_perpendicular(src), 180.0)
    return rotation(axis, float(np.degrees(np.arctan2(s, c))))


def _perpendicular(v: F64) -> F64:
    other = np.array([1.0, 0, 0]) if abs(v[0]) < 0.9 else np.array([0, 1.0, 0])
    p = np.cross(v, other)
    return np.asarray(p / np.linalg.norm(p), dtype=np.float64)


@dataclass(frozen=True)
class Body3D:
    """A posed body: joints (J.COUNT, 3), the torso's outline corners (4, 3: left shoulder, right
    shoulder, right hip, left hip, inset by the chest depth), and the head's rotation
    (camera-from-head, 3x3). Units of body height, origin at the pelvis."""

    joints: F64
    torso_corners: F64
    head_rot: F64
    shape: BodyShape

    def rotated(self, r: F64) -> Body3D:
        return replace(
            self,
            joints=self.joints @ r.T,
            torso_corners=self.torso_corners @ r.T,
            head_rot=r @ self.head_rot,
        )


def _limb(down: F64, fwd: F64, out: F64, elev: float, azim: float, twist: float) -> tuple[F64, F64]:
    """Direction of a limb raised `elev` from `down` towards azimuth `azim` (0 fwd, 90 out), and
    its anterior direction: the front of the limb, carried along by the raise, turned by twist."""
    e, a = np.radians(elev), np.radians(azim)
    u = np.cos(e) * down + np.sin(e) * (np.cos(a) * fwd + np.sin(a) * out)
    anterior = _align(down, u) @ fwd
    return u, rotation(u, twist) @ anterior


def _arm(p: F64, s: BodyShape, pose: Pose, chest: F64, side: int) -> F64:
    """Place one arm's joints in p; return the torso's outline corner at that shoulder."""
    sign = 1.0 if side == 0 else -1.0
    down, fwd, out = chest[:, 1], chest[:, 2], chest[:, 0] * sign
    sh = p[J.NECK_BASE] + chest @ np.array([sign * s.shoulder_half, 0.012, 0])
    elev, azim = pose.arm_elev[side], pose.arm_azim[side]
    u, ant = _limb(down, fwd, out, elev, azim, sign * pose.arm_twist[side])
    f = np.radians(pose.elbow[side])
    v = np.cos(f) * u + np.sin(f) * ant  # the elbow bends towards the front of the arm
    ant2 = -np.sin(f) * u + np.cos(f) * ant
    w = np.radians(pose.wrist[side])
    elbow = sh + s.upper_arm * u
    wrist = elbow + s.forearm * v
    p[[J.L_SHOULDER + side, J.L_ELBOW + side, J.L_WRIST + side]] = sh, elbow, wrist
    p[J.L_HAND + side] = wrist + s.hand * (np.cos(w) * v + np.sin(w) * ant2)
    return np.asarray(sh - out * s.chest_depth * 0.9, dtype=np.float64)


def _leg(p: F64, s: BodyShape, pose: Pose, hips: F64, side: int) -> F64:
    """Place one leg's joints in p; return the torso's outline corner at that hip."""
    sign = 1.0 if side == 0 else -1.0
    down, fwd, out = hips[:, 1], hips[:, 2], hips[:, 0] * sign
    hip = hips @ np.array([sign * s.hip_half, 0, 0])
    elev, azim = pose.leg_elev[side], pose.leg_azim[side]
    u, ant = _limb(down, fwd, out, elev, azim, sign * pose.leg_twist[side])
    k = np.radians(pose.knee[side])
    v = np.cos(k) * u - np.sin(k) * ant  # the knee folds the shin backwards
    shin_front = np.sin(k) * u + np.cos(k) * ant
    knee = hip + s.thigh * u
    ankle = knee + s.shin * v
    a = np.radians(pose.ankle[side])
    foot = rotation(v, -sign * pose.toe_out[side]) @ (np.cos(a) * shin_front + np.sin(a) * v)
    p[[J.L_HIP + side, J.L_KNEE + side, J.L_ANKLE + side]] = hip, knee, ankle
    p[J.L_TOE + side] = ankle + s.foot * foot + 0.035 * v
    p[J.L_HEEL + side] = ankle - 0.035 * foot + 0.03 * v
    return np.asarray(hips @ np.array([sign * (s.waist_half - s.chest_depth), 0.03, 0]))


def pose_body(shape: BodyShape, pose: Pose) -> Body3D:
    """Forward kinematics in the body frame."""
    s = shape
    X, Y, Z = np.eye(3)
    p = np.zeros((J.COUNT, 3))
    hips = rotation(Y, -pose.twist / 2)
    chest = rotation(Y, pose.twist / 2) @ rotation(Z, pose.side) @ rotation(X, -pose.lean)
    p[J.NECK_BASE] = chest @ np.array([0, -s.torso, 0])
    p[J.NECK] = p[J.NECK_BASE] + chest @ np.array([0, -0.03, 0.005])
    shoulders = [_arm(p, s, pose, chest, side) for side in (0, 1)]
    waist = [_leg(p, s, pose, hips, side) for side in (0, 1)]
    yaw, pitch, roll = (
        rotation(Y, pose.head_yaw),
        rotation(X, -pose.head_pitch),
        rotation(Z, pose.head_roll),
    )
    head_rot = chest @ yaw @ pitch @ roll
    p[J.HEAD] = p[J.NECK_BASE] + chest @ np.array([0, -s.neck, 0.012])
    # The nose tip stands out of the sphere; the top of the head is marked a little inside it.
    reach = {J.NOSE: 1.06, J.TOP_HEAD: 0.9}
    for j, d in FACE_DIRS.items():
        p[j] = p[J.HEAD] + head_rot @ np.asarray(d) * s.head_r * reach.get(j, 1.0)
    # Outline order: left shoulder, right shoulder, right hip, left hip.
    torso = np.array([shoulders[0], shoulders[1], waist[1], waist[0]])
    return Body3D(joints=p, torso_corners=torso, head_rot=head_rot, shape=shape)


def view_rotation(yaw: float, tilt: float, roll: float) -> F64:
    """Camera-from-body: turn the person by yaw (0 faces the camera, 180 faces away), look from
    above (tilt > 0) or below, and roll in the image plane."""
    return rotation((0, 0, 1), roll) @ rotation((1, 0, 0), -tilt) @ rotation((0, 1, 0), yaw)
