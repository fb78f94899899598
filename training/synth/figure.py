"""What a person looks like, and drawing a posed person onto a canvas.

A person is a rounded torso slab (shirt above the belt, trousers below), capsule limbs with
sleeves and trouser legs, mitten hands, shoes, a neck, and a head: a sphere textured by its own
surface normal (hair on top and at the back, eyes, brows and mouth in front) with a nose and ears
stuck on. So the face tells which way a head faces: frontal shows two eyes and a nose, a profile
one eye and the nose on the silhouette, a head seen from behind only hair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from training.synth.body import FACE_DIRS, Body3D, J
from training.synth.render import (
    F32,
    F64,
    Canvas,
    Light,
    Material,
    SphereTexture,
    draw_capsule,
    draw_polygon,
    draw_sphere,
)


class Part:
    TORSO, HEAD, NECK = 0, 1, 2
    L_UPPER_ARM, R_UPPER_ARM, L_FOREARM, R_FOREARM, L_HAND, R_HAND = 3, 4, 5, 6, 7, 8
    L_THIGH, R_THIGH, L_SHIN, R_SHIN, L_FOOT, R_FOOT = 9, 10, 11, 12, 13, 14


SKIN_TONES = np.array(
    [
        [0.97, 0.82, 0.71],
        [0.92, 0.74, 0.60],
        [0.83, 0.62, 0.47],
        [0.68, 0.48, 0.34],
        [0.50, 0.34, 0.23],
        [0.34, 0.23, 0.15],
    ]
)
HAIR_COLORS = np.array(
    [[0.06, 0.05, 0.05], [0.20, 0.12, 0.07], [0.40, 0.26, 0.14], [0.80, 0.66, 0.40],
     [0.60, 0.60, 0.60], [0.55, 0.22, 0.10]]
)  # fmt: skip
PANTS_COLORS = np.array(
    [[0.16, 0.24, 0.45], [0.10, 0.10, 0.12], [0.62, 0.55, 0.40], [0.40, 0.40, 0.42],
     [0.25, 0.30, 0.20]]
)  # fmt: skip
PATTERNS = ("plain", "plain", "plain", "bands", "stripes", "checks", "spots")


@dataclass(frozen=True)
class Look:
    """Colours and clothes; pattern periods are in units of body height."""

    skin: F64
    hair: F64
    hair_style: str  # short | long | bald | hat
    hat: F64
    shirt: Material
    pants: Material
    shoes: Material
    sleeves: str  # none | short | long
    long_pants: bool


def random_color(rng: np.random.Generator, sat: tuple[float, float] = (0.2, 0.9)) -> F64:
    """A colour from random hue, saturation in `sat` and value 0.25-0.95."""
    h, s, v = rng.random(), rng.uniform(*sat), rng.uniform(0.25, 0.95)
    rgb = np.clip(np.abs(((h * 6 + np.array([0, 4, 2])) % 6) - 3) - 1, 0, 1)
    return np.asarray(v * (1 - s + s * rgb), dtype=np.float64)


def _cloth(rng: np.random.Generator, color: F64) -> Material:
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    return Material(
        color=color,
        pattern=pattern,
        color2=random_color(rng) if rng.random() < 0.6 else color * 0.55,
        period=float(rng.uniform(0.02, 0.06)),
        grain=float(rng.uniform(0.02, 0.07)),
    )


def sample_look(rng: np.random.Generator) -> Look:
    skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))] * rng.uniform(0.93, 1.05, 3)
    pants = PANTS_COLORS[int(rng.integers(len(PANTS_COLORS)))] * rng.uniform(0.8, 1.2, 3)
    if rng.random() < 0.3:
        pants = random_color(rng)
    shoe = np.array([0.08, 0.07, 0.07]) if rng.random() < 0.6 else random_color(rng)
    return Look(
        skin=np.clip(skin, 0, 1),
        hair=HAIR_COLORS[int(rng.integers(len(HAIR_COLORS)))] * rng.uniform(0.85, 1.15),
        hair_style=str(rng.choice(["short", "short", "short", "long", "long", "bald", "hat"])),
        hat=random_color(rng),
        shirt=_cloth(rng, random_color(rng)),
        pants=replace(_cloth(rng, np.clip(pants, 0, 1)), pattern="plain"),
        shoes=Material(color=shoe, gloss=0.25, grain=0.02),
        sleeves=str(rng.choice(["none", "short", "short", "long", "long"])),
        long_pants=bool(rng.random() < 0.75),
    )


# Hair (or a hat) covers the sphere within an angle of a direction in the head frame.
_HAIR_CAPS = {
    "short": ((0.0, -0.55, -0.84), 78.0),
    "long": ((0.0, -0.5, -0.87), 84.0),
    "bald": ((0.0, 0.25, -0.97), 50.0),
    "hat": ((0.0, -1.0, 0.1), 58.0),
}


def _head_texture(look: Look) -> SphereTexture:
    """Colour as a function of the head-frame normal (X left, Y down, Z forward)."""
    skin = look.skin.astype(np.float32)
    hair = (look.hat if look.hair_style == "hat" else look.hair).astype(np.float32)
    cap, angle = _HAIR_CAPS[look.hair_style]
    cos_cap = np.float32(np.cos(np.radians(angle)))
    eye_dirs = [np.array(FACE_DIRS[j]) for j in (J.L_EYE, J.R_EYE)]  # where the labels are
    brow_dirs = [np.array([sx * 0.34, -0.3, 0.89]) for sx in (1, -1)]

    def tex(x: F32, y: F32, z: F32) -> F32:
        hair_mask = x * cap[0] + y * cap[1] + z * cap[2] > cos_cap
        col = np.where(hair_mask[..., None], hair, skin)
        for e, b in zip(eye_dirs, brow_dirs, strict=True):
            ce = x * e[0] + y * e[1] + z * e[2]
            cb = x * b[0] + y * b[1] + z * b[2]
            col[(cb > 0.99) & ~hair_mask] = look.hair * 0.8
            col[ce > 0.988] = (0.9, 0.9, 0.88)
            col[ce > 0.995] = (0.05, 0.04, 0.04)
        mouth = (z > 0.75) & (np.abs(y - 0.42) < 0.045) & (np.abs(x) < 0.2)
        col[mouth] = look.skin * np.array([0.7, 0.35, 0.35])
        return col.astype(np.float32)

    return tex


def _scaled(mat: Material, scale: float) -> Material:
    return replace(mat, period=mat.period * scale)


# (depth, draw call): drawn far first, so anti-aliased edges blend over what is behind them.
DrawCalls = list[tuple[float, Callable[[], None]]]


def draw_person(
    canvas: Canvas, body: Body3D, scale: float, look: Look, light: Light, owner: int
) -> None:
    """Draw `body` (joints already in pixels: x, y, z) whose height is `scale` pixels."""
    p, s = body.joints, body.shape
    shirt, pants = _scaled(look.shirt, scale), _scaled(look.pants, scale)
    skin = Material(color=look.skin, grain=0.03, gloss=0.06)
    calls: DrawCalls = []

    def capsule(a: F64, b: F64, ra: float, rb: float, mat: Material, part: int) -> None:
        draw = partial(draw_capsule, canvas, a, b, ra * scale, rb * scale, mat, light, owner, part)
        calls.append(((a[2] + b[2]) / 2, draw))

    for side in (0, 1):
        sh, el, wr, hand = (p[j + side] for j in (J.L_SHOULDER, J.L_ELBOW, J.L_WRIST, J.L_HAND))
        ua, fa = Part.L_UPPER_ARM + side, Part.L_FOREARM + side
        capsule(sh, el, s.r_upper_arm, s.r_forearm * 1.05, skin, ua)
        if look.sleeves == "short":
            capsule(sh, sh + 0.5 * (el - sh), s.r_upper_arm * 1.2, s.r_upper_arm * 1.15, shirt, ua)
        elif look.sleeves == "long":
            capsule(sh, el, s.r_upper_arm * 1.08, s.r_forearm * 1.15, shirt, ua)
        forearm = shirt if look.sleeves == "long" else skin
        capsule(el, wr, s.r_forearm, s.r_forearm * 0.8, forearm, fa)
        tip = wr + 0.85 * (hand - wr)
        capsule(wr + 0.2 * (hand - wr), tip, s.r_hand, s.r_hand * 0.85, skin, Part.L_HAND + side)
        hip, kn, an = (p[j + side] for j in (J.L_HIP, J.L_KNEE, J.L_ANKLE))
        th, sn = Part.L_THIGH + side, Part.L_SHIN + side
        capsule(hip, kn, s.r_thigh, s.r_shin * 1.15, pants, th)
        shin, r_knee = (pants, 1.1) if look.long_pants else (skin, 1.0)
        capsule(kn, an, s.r_shin * r_knee, s.r_shin * 0.75, shin, sn)
        if not look.long_pants:
            capsule(hip, kn - 0.45 * (kn - hip), s.r_thigh * 1.08, s.r_thigh, pants, th)
        heel, toe = p[J.L_HEEL + side], p[J.L_TOE + side]
        capsule(heel, toe, s.r_foot, s.r_foot * 0.9, look.shoes, Part.L_FOOT + side)
    capsule(p[J.NECK_BASE], p[J.HEAD], s.r_neck * 1.2, s.r_neck, skin, Part.NECK)
    _head(calls, canvas, body, scale, look, light, owner)
    corners = body.torso_corners
    top, bottom = (corners[0] + corners[1]) / 2, (corners[2] + corners[3]) / 2
    belt = 0.8 * float(np.hypot(*(bottom - top)[:2]))
    torso = partial(
        draw_polygon, canvas, corners, s.chest_depth * scale, shirt, light, owner, Part.TORSO,
        axis=(top[:2], bottom[:2]), lower=(belt, pants),
    )  # fmt: skip
    calls.append((float(corners[:, 2].mean()), torso))
    calls.sort(key=lambda c: c[0])
    for _, draw in calls:
        draw()


def _head(
    calls: DrawCalls, canvas: Canvas, body: Body3D, scale: float, look: Look, light: Light,
    owner: int,
) -> None:  # fmt: skip
    p, s, rot = body.joints, body.shape, body.head_rot
    c, r = p[J.HEAD], s.head_r * scale

    def capsule(a: F64, b: F64, ra: float, rb: float, mat: Material) -> None:
        draw = partial(draw_capsule, canvas, a, b, ra * r, rb * r, mat, light, owner, Part.HEAD)
        calls.append(((a[2] + b[2]) / 2, draw))

    def at(x: float, y: float, z: float) -> F64:
        return np.asarray(c + rot @ np.array([x, y, z]) * r, dtype=np.float64)

    ear = Material(color=look.skin * 0.9, grain=0.03)
    for sx in (1.0, -1.0):
        capsule(at(sx * 0.9, 0.02, 0.12), at(sx * 1.08, 0.05, 0.08), 0.2, 0.17, ear)
    capsule(at(0, 0.05, 0.9), p[J.NOSE], 0.1, 0.14, Material(color=look.skin * 0.97, grain=0.02))
    if look.hair_style == "long":
        hair = Material(color=look.hair, grain=0.06, gloss=0.1)
        capsule(at(0, 0.1, -0.35), at(0, 1.5, -0.45), 0.95, 0.75, hair)
    head = partial(
        draw_sphere, canvas, c, r, rot, _head_texture(look), light, owner, Part.HEAD, gloss=0.05
    )
    calls.append((float(c[2]), head))
