"""Crop geometry of top-down pose estimation, vectorised over persons (pure numpy).

Follows the official HRNet code (`../shared/reference/official-topdown-facts.md` §3): a person box
becomes a (center, scale) pair in units of pixel_std = 200, grown to the network's aspect ratio
and padded by 1.25; the crop is a similarity transform that maps the center to (w/2, h/2) and
200·scale_x image pixels to the output width. Pixel centres are at integer coordinates, as in
OpenCV. Sizes are (h, w); points are (x, y).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
PIXEL_STD = 200.0
PADDING = 1.25


def clean_gt_boxes(boxes_xywh: npt.ArrayLike, image_hw: tuple[int, int]) -> F64:
    """Official ground-truth box cleaning (coco.py:164-171): clip to the image, and the box used
    is [x1, y1, x2 - x1, y2 - y1] with x2 = x1 + w - 1, so an unclipped box ends 1 px narrower.
    Detector boxes are used raw; do not clean them. (N, 4) -> (N, 4)."""
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    h, w = image_hw
    x1 = np.maximum(0.0, b[:, 0])
    y1 = np.maximum(0.0, b[:, 1])
    x2 = np.minimum(w - 1.0, x1 + np.maximum(0.0, b[:, 2] - 1))
    y2 = np.minimum(h - 1.0, y1 + np.maximum(0.0, b[:, 3] - 1))
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)


def box_to_center_scale(
    boxes_xywh: npt.ArrayLike,
    aspect_ratio: float,
    padding: float = PADDING,
    pixel_std: float = PIXEL_STD,
) -> tuple[F64, F64]:
    """(N, 4) [x, y, w, h] -> centers (N, 2), scales (N, 2).

    center = (x + w/2, y + h/2) with no ±1 correction; the box grows (never shrinks) to
    `aspect_ratio` = input_w / input_h; scale = [w, h] / pixel_std * padding (coco.py:214-229).
    """
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    w, h = b[:, 2].copy(), b[:, 3].copy()
    centers = np.stack([b[:, 0] + 0.5 * w, b[:, 1] + 0.5 * h], axis=1)
    wide = w > aspect_ratio * h
    h = np.where(wide, w / aspect_ratio, h)
    w = np.where(~wide, h * aspect_ratio, w)
    scales = np.stack([w, h], axis=1) / pixel_std * padding
    return centers, scales


def affine_matrices(
    centers: npt.ArrayLike,
    scales: npt.ArrayLike,
    rotations_deg: npt.ArrayLike | None,
    output_hw: tuple[int, int],
    inverse: bool = False,
    pixel_std: float = PIXEL_STD,
) -> F64:
    """Crop transforms (N, 2, 3), image -> output (or output -> image with `inverse`).

    The closed form of the official get_affine_transform: only scale_x is used; the map is
    dst = s·R(-θ)·(src - center) + (w/2, h/2) with s = w_out / (pixel_std·scale_x) and
    R(θ) = [[cos, -sin], [sin, cos]], the rotation convention of the official code.
    """
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    sc = np.asarray(scales, dtype=np.float64).reshape(-1, 2)
    n = len(c)
    rot = np.zeros(n) if rotations_deg is None else np.broadcast_to(rotations_deg, (n,))
    th = np.deg2rad(np.asarray(rot, dtype=np.float64))
    cs, sn = np.cos(th), np.sin(th)
    out_h, out_w = output_hw
    s = out_w / (pixel_std * sc[:, 0])  # (N,)
    dst_c = np.array([out_w / 2.0, out_h / 2.0])
    m = np.empty((n, 2, 3))
    if not inverse:
        a = s[:, None, None] * np.stack([np.stack([cs, sn], 1), np.stack([-sn, cs], 1)], 1)
        m[:, :, :2] = a
        m[:, :, 2] = dst_c - np.einsum("nij,nj->ni", a, c)
    else:
        a = (1.0 / s)[:, None, None] * np.stack([np.stack([cs, -sn], 1), np.stack([sn, cs], 1)], 1)
        m[:, :, :2] = a
        m[:, :, 2] = c - np.einsum("nij,j->ni", a, dst_c)
    return m


def transform_points(points: npt.ArrayLike, matrices: npt.ArrayLike) -> F64:
    """Apply (N, 2, 3) affine matrices to points (N, K, 2) -> (N, K, 2)."""
    p = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrices, dtype=np.float64)
    out: F64 = np.einsum("nij,nkj->nki", m[:, :, :2], p) + m[:, None, :, 2]
    return out


def heatmap_to_image(
    coords: npt.ArrayLike,
    centers: npt.ArrayLike,
    scales: npt.ArrayLike,
    heatmap_hw: tuple[int, int],
    rotations_deg: npt.ArrayLike | None = None,
) -> F64:
    """Back-project heatmap coordinates (N, K, 2) to image pixels (official transform_preds:
    the inverse of the crop transform built at heatmap size)."""
    inv = affine_matrices(centers, scales, rotations_deg, heatmap_hw, inverse=True)
    return transform_points(coords, inv)


def warp_affine(
    image: npt.NDArray[np.uint8], matrices: npt.ArrayLike, output_hw: tuple[int, int]
) -> npt.NDArray[np.uint8]:
    """Bilinear crops of one image, like cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT 0).

    image: (H, W, C) uint8, C <= 4; matrices: (N, 2, 3) image -> crop. Returns (N, h, w, C)
    uint8. Samples that fall partly outside the image blend with the zero border, as OpenCV
    does. A crop that reads a small window of the image copies that window with two zero pixels
    around it, channels packed in one uint32, so each of the four taps is one gather with no
    bounds checks; a crop that shrinks a large region reads its taps straight from the image.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    H, W, C = img.shape
    if C > 4:
        raise ValueError(f"at most 4 channels, got {C}")
    m = np.asarray(matrices, dtype=np.float64).reshape(-1, 2, 3)
    out_h, out_w = output_hw
    out = np.zeros((len(m), out_h, out_w, C), np.uint8)
    inv = _invert_affine(m) if len(m) else m  # crop -> image
    gx = np.arange(out_w, dtype=np.float64)[None, :]
    gy = np.arange(out_h, dtype=np.float64)[:, None]
    for i, a in enumerate(inv):
        sx = (a[0, 0] * gx + a[0, 1] * gy + a[0, 2]).astype(np.float32)
        sy = (a[1, 0] * gx + a[1, 1] * gy + a[1, 2]).astype(np.float32)
        x0f = np.floor(sx)
        y0f = np.floor(sy)
        fx = sx - x0f
        fy = sy - y0f
        # the window the taps fall in, two zero pixels beyond the image on each side
        x_lo = int(np.clip(x0f.min(), -2, W))
        x_hi = max(int(np.clip(x0f.max() + 2, -2, W + 2)), x_lo + 2)
        y_lo = int(np.clip(y0f.min(), -2, H))
        y_hi = max(int(np.clip(y0f.max() + 2, -2, H + 2)), y_lo + 2)
        if (x_hi - x_lo) * (y_hi - y_lo) <= 4 * out_h * out_w:
            planes = _taps_from_window(img, x0f, y0f, (x_lo, x_hi, y_lo, y_hi))
        else:
            planes = _taps_from_image(img, x0f, y0f)
        for k, (p00, p01, p10, p11) in enumerate(planes):
            # top + fy * (bottom - top) with top = p00 + fx * (p01 - p00) and bottom likewise,
            # in place in the planes (fresh arrays): the same operations without temporaries
            p01 -= p00
            p01 *= fx
            p01 += p00
            p11 -= p10
            p11 *= fx
            p11 += p10
            p11 -= p01
            p11 *= fy
            p11 += p01
            out[i, :, :, k] = np.clip(np.rint(p11, out=p11), 0, 255, out=p11)
    return out


