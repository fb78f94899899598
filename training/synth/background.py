"""Cluttered, textured backgrounds: a wall or sky over a floor or ground, textured patches, flat
shapes, skin-coloured limb-like distractors, soft lighting and a little defocus.

Drawn with Pillow (C loops), so a 640x480 background costs a few milliseconds. The texture bank
is built once per process from a fixed seed, so every worker draws the same textures.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from training.synth.figure import SKIN_TONES, random_color

F32 = npt.NDArray[np.float32]
TILE = 96


def _rgb(c: npt.ArrayLike) -> tuple[int, int, int]:
    a = np.clip(np.asarray(c, dtype=np.float64) * 255, 0, 255).astype(int)
    return int(a[0]), int(a[1]), int(a[2])


@lru_cache(maxsize=1)
def texture_bank() -> tuple[Image.Image, ...]:
    """Greyscale texture tiles (TILE x TILE, 'L'): stripes, checks, bricks, blotches, grain."""
    rng = np.random.default_rng(1234)
    y, x = np.mgrid[0:TILE, 0:TILE].astype(np.float64)
    tiles = []
    for period in (6, 12, 24):
        tiles.append(np.sin(2 * np.pi * x / period) > 0)
        tiles.append((np.sin(2 * np.pi * x / period) > 0) ^ (np.sin(2 * np.pi * y / period) > 0))
    row = (y // 12).astype(int)
    tiles.append(((y % 12) < 1.5) | (((x + 16 * (row % 2)) % 32) < 1.5))  # bricks
    for cells in (4, 8, 16):
        small = rng.random((cells, cells))
        big = Image.fromarray((small * 255).astype(np.uint8)).resize(
            (TILE, TILE), Image.Resampling.BICUBIC
        )
        tiles.append(np.asarray(big) / 255.0)
    tiles.append(rng.random((TILE, TILE)))  # grain
    tiles.append(0.5 + 0.5 * np.sin(x / 3 + 2 * np.sin(y / 11)))  # wood-like waves
    out = []
    for t in tiles:
        t = np.asarray(t, dtype=np.float64)
        out.append(Image.fromarray((120 + 135 * t).astype(np.uint8), "L"))
    return tuple(out)


def _gradient(rng: np.random.Generator, h: int, w: int, horizon: int) -> Image.Image:
    top, mid = (random_color(rng, sat=(0.0, 0.5)) for _ in range(2))
    floor_a, floor_b = (random_color(rng, sat=(0.0, 0.6)) * 0.8 for _ in range(2))
    t = np.linspace(0, 1, h)[:, None]
    upper = top + (mid - top) * np.clip(t * h / max(horizon, 1), 0, 1)
    lower = floor_a + (floor_b - floor_a) * np.clip((t * h - horizon) / max(h - horizon, 1), 0, 1)
    col = np.where(t * h < horizon, upper, lower)  # (h, 3)
    column = Image.fromarray(np.ascontiguousarray((col * 255).astype(np.uint8)[:, None, :]))
    return column.resize((w, h), Image.Resampling.NEAREST)


def _floor_lines(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, horizon: int
) -> None:
    """Perspective tiles: lines from a vanishing point on the horizon, and receding rows."""
    col = _rgb(rng.uniform(0.1, 0.9, 3))
    vx = rng.uniform(0.2, 0.8) * w
    for k in range(-12, 13):
        draw.line([(vx, horizon), (vx + k * w * 0.25, h)], fill=col, width=1)
    y = horizon + 2.0
    while y < h:
        draw.line([(0, y), (w, y)], fill=col, width=1)
        y += max((y - horizon) * 0.35, 2.0)


def _patch(img: Image.Image, rng: np.random.Generator, w: int, h: int) -> None:
    """A tinted texture patch (a poster, a rug, a window, a hedge) in a rectangle or ellipse."""
    bank = texture_bank()
    tile = bank[int(rng.integers(len(bank)))]
    pw, ph = (int(v) for v in rng.uniform(0.08, 0.5, 2) * np.array([w, h]) + 4)
    zoom = rng.uniform(0.5, 2.5)
    tw, th = max(int(pw / zoom), 2), max(int(ph / zoom), 2)
    x0, y0 = (int(v) for v in rng.integers(0, TILE - 1, 2))
    crop = tile.crop((x0, y0, x0 + min(tw, TILE - x0), y0 + min(th, TILE - y0))).resize((pw, ph))
    tint = random_color(rng, sat=(0.0, 0.7))
    color = Image.merge("RGB", [crop.point(_scale_lut(g)) for g in tint])
    mask = Image.new("L", (pw, ph), 0)
    shape = ImageDraw.Draw(mask)
    if rng.random() < 0.5:
        shape.rectangle([0, 0, pw - 1, ph - 1], fill=255)
    else:
        shape.ellipse([0, 0, pw - 1, ph - 1], fill=255)
    img.paste(color, (int(rng.integers(-pw // 2, w)), int(rng.integers(-ph // 2, h))), mask)


def _scale_lut(gain: float) -> list[int]:
    return (np.arange(256) * gain).astype(int).tolist()  # type: ignore[no-any-return]


def _shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    """A flat object: box, disc, polygon, thick line, or a skin-coloured limb-like stick."""
    kind = rng.choice(
        ["rect", "frame", "ellipse", "poly", "line", "limb"], p=[0.25, 0.1, 0.15, 0.2, 0.15, 0.15]
    )
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    size = rng.uniform(0.03, 0.3) * min(w, h)
    fill = _rgb(random_color(rng, sat=(0.0, 0.7)))
    if kind == "frame":  # a window or a door: an outline with a cross bar
        a, lw = rng.uniform(0.5, 2), max(int(size * 0.06), 1)
        x1, y1 = cx + size * a, cy + size * rng.uniform(1, 2)
        draw.rectangle([cx, cy, x1, y1], outline=fill, width=lw)
        draw.line([(cx, (cy + y1) / 2), (x1, (cy + y1) / 2)], fill=fill, width=lw)
        draw.line([((cx + x1) / 2, cy), ((cx + x1) / 2, y1)], fill=fill, width=lw)
    elif kind == "rect":
        a = rng.uniform(0.3, 3)
        draw.rectangle([cx, cy, cx + size * a, cy + size], fill=fill)
    elif kind == "ellipse":
        draw.ellipse([cx, cy, cx + size * rng.uniform(0.5, 2), cy + size], fill=fill)
    elif kind == "poly":
        ang = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
        rad = size * rng.uniform(0.5, 1, len(ang))
        draw.polygon(
            [(cx + r * np.cos(t), cy + r * np.sin(t)) for r, t in zip(rad, ang, strict=True)],
            fill=fill,
        )
    else:
        t = rng.uniform(0, np.pi)
        dx, dy = size * np.cos(t), size * np.sin(t)
        width = max(int(size * rng.uniform(0.08, 0.25)), 1)
        if kind == "limb":
            fill = _rgb(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))] * rng.uniform(0.7, 1.0))
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=fill, width=width, joint="curve")
        r = width / 2
        for px, py in ((cx - dx, cy - dy), (cx + dx, cy + dy)):
            draw.ellipse([px - r, py - r, px + r, py + r], fill=fill)


def make_background(rng: np.random.Generator, w: int, h: int) -> F32:
    """A cluttered background, (h, w, 3) float32 in [0, 1]."""
    horizon = int(rng.uniform(0.2, 0.7) * h)
    img = _gradient(rng, h, w, horizon)
    draw = ImageDraw.Draw(img)
    if rng.random() < 0.5:
        _floor_lines(draw, rng, w, h, horizon)
    clutter = float(rng.uniform(0.5, 1.5)) * (w * h) ** 0.5 / 25
    for _ in range(int(rng.poisson(clutter * 0.5))):
        _patch(img, rng, w, h)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.poisson(clutter))):
        _shape(draw, rng, w, h)
    if rng.random() < 0.7:  # defocus; a box blur costs a third of a Gaussian one in Pillow
        img = img.filter(ImageFilter.BoxBlur(float(rng.uniform(0.5, 2.0))))
    # Uneven light: a smooth multiplicative field.
    light = Image.fromarray((rng.uniform(0.65, 1.0, (3, 4)) * 255).astype(np.uint8), "L")
    light = light.resize((w, h), Image.Resampling.BILINEAR).convert("RGB")
    img = ImageChops.multiply(img, light)
    out: F32 = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
    return out
