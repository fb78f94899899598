"""Drawing with a depth buffer: shaded capsules, rounded convex polygons and textured spheres.

Every primitive writes three things per pixel where it is the nearest surface: the colour, the
depth (larger = nearer the viewer) and an owner label (which person or occluder, and which body
part). Labels are therefore decided by the same pixels the image shows: a keypoint is visible iff
the owner at its pixel is its person and the surface there is not in front of the joint (see
`labels.py`). Edges are anti-aliased by coverage; the labels take a pixel when coverage >= 0.5.

Pixel centres are at integer coordinates (as in OpenCV and `models.geometry`); points are
(x, y, z) with z in pixels towards the viewer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

BACKGROUND = -1  # owner of pixels nothing was drawn on
OCCLUDER = -2  # owner of pixels an occluding object covers


@dataclass
class Canvas:
    rgb: F32  # (H, W, 3) linear-ish colour in [0, 1]
    depth: F32  # (H, W) nearest surface drawn so far; -inf where nothing was drawn
    owner: npt.NDArray[np.int16]  # (H, W) person index, BACKGROUND or OCCLUDER
    part: npt.NDArray[np.int8]  # (H, W) body part (or occluder index); -1 for background

    @classmethod
    def from_background(cls, rgb: F32) -> Canvas:
        h, w = rgb.shape[:2]
        return cls(
            rgb=rgb,
            depth=np.full((h, w), -np.inf, np.float32),
            owner=np.full((h, w), BACKGROUND, np.int16),
            part=np.full((h, w), -1, np.int8),
        )

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.rgb.shape[1], self.rgb.shape[0]


@dataclass(frozen=True)
class Light:
    direction: F64  # (3,) unit vector towards the light, camera frame
    ambient: float
    diffuse: float


@dataclass(frozen=True)
class Material:
    color: F64  # (3,) base colour in [0, 1]
    pattern: str = "plain"  # plain | bands | stripes | checks | spots
    color2: F64 | None = None  # the pattern's second colour
    period: float = 8.0  # pattern period in pixels
    grain: float = 0.04  # strength of the fabric/skin noise
    gloss: float = 0.0  # specular strength


@lru_cache(maxsize=1)
def grain_tile() -> F32:
    """A fixed (64, 64) noise tile in [-1, 1]; fixed seed, so every process draws the same."""
    tile = np.random.default_rng(20220923).uniform(-1, 1, (64, 64))
    tile = (tile + np.roll(tile, 1, 0) + np.roll(tile, 1, 1)) / 2.0  # slightly soft
    return np.clip(tile, -1, 1).astype(np.float32)


@dataclass(frozen=True)
class Window:
    """The pixel window a primitive touches: slices and pixel-centre coordinates."""

    rows: slice
    cols: slice
    x: F32  # (1, w)
    y: F32  # (h, 1)


def window(canvas: Canvas, x0: float, y0: float, x1: float, y1: float) -> Window | None:
    w, h = canvas.size
    c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    c1, r1 = min(int(np.ceil(x1)) + 1, w), min(int(np.ceil(y1)) + 1, h)
    if c0 >= c1 or r0 >= r1:
        return None
    xs = np.arange(c0, c1, dtype=np.float32)[None, :]
    ys = np.arange(r0, r1, dtype=np.float32)[:, None]
    return Window(slice(r0, r1), slice(c0, c1), xs, ys)


def surface_color(mat: Material, u: F32, v: F32) -> F32:
    """The material's colour at surface coordinates (u, v) in pixels -> (h, w, 3)."""
    base = mat.color.astype(np.float32)
    g = grain_tile()
    noise: F32 = g[v.astype(np.int32) & 63, u.astype(np.int32) & 63] * np.float32(mat.grain)
    if mat.pattern == "plain" or mat.color2 is None:
        plain: F32 = base + noise[..., None]
        return plain
    k = np.float32(2 * np.pi / mat.period)
    if mat.pattern == "bands":
        mix = np.sin(u * k) > 0.3
    elif mat.pattern == "stripes":
        mix = np.sin(v * k) > 0.3
    elif mat.pattern == "checks":
        mix = (np.sin(u * k) > 0) ^ (np.sin(v * k) > 0)
    else:  # spots
        mix = np.sin(u * k) * np.sin(v * k) > 0.55
    col: F32 = np.where(mix[..., None], mat.color2.astype(np.float32), base)
    col += noise[..., None]
    return col


