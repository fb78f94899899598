"""Heatmap codec: Gaussian targets (encode) and keypoint read-out (decode), side by side.

Coordinates: a heatmap pixel index (x, y) is the heatmap coordinate; input-pixel coordinates are
heatmap coordinates times the stride (input size / heatmap size), as in the official HRNet code
(`../shared/reference/official-topdown-facts.md` §3, §6). Sizes are (h, w), like array shapes.

Everything here is numpy and works on any number of leading batch dimensions.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Array = npt.NDArray[np.floating]


def default_sigma(heatmap_hw: tuple[int, int]) -> float:
    """Official sigmas: 2 at 64×48, 3 at 96×72; other sizes scale with the height."""
    return {64: 2.0, 96: 3.0}.get(heatmap_hw[0], heatmap_hw[0] / 32.0)


@dataclass(frozen=True)
class HeatmapCodec:
    input_hw: tuple[int, int]  # network input (h, w), e.g. (256, 192)
    heatmap_hw: tuple[int, int]  # network output (h, w), e.g. (64, 48)
    sigma: float  # Gaussian std in heatmap pixels
    unbiased: bool = False  # True: Gaussian centred at the sub-pixel position, no rounding

    @classmethod
    def for_input(
        cls,
        input_hw: tuple[int, int],
        stride: int = 4,
        sigma: float | None = None,
        unbiased: bool = False,
    ) -> HeatmapCodec:
        hm = (input_hw[0] // stride, input_hw[1] // stride)
        return cls(input_hw, hm, default_sigma(hm) if sigma is None else sigma, unbiased)

    @property
    def stride_xy(self) -> npt.NDArray[np.float64]:
        return np.array(
            [self.input_hw[1] / self.heatmap_hw[1], self.input_hw[0] / self.heatmap_hw[0]]
        )

    def encode(self, keypoints: Array, visible: Array) -> tuple[FloatArray, FloatArray]:
        """Targets for one or many persons.

        keypoints: (..., K, 2) in input pixels; visible: (..., K), > 0 means labelled.
        Returns heatmaps (..., K, h, w) float32 with peak 1, and weights (..., K) float32.
        """
        kp = np.asarray(keypoints, dtype=np.float64) / self.stride_xy
        vis = np.asarray(visible) > 0
        if self.unbiased:
            return _encode_unbiased(kp, vis, self.heatmap_hw, self.sigma)
        return _encode_official(kp, vis, self.heatmap_hw, self.sigma)

    def encode_limbs(
        self, keypoints: Array, weight: Array, edges: tuple[tuple[int, int], ...]
    ) -> tuple[FloatArray, FloatArray]:
        """Limb targets for one person: per edge (i, j), a Gaussian of each heatmap pixel's
        distance to the segment from keypoint i to keypoint j (peak 1 along it, the keypoints'
        sigma). keypoints: (K, 2) in input pixels; weight: (K,) as `encode` returns it, so an
        edge counts only where both ends do. Returns (E, h, w) float32 and weights (E,)."""
        kp = np.asarray(keypoints, dtype=np.float64) / self.stride_xy
        w = np.asarray(weight, dtype=np.float32)
        idx = np.asarray(edges, dtype=np.intp).reshape(-1, 2)
        maps = render_segments(kp[idx[:, 0]], kp[idx[:, 1]], self.heatmap_hw, self.sigma)
        limb_w = (w[idx[:, 0]] * w[idx[:, 1]]).astype(np.float32)
        maps *= (limb_w > 0)[:, None, None]
        return maps, limb_w

    def decode(
        self, heatmaps: Array, method: str = "argmax"
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(..., K, h, w) -> heatmap coordinates (..., K, 2) and scores (..., K)."""
        if method == "argmax":
            return decode_argmax(heatmaps)
        if method == "dark":
            return decode_dark(heatmaps, blur_kernel=dark_kernel_size(self.sigma))
        raise ValueError(f"unknown decode method {method!r}; use 'argmax' or 'dark'")

    def refine_at(
        self, maps: Array, x: npt.NDArray[np.intp], y: npt.NDArray[np.intp], method: str = "argmax"
    ) -> npt.NDArray[np.float64]:
        """The sub-pixel position `decode` would give a maximum found at the integer pixel
        (x, y) of each map (M, h, w) -> (M, 2): for a peak other than the global one (another
        local maximum), read the same way as the global one is."""
        flat = np.asarray(maps)
        x, y = np.asarray(x, dtype=np.intp), np.asarray(y, dtype=np.intp)
        at = np.stack([x, y], axis=1).astype(np.float64)
        valid = flat[np.arange(len(flat)), y, x] > 0
        if method == "argmax":
            return at + _quarter_step(flat, x, y, valid)
        if method == "dark":
            return at + _dark_step(flat, x, y, valid, dark_kernel_size(self.sigma))
        raise ValueError(f"unknown decode method {method!r}; use 'argmax' or 'dark'")