_Taps = list[tuple[F32, F32, F32, F32]]  # per channel: the four taps, zero outside the image


def _taps_from_window(
    img: npt.NDArray[np.uint8], x0f: F32, y0f: F32, box: tuple[int, int, int, int]
) -> _Taps:
    H, W, C = img.shape
    x_lo, x_hi, y_lo, y_hi = box
    win = np.zeros((y_hi - y_lo, x_hi - x_lo, 4), np.uint8)
    ys, ye, xs, xe = max(y_lo, 0), min(y_hi, H), max(x_lo, 0), min(x_hi, W)
    if ys < ye and xs < xe:
        win[ys - y_lo : ye - y_lo, xs - x_lo : xe - x_lo, :C] = img[ys:ye, xs:xe]
    ww = win.shape[1]
    flat = win.view(np.uint32).reshape(-1)
    # a tap outside the window is more than a pixel outside the image: its sample is zero
    inside = (x0f >= x_lo) & (x0f <= x_hi - 2) & (y0f >= y_lo) & (y0f <= y_hi - 2)
    x0 = np.clip(x0f, x_lo, x_hi - 2).astype(np.intp) - x_lo
    y0 = np.clip(y0f, y_lo, y_hi - 2).astype(np.intp) - y_lo
    base = y0 * ww + x0
    taps = [flat[base], flat[base + 1], flat[base + ww], flat[base + ww + 1]]
    for t in taps:
        t *= inside
    out: _Taps = []
    for k in range(C):
        shift = np.uint32(8 * (k if np.little_endian else 3 - k))
        p00, p01, p10, p11 = (((t >> shift) & 0xFF).astype(np.float32) for t in taps)
        out.append((p00, p01, p10, p11))
    return out


