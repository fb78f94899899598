"""Scene composition: who stands where, at what size and depth; occluders; light; camera effects.

`plan_scene` makes every random choice of an image; `render_scene` draws a plan deterministically,
optionally only some of its persons (the tests re-render one person alone to check that a pixel
labelled visible really shows that person). Depth: each person and each free-standing occluder
gets its own depth layer (LAYER pixels apart), nearer the viewer the larger and lower in the
image a person stands, so the depth buffer orders whole people and the body's own depth orders
its parts.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

from training.synth.background import make_background
from training.synth.body import Body3D, J, pose_body, sample_pose, sample_shape, view_rotation
from training.synth.figure import Look, draw_person, random_color, sample_look
from training.synth.render import (
    OCCLUDER,
    Canvas,
    Light,
    Material,
    draw_capsule,
    draw_polygon,
    grain_tile,
)

F64 = npt.NDArray[np.float64]
LAYER = 4096.0  # depth between layers; a body is never that deep in pixels


@dataclass(frozen=True)
class Person:
    body: Body3D  # joints in pixels (x, y, z)
    scale: float  # standing height in pixels
    look: Look
    yaw: float  # degrees: 0 faces the camera, ±90 profile, ±180 faces away


@dataclass(frozen=True)
class Occluder:
    kind: str  # box | counter (polygons) | pole | ball (capsules)
    points: F64  # (N, 3) polygon corners, or (2, 3) capsule ends
    radius: float
    material: Material
    held: bool = False  # carried in a person's hand


@dataclass(frozen=True)
class Finish:
    """Camera effects applied after drawing."""

    gain: F64  # (3,) white balance and exposure
    gamma: float
    noise: float
    noise_shift: tuple[int, int]
    blur: float
    jpeg_quality: int


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: npt.NDArray[np.float32]
    persons: tuple[Person, ...]
    occluders: tuple[Occluder, ...]
    light: Light
    finish: Finish


def _yaw(rng: np.random.Generator) -> float:
    """Views: 45% frontal, 30% side, 25% from behind."""
    u = rng.random()
    sign = 1 if rng.random() < 0.5 else -1
    if u < 0.45:
        return float(rng.uniform(-50, 50))
    if u < 0.75:
        return sign * float(rng.uniform(50, 130))
    return sign * float(rng.uniform(130, 180))


def _heights(rng: np.random.Generator, n: int, h: int) -> tuple[F64, F64, F64]:
    """Per person: standing height in pixels, x of the body centre (fraction of width), top of the
    head (fraction of height). Crowds stand together at similar sizes; some are close-ups whose
    legs leave the frame; feet are mostly in the lower half, sometimes below the border."""
    if n >= 2 and rng.random() < 0.5:
        base = h * np.exp(rng.uniform(np.log(0.35), np.log(1.0)))
        sizes = base * rng.uniform(0.8, 1.2, n)
        xs = rng.uniform(0.2, 0.8) + rng.normal(0, 0.12 * np.sqrt(n), n) * base / h
    else:
        sizes = h * np.exp(rng.uniform(np.log(0.2), np.log(1.1), n))
        wide = rng.random(n) < 0.15
        xs = np.where(wide, rng.uniform(-0.08, 1.08, n), rng.uniform(0.05, 0.95, n))
    close = rng.random(n) < 0.1
    sizes = np.where(close, h * rng.uniform(1.2, 2.0, n), sizes)
    rel = sizes / h
    bottoms = rng.uniform(0.5, 1.25, n)
    # A person too tall for the frame loses the legs, and only sometimes the top of the head.
    cut_head = rng.random(n) < 0.2
    highest = np.where(cut_head, -rng.uniform(0, 0.1, n) * rel, rng.uniform(0, 0.05, n))
    tops = np.maximum(bottoms - rel, highest)
    tops = np.where(close, rng.uniform(-0.05, 0.12, n), tops)
    return sizes, xs, tops


def _place(body: Body3D, scale: float, x: float, top: float, z: float) -> Body3D:
    head_top = body.joints[J.HEAD, 1] - body.shape.head_r
    t = np.array([x, top - head_top * scale, z])
    return replace(
        body, joints=body.joints * scale + t, torso_corners=body.torso_corners * scale + t
    )


def _person(rng: np.random.Generator, scale: float, x: float, top: float, z: float) -> Person:
    shape, pose = sample_shape(rng), sample_pose(rng)
    roll = rng.normal(0, 4) if rng.random() > 0.04 else rng.normal(0, 50)  # a few fall or lie
    yaw = _yaw(rng)
    view = view_rotation(yaw, float(np.clip(rng.normal(0, 8), -25, 25)), float(roll))
    body = pose_body(shape, pose).rotated(view)
    body = replace(body, joints=body.joints - body.joints[J.PELVIS])
    return Person(_place(body, scale, x, top, z), scale, sample_look(rng), yaw)


def _material(rng: np.random.Generator, scale: float) -> Material:
    pattern = str(rng.choice(["plain", "plain", "bands", "stripes", "checks"]))
    return Material(
        color=random_color(rng),
        pattern=pattern,
        color2=random_color(rng),
        period=float(rng.uniform(0.03, 0.2) * scale),
        grain=float(rng.uniform(0.02, 0.08)),
        gloss=float(rng.uniform(0, 0.2)),
    )


def held_object(rng: np.random.Generator, person: Person) -> Occluder:
    """Something carried in one hand (a bag, a phone, a cup, a ball), just in front of it."""
    s, side = person.scale, int(rng.integers(2))
    wrist, tip = person.body.joints[J.L_WRIST + side], person.body.joints[J.L_HAND + side]
    c = wrist + rng.uniform(0.2, 0.7) * (tip - wrist)
    r = s * rng.uniform(0.03, 0.08)
    c[2] = max(wrist[2], tip[2]) + r + 0.03 * s
    if rng.random() < 0.4:
        return Occluder("ball", np.stack([c, c]), float(r), _material(rng, s), held=True)
    bw, bh = r * rng.uniform(0.5, 1.2), r * rng.uniform(0.8, 1.5)
    corners = np.array([[-bw, -bh], [bw, -bh], [bw, bh], [-bw, bh]]) + c[:2]
    box = np.column_stack([corners, np.full(4, c[2])])
    return Occluder("box", box, 1.0, _material(rng, s), held=True)


def _occluder(rng: np.random.Generator, target: Person, z: float, w: int, h: int) -> Occluder:
    """An object in front of a person: a box, a ball, a pole, or a counter hiding the legs."""
    s = target.scale
    kind = str(rng.choice(["box", "ball", "pole", "counter"], p=[0.35, 0.15, 0.2, 0.3]))
    mat = _material(rng, s)
    j = [J.L_WRIST, J.R_WRIST, J.L_ANKLE, J.R_ANKLE, J.L_KNEE, J.R_KNEE, J.L_ELBOW, J.PELVIS]
    cx, cy = target.body.joints[int(rng.choice(j)), :2] + rng.normal(0, 0.05 * s, 2)
    if kind == "ball":
        c = np.array([cx, cy, z])
        return Occluder(kind, np.stack([c, c]), float(s * rng.uniform(0.04, 0.12)), mat)
    if kind == "pole":
        r = s * rng.uniform(0.015, 0.05)
        ends = np.array([[cx, -10.0, z], [cx + rng.normal(0, 0.05) * h, h + 10.0, z]])
        return Occluder(kind, ends, r, mat)
    if kind == "counter":
        top = float(target.body.joints[int(rng.choice([J.L_KNEE, J.PELVIS, J.L_ANKLE])), 1])
        top += rng.normal(0, 0.05 * s)
        x0, x1 = sorted(rng.uniform(-0.2, 1.2, 2) * w)
        x0, x1 = min(x0, cx - 0.2 * s), max(x1, cx + 0.2 * s)
        pts = [[x0, top, z], [x1, top, z], [x1, h + 10.0, z], [x0, h + 10.0, z]]
        return Occluder(kind, np.array(pts), 2.0, mat)
    bw, bh = s * rng.uniform(0.06, 0.3, 2)
    t = np.radians(rng.normal(0, 10))
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    corners = np.array([[-bw, -bh], [bw, -bh], [bw, bh], [-bw, bh]]) @ rot.T + [cx, cy]
    return Occluder(kind, np.column_stack([corners, np.full(4, z)]), 2.0, mat)


def plan_scene(
    rng: np.random.Generator, width: int, height: int, persons: tuple[int, int]
) -> Scene:
    """All the random choices of one image."""
    background = make_background(rng, width, height)
    n = int(rng.integers(persons[0], persons[1] + 1))
    sizes, xs, tops = _heights(rng, n, height)
    order = np.argsort(tops + sizes / height, kind="stable")  # feet lower in the image = nearer
    n_occ = int(min(rng.poisson(0.8), 3))
    layer_of = {int(p): i * 2 for i, p in enumerate(order)}  # odd layers are for occluders
    people = [
        _person(
            rng, float(sizes[i]), float(xs[i] * width), float(tops[i] * height), layer_of[i] * LAYER
        )
        for i in range(n)
    ]
    occluders = [held_object(rng, p) for p in people if rng.random() < 0.25]
    for _ in range(n_occ if n else 0):
        target = int(rng.integers(n))
        z = (layer_of[target] + (1 if rng.random() < 0.75 else -1)) * LAYER
        occluders.append(_occluder(rng, people[target], z, width, height))
    d = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.9, -0.2), rng.uniform(0.5, 1.0)])
    light = Light(
        d / np.linalg.norm(d), float(rng.uniform(0.35, 0.6)), float(rng.uniform(0.45, 0.8))
    )
    finish = Finish(
        gain=rng.uniform(0.85, 1.15, 3) * rng.uniform(0.8, 1.2),
        gamma=float(rng.uniform(0.8, 1.25)),
        noise=float(rng.uniform(0, 0.05)),
        noise_shift=(int(rng.integers(64)), int(rng.integers(64))),
        blur=float(rng.uniform(0.3, 1.0)) if rng.random() < 0.25 else 0.0,
        jpeg_quality=int(rng.integers(70, 96)),
    )
    return Scene(width, height, background, tuple(people), tuple(occluders), light, finish)


def render_scene(
    scene: Scene, only: Collection[int] | None = None, occluders: bool = True
) -> Canvas:
    """Draw the plan: background, persons (all, or those in `only`), occluders. The depth
    buffer decides what is in front; drawing far to near only makes anti-aliased edges blend
    over what is really behind them."""
    canvas = Canvas.from_background(scene.background.copy())
    draws: list[tuple[float, Callable[[], None]]] = []
    for i, p in enumerate(scene.persons):
        if only is None or i in only:
            draw_p = partial(draw_person, canvas, p.body, p.scale, p.look, scene.light, i)
            draws.append((float(p.body.joints[J.PELVIS, 2]), draw_p))
    for k, o in enumerate(scene.occluders if occluders else ()):
        draw: Callable[[], None]
        if o.kind in ("box", "counter"):
            args = (canvas, o.points, o.radius, o.material, scene.light, OCCLUDER, k)
            draw = partial(draw_polygon, *args, bevel=0.2)
        else:
            a, b = o.points
            draw = partial(
                draw_capsule, canvas, a, b, o.radius, o.radius, o.material, scene.light, OCCLUDER, k
            )
        draws.append((float(o.points[:, 2].max()), draw))
    for _, draw in sorted(draws, key=lambda d: d[0]):
        draw()
    return canvas


def finish_image(scene: Scene, rgb: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Camera effects: white balance, sensor noise, gamma, slight blur -> uint8 (H, W, 3)."""
    f = scene.finish
    out = rgb * (f.gain * 255).astype(np.float32)
    if f.noise > 0:
        tile = grain_tile() * np.float32(f.noise * 255)
        reps = (scene.height // 64 + 2, scene.width // 64 + 2)
        dy, dx = f.noise_shift
        out += np.tile(tile, reps)[dy : dy + scene.height, dx : dx + scene.width, None]
    out += np.float32(0.5)
    np.clip(out, 0, 255, out=out)
    img = Image.fromarray(out.astype(np.uint8))
    gamma = (255 * (np.arange(256) / 255) ** f.gamma + 0.5).astype(np.uint8).tolist()
    img = img.point(gamma * 3)
    if f.blur > 0:
        img = img.filter(ImageFilter.BoxBlur(f.blur))
    return np.asarray(img, dtype=np.uint8)