def render_gaussians(centers: Array, heatmap_hw: tuple[int, int], sigma: float) -> FloatArray:
    """Unnormalised Gaussians (peak 1) at sub-pixel heatmap positions.

    centers: (..., 2) as (x, y) -> (..., h, w) float32. This is G(x) of the SCIO search and the
    unbiased training target, so the verifier sees the same rendering in training and search.
    """
    c = np.asarray(centers, dtype=np.float64)
    h, w = heatmap_hw
    xs = np.arange(w, dtype=np.float64)
    ys = np.arange(h, dtype=np.float64)
    gx = np.exp(-((xs - c[..., 0:1]) ** 2) / (2 * sigma**2)).astype(np.float32)  # (..., w)
    gy = np.exp(-((ys - c[..., 1:2]) ** 2) / (2 * sigma**2)).astype(np.float32)  # (..., h)
    out: FloatArray = gy[..., :, None] * gx[..., None, :]  # the product in float32
    return out


def render_segments(
    starts: Array, ends: Array, heatmap_hw: tuple[int, int], sigma: float
) -> FloatArray:
    """(E, 2), (E, 2) heatmap coordinates -> (E, h, w) float32: exp(-d^2 / 2 sigma^2) with d a
    pixel's distance to the segment from start to end (a Gaussian where the two coincide)."""
    a = np.asarray(starts, dtype=np.float32).reshape(-1, 1, 2)
    ab = np.asarray(ends, dtype=np.float32).reshape(-1, 1, 2) - a
    h, w = heatmap_hw
    ys, xs = np.divmod(np.arange(h * w, dtype=np.float32), np.float32(w))
    ap_x, ap_y = xs[None] - a[..., 0], ys[None] - a[..., 1]  # (E, h*w): pixel minus start
    length2 = np.maximum((ab**2).sum(-1), np.float32(1e-12))  # (E, 1)
    t = np.clip((ap_x * ab[..., 0] + ap_y * ab[..., 1]) / length2, 0.0, 1.0)
    d2 = (ap_x - t * ab[..., 0]) ** 2 + (ap_y - t * ab[..., 1]) ** 2
    out: FloatArray = np.exp(d2 * np.float32(-0.5 / sigma**2)).reshape(-1, h, w)
    return out


def _encode_unbiased(
    kp: npt.NDArray[np.float64], vis: npt.NDArray[np.bool_], hw: tuple[int, int], sigma: float
) -> tuple[FloatArray, FloatArray]:
    h, w = hw
    r = 3 * sigma
    inside = (
        (kp[..., 0] > -r) & (kp[..., 0] < w - 1 + r) & (kp[..., 1] > -r) & (kp[..., 1] < h - 1 + r)
    )
    weights = (vis & inside).astype(np.float32)
    heatmaps = render_gaussians(kp, hw, sigma) * weights[..., None, None]
    return heatmaps, weights