def _taps_from_image(img: npt.NDArray[np.uint8], x0f: F32, y0f: F32) -> _Taps:
    H, W, C = img.shape
    flat = img.reshape(H * W, C)
    x0 = x0f.astype(np.intp)
    y0 = y0f.astype(np.intp)
    taps = []
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        x, y = x0 + dx, y0 + dy
        ok = (x >= 0) & (x < W) & (y >= 0) & (y < H)
        px = flat[np.clip(y, 0, H - 1) * W + np.clip(x, 0, W - 1)]  # (h, w, C)
        taps.append(px * ok[..., None])
    out: _Taps = []
    for k in range(C):
        p = [t[..., k].astype(np.float32) for t in taps]
        out.append((p[0], p[1], p[2], p[3]))
    return out


def resize_bilinear(
    image: npt.NDArray[np.uint8], output_hw: tuple[int, int]
) -> npt.NDArray[np.uint8]:
    """Resize like cv2.resize(INTER_LINEAR): pixel centres aligned, source coordinates clamped
    to the edge, no antialiasing (Pillow's bilinear smooths when shrinking, OpenCV's does not;
    ultralytics trains its detectors on OpenCV's). Separable; (H, W, C) uint8 -> (h, w, C)."""
    img = np.asarray(image)
    H, W = img.shape[:2]
    h, w = output_hw
    if (h, w) == (H, W):
        return img.copy()

    def axis(n_out: int, n_in: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], F64]:
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        i0 = np.floor(src).astype(np.intp)
        frac = src - i0
        frac[i0 < 0] = 0.0
        i0 = np.clip(i0, 0, n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, frac

    x0, x1, fx = axis(w, W)
    y0, y1, fy = axis(h, H)
    # Only the source rows the output reads, and of them only the columns it reads (a large
    # photo letterboxed for the detector reads a small fraction of its pixels).
    cols = img[:, :, None] if img.ndim == 2 else img
    fx3 = fx.astype(np.float32)[None, :, None]
    fy3 = fy.astype(np.float32)[:, None, None]

    def horizontal(r: npt.NDArray[np.intp]) -> npt.NDArray[np.float32]:
        sel = cols[r]  # (h, W, C)
        # np.take, not sel[:, x0]: the same gather, 1.5-2x faster on (h, W, 3) uint8
        left = np.take(sel, x0, axis=1).astype(np.float32)
        right = np.take(sel, x1, axis=1).astype(np.float32)
        right -= left  # left + fx * (right - left), in place: no temporaries
        right *= fx3
        right += left
        return right  # (h, w, C)

    top, bottom = horizontal(y0), horizontal(y1)
    bottom -= top  # top + fy * (bottom - top), in place
    bottom *= fy3
    bottom += top
    out = np.clip(np.rint(bottom, out=bottom), 0, 255, out=bottom).astype(np.uint8)
    return out.reshape(h, w, *img.shape[2:])


def _invert_affine(m: F64) -> F64:
    a = m[:, :, :2]
    a_inv = np.linalg.inv(a)
    out = np.empty_like(m)
    out[:, :, :2] = a_inv
    out[:, :, 2] = -np.einsum("nij,nj->ni", a_inv, m[:, :, 2])
    return out


def flip_keypoints_horizontal(
    keypoints: npt.ArrayLike, image_width: float, flip_index: npt.NDArray[np.intp]
) -> F64:
    """Mirror keypoints (..., K, D>=2) in an image of the given width and swap left/right
    (official fliplr_joints: x -> width - 1 - x). Extra columns (visibility) follow the swap."""
    kp = np.array(keypoints, dtype=np.float64)
    kp[..., 0] = image_width - 1 - kp[..., 0]
    return kp[..., flip_index, :]
