"""Crop geometry of top-down pose estimation, vectorised over persons (numpy; crops and
resizing with OpenCV).

Follows the official HRNet code (`../shared/reference/official-topdown-facts.md` §3): a person box
becomes a (center, scale) pair in units of pixel_std = 200, grown to the network's aspect ratio
and padded by 1.25; the crop is a similarity transform that maps the center to (w/2, h/2) and
200·scale_x image pixels to the output width. Pixel centres are at integer coordinates, as in
OpenCV. Sizes are (h, w); points are (x, y).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

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


def half_body_box(
    points: npt.ArrayLike, aspect_ratio: float, enlarge: float = 1.5
) -> tuple[F64, F64]:
    """The official half-body crop of the joints `points` (..., M, 2): centred on their mean,
    the extent of their bounding box grown (never shrunk) to `aspect_ratio` = input_w / input_h,
    times `enlarge`, no 1.25 padding. -> centers (..., 2), scales (..., 2) in pixel_std units."""
    pts = np.asarray(points, dtype=np.float64)
    w, h = np.moveaxis(pts.max(axis=-2) - pts.min(axis=-2), -1, 0)
    wide = w > aspect_ratio * h
    h = np.where(wide, w / aspect_ratio, h)
    w = np.where(~wide, h * aspect_ratio, w)
    return pts.mean(axis=-2), np.stack([w, h], axis=-1) / PIXEL_STD * enlarge


def center_scale_to_box(centers: npt.ArrayLike, scales: npt.ArrayLike) -> F64:
    """The box x1, y1, x2, y2 (N, 4) that `box_to_center_scale` turns back into `centers` and
    `scales` (N, 2) when the scales already have the network's aspect ratio: how a crop given
    as center and scale is handed to code that takes boxes."""
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    half = np.asarray(scales, dtype=np.float64).reshape(-1, 2) * PIXEL_STD / PADDING / 2
    return np.concatenate([c - half, c + half], axis=1)


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
    """Crops of one image: `cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT 0)` per matrix, as the
    official code crops (JointsDataset.py:167-172).

    OpenCV 4.x resamples uint8 in fixed point (source positions on a 1/32-pixel grid, 15-bit
    weights); every official HRNet/SimpleBaseline/MMPose checkpoint was trained and evaluated on
    such crops, so the service and training use them too (the dependency is pinned below 5, whose
    warpAffine interpolates in floating point; tests/models/test_geometry.py checks the
    fixed-point arithmetic). image: (H, W, C) uint8; matrices: (N, 2, 3) image -> crop.
    Returns (N, h, w, C) uint8."""
    import cv2

    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    m = np.asarray(matrices, dtype=np.float64).reshape(-1, 2, 3)
    out_h, out_w = output_hw
    out = np.empty((len(m), out_h, out_w, img.shape[2]), np.uint8)
    for i, mi in enumerate(m):
        crop = cv2.warpAffine(
            img,
            mi,
            (out_w, out_h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        out[i] = crop.reshape(out_h, out_w, -1)
    return out


def resize_bilinear(
    image: npt.NDArray[np.uint8], output_hw: tuple[int, int]
) -> npt.NDArray[np.uint8]:
    """`cv2.resize(INTER_LINEAR)`: pixel centres aligned, no antialiasing (ultralytics letterboxes
    its training images with it). (H, W[, C]) uint8 -> (h, w[, C])."""
    import cv2

    img = np.asarray(image)
    h, w = output_hw
    if (h, w) == img.shape[:2]:
        return img.copy()
    out = np.asarray(cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR), dtype=np.uint8)
    return out.reshape(h, w, *img.shape[2:])


def flip_keypoints_horizontal(
    keypoints: npt.ArrayLike, image_width: float, flip_index: npt.NDArray[np.intp]
) -> F64:
    """Mirror keypoints (..., K, D>=2) in an image of the given width and swap left/right
    (official fliplr_joints: x -> width - 1 - x). Extra columns (visibility) follow the swap."""
    kp = np.array(keypoints, dtype=np.float64)
    kp[..., 0] = image_width - 1 - kp[..., 0]
    return kp[..., flip_index, :]