def _encode_official(
    kp: npt.NDArray[np.float64], vis: npt.NDArray[np.bool_], hw: tuple[int, int], sigma: float
) -> tuple[FloatArray, FloatArray]:
    """The official target: centre rounded with int(x + 0.5) (truncation toward zero, as
    Python's int), Gaussian pasted inside a (6σ+1)² window, weight 0 when the window misses the
    map entirely (JointsDataset.generate_target)."""
    h, w = hw
    tmp = 3 * sigma
    size = 2 * tmp + 1
    mu = np.trunc(kp + 0.5)  # (..., K, 2)
    ul = np.trunc(mu - tmp)
    br = np.trunc(mu + tmp + 1)
    off = ul + np.floor(size / 2)  # window centre; equals mu for the integer sigmas in use
    missed = (ul[..., 0] >= w) | (ul[..., 1] >= h) | (br[..., 0] < 0) | (br[..., 1] < 0)
    weights = (vis & ~missed).astype(np.float32)

    xs = np.arange(w, dtype=np.float64)
    ys = np.arange(h, dtype=np.float64)
    in_x = (xs >= ul[..., 0:1]) & (xs < br[..., 0:1])  # (..., K, w)
    in_y = (ys >= ul[..., 1:2]) & (ys < br[..., 1:2])  # (..., K, h)
    gx = np.exp(-((xs - off[..., 0:1]) ** 2) / (2 * sigma**2)) * in_x
    gy = np.exp(-((ys - off[..., 1:2]) ** 2) / (2 * sigma**2)) * in_y
    heatmaps = gy[..., :, None] * gx[..., None, :] * weights[..., None, None]
    return heatmaps.astype(np.float32), weights