def shade(color: F32, nx: F32, ny: F32, nz: F32, light: Light, gloss: float = 0.0) -> F32:
    """Lambert shading (plus an optional highlight) of colours (h, w, 3) with normals (h, w)."""
    lx, ly, lz = (np.float32(c) for c in light.direction)
    lam = np.maximum(nx * lx + ny * ly + nz * lz, 0)
    out: F32 = color * (np.float32(light.ambient) + np.float32(light.diffuse) * lam)[..., None]
    if gloss > 0:
        # Blinn highlight with the viewer along +z.
        hx, hy, hz = lx, ly, lz + 1
        n = np.sqrt(hx * hx + hy * hy + hz * hz)
        spec = np.maximum((nx * hx + ny * hy + nz * hz) / n, 0) ** 12
        out += (np.float32(gloss) * spec)[..., None]
    return out


def composite(
    canvas: Canvas, win: Window, alpha: F32, depth: F32, color: F32, owner: int, part: int
) -> None:
    """Depth-tested, coverage-blended write of one primitive's pixels."""
    zb = canvas.depth[win.rows, win.cols]
    front = (alpha > 0) & (depth > zb)
    if not front.any():
        return
    a = np.where(front, alpha, 0)[..., None]
    rgb = canvas.rgb[win.rows, win.cols]
    rgb += a * (color - rgb)
    solid = front & (alpha >= 0.5)
    zb[solid] = depth[solid]
    canvas.owner[win.rows, win.cols][solid] = owner
    canvas.part[win.rows, win.cols][solid] = part


def draw_capsule(
    canvas: Canvas,
    a: F64,
    b: F64,
    ra: float,
    rb: float,
    mat: Material,
    light: Light,
    owner: int,
    part: int,
) -> None:
    """A tapered capsule (a cylinder with round ends) between points a and b (x, y, z)."""
    r = max(ra, rb)
    lo, hi = np.minimum(a[:2], b[:2]) - r - 1, np.maximum(a[:2], b[:2]) + r + 1
    win = window(canvas, lo[0], lo[1], hi[0], hi[1])
    if win is None:
        return
    ax, ay, dx, dy = (np.float32(c) for c in (a[0], a[1], b[0] - a[0], b[1] - a[1]))
    length2 = dx * dx + dy * dy
    qx, qy = win.x - ax, win.y - ay
    shape = np.broadcast_shapes(qx.shape, qy.shape)
    t = np.zeros(shape, np.float32)
    if length2 > 1e-6:
        t = np.clip((qx * dx + qy * dy) / length2, 0, 1).astype(np.float32, copy=False)
    px, py = qx - t * dx, qy - t * dy
    dist = np.sqrt(px * px + py * py)
    rad = np.float32(ra) + t * np.float32(rb - ra)
    alpha = np.clip(rad - dist + 0.5, 0, 1)
    if not alpha.any():
        return
    q = np.minimum(dist / rad, 1)
    nz = np.sqrt(1 - q * q)
    depth = np.float32(a[2]) + t * np.float32(b[2] - a[2]) + rad * nz
    length = np.sqrt(length2)
    u = t * length
    across = (px * dy - py * dx) / np.float32(max(float(length), 1e-3)) + np.float32(1000)
    v = across.astype(np.float32, copy=False)
    color = shade(surface_color(mat, u, v), px / rad, py / rad, nz, light, mat.gloss)
    composite(canvas, win, alpha, depth, color, owner, part)


def convex_hull(points: F64) -> F64:
    """Andrew's monotone chain: the hull of (N, 2) points, counter-clockwise in (x, y)."""
    pts = sorted({(float(x), float(y)) for x, y in points})
    if len(pts) < 3:
        return np.array(pts)

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    upper: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def _plane(points: F64) -> tuple[float, float, float, float, float]:
    """Affine depth z = z0 + gx (x - x0) + gy (y - y0) through (N, 3) points, by ridge-regularised
    least squares so that a polygon seen edge-on gets no spurious slope."""
    c = points.mean(axis=0)
    d = points - c
    a = d[:, :2]
    g = np.linalg.solve(a.T @ a + np.eye(2), a.T @ d[:, 2])
    return float(c[0]), float(c[1]), float(c[2]), float(g[0]), float(g[1])


def _hull_distance(win: Window, hull: F64) -> tuple[F32, F32, F32]:
    """Signed distance of the window's pixels to a convex polygon (negative inside), and the
    outward unit direction (away from the nearest edge point outside, towards it inside)."""
    shape = np.broadcast_shapes(win.x.shape, win.y.shape)
    best = np.full(shape, np.inf, np.float32)
    gx, gy = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    inside = np.full(shape, len(hull) >= 3)
    for i in range(len(hull)):
        p0, p1 = hull[i].astype(np.float32), hull[(i + 1) % len(hull)].astype(np.float32)
        ex, ey = p1[0] - p0[0], p1[1] - p0[1]
        qx, qy = win.x - p0[0], win.y - p0[1]
        l2 = ex * ex + ey * ey
        t = np.clip((qx * ex + qy * ey) / l2, 0, 1) if l2 > 1e-9 else np.float32(0)
        px, py = qx - t * ex, qy - t * ey
        d = np.sqrt(px * px + py * py)
        closer = d < best
        best = np.where(closer, d, best)
        gx, gy = np.where(closer, px, gx), np.where(closer, py, gy)
        inside &= (ex * qy - ey * qx) >= 0  # the hull is counter-clockwise in (x, y)
    sign: F32 = np.where(inside, np.float32(-1), np.float32(1))
    scale = (sign / np.maximum(best, np.float32(1e-3))).astype(np.float32, copy=False)
    return best * sign, gx * scale, gy * scale