def _argmax(
    hm: Array,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """(M, h, w) -> x (M,), y (M,), max (M,); first maximum in row-major order, like np.argmax."""
    m, h, w = hm.shape
    flat = hm.reshape(m, h * w)
    idx = np.argmax(flat, axis=1)
    maxval = flat[np.arange(m), idx].astype(np.float64)
    return idx % w, idx // w, maxval


def decode_argmax(
    heatmaps: Array, quarter_shift: bool = True
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Official decoding (lib/core/inference.py): argmax, then a quarter-pixel step on each axis
    toward the higher neighbour when 1 < x < w-1 and 1 < y < h-1. Positions with max <= 0 are
    (0, 0). Score = heatmap maximum.

    heatmaps: (..., K, h, w) -> coords (..., K, 2), scores (..., K).
    """
    hm = np.asarray(heatmaps)
    lead, (h, w) = hm.shape[:-2], hm.shape[-2:]
    flat = hm.reshape(-1, h, w)
    x, y, maxval = _argmax(flat)
    coords = np.stack([x, y], axis=1).astype(np.float64)
    coords[maxval <= 0] = 0.0
    if quarter_shift:
        coords += _quarter_step(flat, x, y, maxval > 0)
    return coords.reshape(*lead, 2), maxval.reshape(lead)


def _quarter_step(
    flat: Array, x: npt.NDArray[np.intp], y: npt.NDArray[np.intp], valid: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """The official quarter-pixel step (M, 2) at integer positions (x, y) of maps (M, h, w):
    toward the higher neighbour on each axis, where 1 < x < w-1 and 1 < y < h-1 and `valid`."""
    m, h, w = flat.shape
    rows = np.arange(m)
    ok = (x > 1) & (x < w - 1) & (y > 1) & (y < h - 1) & valid
    xr, xl = np.minimum(x + 1, w - 1), np.maximum(x - 1, 0)
    yd, yu = np.minimum(y + 1, h - 1), np.maximum(y - 1, 0)
    dx = flat[rows, y, xr].astype(np.float64) - flat[rows, y, xl]
    dy = flat[rows, yd, x].astype(np.float64) - flat[rows, yu, x]
    return np.stack(
        [np.where(ok, 0.25 * np.sign(dx), 0.0), np.where(ok, 0.25 * np.sign(dy), 0.0)], axis=1
    )


def dark_kernel_size(sigma: float) -> int:
    """Blur kernel for DARK: 11 for sigma 2, 17 for sigma 3 (6σ - 1, kept odd and >= 3)."""
    k = max(3, round(6 * sigma - 1))
    return k if k % 2 == 1 else k + 1


_CV_CHANNELS = 512  # OpenCV's most channels per image


def _blur_kernel(kernel: int) -> npt.NDArray[np.float64]:
    """The normalised 1-D Gaussian of `kernel` taps, σ by OpenCV's rule for sigma=0."""
    s = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    r = kernel // 2
    t = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(t**2) / (2 * s * s))
    out: npt.NDArray[np.float64] = g / g.sum()
    return out


def gaussian_blur(heatmaps: Array, kernel: int) -> npt.NDArray[np.float64]:
    """Separable Gaussian blur with zero padding, rescaled so each map keeps its maximum.

    sigma follows OpenCV's rule for sigma=0: 0.3 * ((kernel - 1) / 2 - 1) + 0.8.
    (M, h, w) -> (M, h, w) float64.
    """
    hm = np.asarray(heatmaps, dtype=np.float64)
    g = _blur_kernel(kernel)
    m, h, w = hm.shape
    out = np.empty_like(hm)
    # OpenCV filters up to 512 channels at once: the maps go in as the channels of one image
    for i in range(0, m, _CV_CHANNELS):
        part = np.ascontiguousarray(hm[i : i + _CV_CHANNELS].transpose(1, 2, 0))
        blurred_part = cv2.sepFilter2D(
            part, cv2.CV_64F, g, g, borderType=cv2.BORDER_CONSTANT
        ).reshape(h, w, -1)
        out[i : i + _CV_CHANNELS] = blurred_part.transpose(2, 0, 1)
    orig_max = hm.reshape(m, -1).max(axis=1)
    new_max = out.reshape(m, -1).max(axis=1)
    scale = np.divide(orig_max, new_max, out=np.zeros_like(orig_max), where=new_max > 0)
    blurred: npt.NDArray[np.float64] = out * scale[:, None, None]
    return blurred


def _blurred_window(
    maps: Array, x: npt.NDArray[np.intp], y: npt.NDArray[np.intp], kernel: int
) -> npt.NDArray[np.float64]:
    """`gaussian_blur` of each map at the 5x5 pixels around (x, y), (M, 5, 5), computed from
    the (5 + kernel - 1)² patch those pixels need (zero outside the map), without the rescale
    to the original maximum: a constant factor, which the log turns into a constant that no
    difference of DARK's step sees."""
    m, h, w = maps.shape
    reach = 2 + kernel // 2
    off = np.arange(-reach, reach + 1)
    ys = y[:, None] + off  # (M, P)
    xs = x[:, None] + off
    inside = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]
    patch = np.asarray(maps)[
        np.arange(m)[:, None, None],
        np.clip(ys, 0, h - 1)[:, :, None],
        np.clip(xs, 0, w - 1)[:, None, :],
    ].astype(np.float64)
    patch *= inside  # (M, P, P), zero padding like the full-map blur
    band = _blur_band(kernel, len(off))  # (P, 5): the 1-D blur as a matrix
    out: npt.NDArray[np.float64] = band.T @ patch @ band  # (5, P) @ (M, P, P) @ (P, 5)
    return out


@functools.lru_cache(maxsize=8)
def _blur_band(kernel: int, size: int) -> npt.NDArray[np.float64]:
    """The 1-D Gaussian blur of a `size`-pixel patch, valid outputs only, as a (size,
    size - kernel + 1) matrix: column j holds the kernel's taps at rows j .. j + kernel - 1, so
    two matrix products blur a window without per-call window views."""
    g = _blur_kernel(kernel)
    band = np.zeros((size, size - kernel + 1))
    for j in range(band.shape[1]):
        band[j : j + kernel, j] = g
    band.setflags(write=False)
    return band


def decode_dark(
    heatmaps: Array, blur_kernel: int = 11
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """DARK (Zhang et al., CVPR 2020): blur, take the log, and move the argmax by one Newton
    step of the second-order Taylor expansion, -H⁻¹∇, using central differences (the second
    derivatives over a 2-pixel span). Applied when 1 < x < w-2 and 1 < y < h-2.

    heatmaps: (..., K, h, w) -> coords (..., K, 2), scores (..., K) (the unblurred maximum).
    """
    hm = np.asarray(heatmaps)
    lead, (h, w) = hm.shape[:-2], hm.shape[-2:]
    flat = hm.reshape(-1, h, w)
    x, y, maxval = _argmax(flat)
    coords = np.stack([x, y], axis=1).astype(np.float64)
    coords[maxval <= 0] = 0.0
    coords += _dark_step(flat, x, y, maxval > 0, blur_kernel)
    return coords.reshape(*lead, 2), maxval.reshape(lead)


def _dark_step(
    flat: Array,
    x: npt.NDArray[np.intp],
    y: npt.NDArray[np.intp],
    valid: npt.NDArray[np.bool_],
    blur_kernel: int,
) -> npt.NDArray[np.float64]:
    """DARK's Newton step (M, 2) at integer positions (x, y) of maps (M, h, w), where
    1 < x < w-2 and 1 < y < h-2 and `valid`; zero elsewhere."""
    m, h, w = flat.shape
    step = np.zeros((m, 2))
    ok = (x > 1) & (x < w - 2) & (y > 1) & (y < h - 2) & valid
    if not ok.any():
        return step
    # the blurred log only where the step reads it: the 5x5 window around each position
    lg = np.log(np.maximum(_blurred_window(flat[ok], x[ok], y[ok], blur_kernel), 1e-10))

    def at(dy: int, dx: int) -> npt.NDArray[np.float64]:
        v: npt.NDArray[np.float64] = lg[:, 2 + dy, 2 + dx]
        return v

    c = at(0, 0)
    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = 0.25 * (at(0, 2) - 2 * c + at(0, -2))
    dyy = 0.25 * (at(2, 0) - 2 * c + at(-2, 0))
    dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
    det = dxx * dyy - dxy * dxy
    good = det != 0
    safe = np.where(good, det, 1.0)
    # offset = -H^{-1} g with H = [[dxx, dxy], [dxy, dyy]]
    ox = -(dyy * dx - dxy * dy) / safe
    oy = -(-dxy * dx + dxx * dy) / safe
    step[ok, 0] = np.where(good, ox, 0.0)
    step[ok, 1] = np.where(good, oy, 0.0)
    return step


def map_correlation(a: Array, b: Array) -> npt.NDArray[np.float64]:
    """Pearson correlation of each pair of maps, (N, h, w) and (N, h, w) -> (N,), 0 where a map
    is flat: near 1 for a left/right keypoint pair, the network gives both sides one map."""
    x = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    y = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    x = x - x.mean(1, keepdims=True)
    y = y - y.mean(1, keepdims=True)
    denom = np.sqrt((x * x).sum(1) * (y * y).sum(1))
    out: npt.NDArray[np.float64] = (x * y).sum(1) / np.where(denom > 0, denom, np.inf)
    return out


def pair_correlations(
    maps: Array, labelled: npt.NDArray[np.bool_], pairs: Sequence[tuple[int, int]]
) -> list[npt.NDArray[np.float64]]:
    """For each channel pair (a, b) of (N, C, h, w) maps: `map_correlation` of the two channels
    over the persons whose `labelled` (N, C) holds for both (the training's left/right check and
    benchmarks/run_mirror_pairs.py, on keypoint and limb maps)."""
    out = []
    for a, b in pairs:
        both = labelled[:, a] & labelled[:, b]
        out.append(map_correlation(maps[both, a], maps[both, b]))
    return out


def flip_back(
    heatmaps: Array, flip_index: npt.NDArray[np.intp], shift: float | bool = 1.0
) -> FloatArray:
    """Undo a horizontal flip of the input on its heatmaps (official flip test, §5): mirror the
    width axis, swap left/right channels, and move everything `shift` heatmap pixels to the
    right. 1 (or True) is the official one-pixel shift (column 0 keeps its value, it is not
    zeroed); a fraction in (0, 1) moves by linear interpolation between the unshifted and the
    one-pixel-shifted maps, column 0 again keeping its own value; 0 (or False) does not move.
    `exact_flip_shift` gives the shift that undoes the flip exactly for a network's stride.

    heatmaps: (..., K, h, w) -> (..., K, h, w).
    """
    s = check_flip_shift(shift)
    out = np.ascontiguousarray(np.asarray(heatmaps)[..., flip_index, :, ::-1])
    if s == 1.0:
        out[..., 1:] = out[..., :-1].copy()
    elif s > 0.0:
        moved = out.astype(np.float32)  # a copy: the interpolation reads the unshifted maps
        moved[..., 1:] = (1.0 - s) * out[..., 1:] + s * out[..., :-1]
        out = moved
    return out.astype(np.float32, copy=False)


def check_flip_shift(shift: float | bool) -> float:
    """A flip shift in heatmap px, checked to lie in [0, 1] (True / False: 1 / 0)."""
    s = float(shift)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"flip shift must lie in [0, 1] heatmap pixels, not {shift!r}")
    return s