def draw_polygon(
    canvas: Canvas,
    verts: F64,
    radius: float,
    mat: Material,
    light: Light,
    owner: int,
    part: int,
    axis: tuple[F64, F64] | None = None,
    lower: tuple[float, Material] | None = None,
    bevel: float = 0.5,
) -> None:
    """The convex hull of verts (N, 3) grown by `radius`: a slab with rounded edges, as thick as
    2 radius, whose mid-surface passes through the vertices. `axis` (two 2-D points) orients the
    surface pattern; `lower` = (u, material) switches material beyond u pixels along the axis
    (a shirt over trousers); `bevel` (in radii) is how far inside the outline the surface stays
    curved."""
    lo, hi = verts[:, :2].min(axis=0) - radius - 1, verts[:, :2].max(axis=0) + radius + 1
    win = window(canvas, lo[0], lo[1], hi[0], hi[1])
    if win is None:
        return
    sd, ux, uy = _hull_distance(win, convex_hull(verts[:, :2]))
    r = np.float32(radius)
    alpha = np.clip(r - sd + 0.5, 0, 1)
    if not alpha.any():
        return
    m = np.clip(1 - (r - sd) / (r * np.float32(1 + bevel)), 0, 1)
    nz = np.sqrt(1 - m * m)
    x0, y0, z0, sx, sy = (np.float32(c) for c in _plane(verts))
    depth = z0 + sx * (win.x - x0) + sy * (win.y - y0) + r * nz
    if axis is None:
        u, v = np.broadcast_to(win.y, sd.shape), np.broadcast_to(win.x, sd.shape)
    else:
        a, b = axis[0].astype(np.float32), axis[1].astype(np.float32)
        dx, dy = b[0] - a[0], b[1] - a[1]
        ln = max(np.hypot(dx, dy), np.float32(1e-3))
        u = ((win.x - a[0]) * dx + (win.y - a[1]) * dy) / ln
        v = ((win.x - a[0]) * dy - (win.y - a[1]) * dx) / ln + np.float32(1000)
    color = surface_color(mat, u, v)
    if lower is not None:
        below = (u > lower[0])[..., None]
        color = np.where(below, surface_color(lower[1], u, v), color)
    color = shade(color, m * ux, m * uy, nz, light, mat.gloss)
    composite(canvas, win, alpha, depth, color, owner, part)


# A texture for spheres: (head-frame normals nx, ny, nz, each (h, w)) -> colours (h, w, 3).
SphereTexture = Callable[[F32, F32, F32], F32]


def draw_sphere(
    canvas: Canvas,
    center: F64,
    radius: float,
    rot: F64,
    texture: SphereTexture,
    light: Light,
    owner: int,
    part: int,
    gloss: float = 0.0,
) -> None:
    """A sphere whose surface colour is a function of the normal in its own frame; rot is
    camera-from-object (3x3)."""
    cx, cy, cz = (float(c) for c in center)
    win = window(canvas, cx - radius - 1, cy - radius - 1, cx + radius + 1, cy + radius + 1)
    if win is None:
        return
    r = np.float32(radius)
    nx, ny = (win.x - np.float32(cx)) / r, (win.y - np.float32(cy)) / r
    rho = np.sqrt(nx * nx + ny * ny)
    alpha = np.clip((1 - rho) * r + 0.5, 0, 1)
    scale = np.maximum(rho, 1.0)  # keep the normals unit length at the anti-aliased rim
    nx, ny = nx / scale, ny / scale
    nz = np.sqrt(np.maximum(1 - nx * nx - ny * ny, 0))
    depth = np.float32(cz) + r * nz
    m = rot.astype(np.float32)
    # Object-frame normal = rot^T n.
    ox = m[0, 0] * nx + m[1, 0] * ny + m[2, 0] * nz
    oy = m[0, 1] * nx + m[1, 1] * ny + m[2, 1] * nz
    oz = m[0, 2] * nx + m[1, 2] * ny + m[2, 2] * nz
    color = shade(texture(ox, oy, oz), nx, ny, nz, light, gloss)
    composite(canvas, win, alpha, depth, color, owner, part)