def resolve_flip_shift(shift: float | bool | str, input_w: int, heatmap_w: int) -> float:
    """A flip shift as `export`, `rebundle` and `train scio` take it: "exact" (`exact_flip_shift`
    for the network's input and heatmap widths) or heatmap px (`check_flip_shift`)."""
    if isinstance(shift, str):
        if shift != "exact":
            raise ValueError(f"flip shift must be 'exact' or heatmap px, not {shift!r}")
        return exact_flip_shift(input_w, heatmap_w)
    return check_flip_shift(shift)


def exact_flip_shift(input_w: int, heatmap_w: int) -> float:
    """The flip test's shift (heatmap px) that puts the mirrored input's heatmaps back where the
    unmirrored input's are, for a network trained with targets at x / stride and mirrored as the
    official code mirrors (x -> input_w - 1 - x).

    A keypoint at input x appears in the mirrored crop at input_w - 1 - x, so at heatmap
    (input_w - 1 - x) / s with s = input_w / heatmap_w; mirrored back over heatmap_w columns it
    lands at heatmap_w - 1 - (input_w - 1 - x) / s = x / s - (s - 1) / s. The exact shift is
    therefore (s - 1) / s: 0.75 at stride 4, where the official code shifts by the whole pixel
    (a quarter pixel too far, which averaging halves), and 0.5 at stride 2, where one pixel
    puts the flip-averaged keypoints a quarter pixel too far right and none a quarter pixel too
    far left."""
    s = input_w / heatmap_w
    if s < 1.0:
        raise ValueError(f"heatmap width {heatmap_w} exceeds the input width {input_w}")
    return (s - 1.0) / s


def fuse_flip(
    heatmaps: Array,
    flipped_heatmaps: Array,
    flip_index: npt.NDArray[np.intp],
    shift: float | bool = 1.0,
) -> FloatArray:
    """Average of the heatmaps and the flipped-back heatmaps of the mirrored input (`flip_back`,
    moved right by `shift` heatmap pixels)."""
    back = flip_back(flipped_heatmaps, flip_index, shift)
    return (0.5 * (np.asarray(heatmaps, dtype=np.float32) + back)).astype(np.float32)
