import math

import numpy as np
import pytest

from models.codec import (
    HeatmapCodec,
    decode_argmax,
    decode_dark,
    default_sigma,
    exact_flip_shift,
    flip_back,
    fuse_flip,
    gaussian_blur,
    render_gaussians,
    render_segments,
)
from models.keypoints import COCO17

RNG = np.random.default_rng(0)


# --- straightforward re-implementations of the official rules (facts §4 and §6) -------------


def official_generate_target(joints, vis, image_wh, heatmap_wh, sigma):
    """JointsDataset.generate_target, one joint at a time, as the official loop does it."""
    num = len(joints)
    target = np.zeros((num, heatmap_wh[1], heatmap_wh[0]), dtype=np.float32)
    weight = (np.asarray(vis) > 0).astype(np.float32)
    tmp_size = sigma * 3
    for j in range(num):
        stride = (image_wh[0] / heatmap_wh[0], image_wh[1] / heatmap_wh[1])
        mu_x = int(joints[j][0] / stride[0] + 0.5)
        mu_y = int(joints[j][1] / stride[1] + 0.5)
        ul = [int(mu_x - tmp_size), int(mu_y - tmp_size)]
        br = [int(mu_x + tmp_size + 1), int(mu_y + tmp_size + 1)]
        if ul[0] >= heatmap_wh[0] or ul[1] >= heatmap_wh[1] or br[0] < 0 or br[1] < 0:
            weight[j] = 0
            continue
        size = 2 * tmp_size + 1
        x = np.arange(0, size, 1, np.float32)
        y = x[:, np.newaxis]
        x0 = y0 = size // 2
        g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))
        g_x = max(0, -ul[0]), min(br[0], heatmap_wh[0]) - ul[0]
        g_y = max(0, -ul[1]), min(br[1], heatmap_wh[1]) - ul[1]
        img_x = max(0, ul[0]), min(br[0], heatmap_wh[0])
        img_y = max(0, ul[1]), min(br[1], heatmap_wh[1])
        if weight[j] > 0.5:
            target[j][img_y[0] : img_y[1], img_x[0] : img_x[1]] = g[
                g_y[0] : g_y[1], g_x[0] : g_x[1]
            ]
    return target, weight


def official_decode(batch_heatmaps):
    """get_max_preds + the POST_PROCESS quarter shift, element by element."""
    n, k, h, w = batch_heatmaps.shape
    coords = np.zeros((n, k, 2))
    maxvals = np.zeros((n, k))
    for i in range(n):
        for j in range(k):
            hm = batch_heatmaps[i, j]
            idx = int(np.argmax(hm.reshape(-1)))
            mv = float(hm.reshape(-1)[idx])
            x, y = (idx % w, idx // w) if mv > 0 else (0, 0)
            px, py = math.floor(x + 0.5), math.floor(y + 0.5)
            cx, cy = float(x), float(y)
            if 1 < px < w - 1 and 1 < py < h - 1:
                cx += 0.25 * np.sign(hm[py][px + 1] - hm[py][px - 1])
                cy += 0.25 * np.sign(hm[py + 1][px] - hm[py - 1][px])
            coords[i, j] = (cx, cy)
            maxvals[i, j] = mv
    return coords, maxvals


# --- encode ------------------------------------------------------------------------------------


def test_default_sigmas_match_the_official_configs() -> None:
    assert default_sigma((64, 48)) == 2.0
    assert default_sigma((96, 72)) == 3.0
    assert HeatmapCodec.for_input((384, 288)).heatmap_hw == (96, 72)


@pytest.mark.parametrize(("input_hw", "sigma"), [((256, 192), 2.0), ((384, 288), 3.0)])
def test_official_encode_matches_the_reference_loop(input_hw, sigma) -> None:
    codec = HeatmapCodec.for_input(input_hw, sigma=sigma)
    h, w = input_hw
    # include joints near and beyond the borders, where the window clipping and weight rules act
    joints = np.concatenate(
        [RNG.uniform([0, 0], [w, h], (40, 2)), RNG.uniform([-60, -60], [w + 60, h + 60], (40, 2))]
    )
    vis = RNG.integers(0, 3, len(joints))
    ours, ours_w = codec.encode(joints, vis)
    ref, ref_w = official_generate_target(joints, vis, (w, h), codec.heatmap_hw[::-1], sigma)
    np.testing.assert_array_equal(ours_w, ref_w)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_encode_has_peak_one_and_batches() -> None:
    codec = HeatmapCodec.for_input((256, 192))
    kp = np.array([[[96.0, 128.0]] * 3, [[40.0, 60.0]] * 3])  # (N=2, K=3, 2)
    hm, wt = codec.encode(kp, np.ones((2, 3)))
    assert hm.shape == (2, 3, 64, 48)
    assert hm.dtype == np.float32
    assert wt.shape == (2, 3)
    assert hm[0, 0, 32, 24] == 1.0
    assert hm.max() == 1.0


def test_invisible_joints_get_zero_weight_and_empty_maps() -> None:
    codec = HeatmapCodec.for_input((256, 192), unbiased=True)
    hm, wt = codec.encode(np.array([[50.0, 50.0], [50.0, 50.0]]), np.array([0, 2]))
    assert wt.tolist() == [0.0, 1.0]
    assert hm[0].max() == 0.0


# --- round trips -------------------------------------------------------------------------------


def _random_positions(n: int, h: int, w: int, margin: float) -> np.ndarray:
    return RNG.uniform([margin, margin], [w - 1 - margin, h - 1 - margin], (n, 2))


@pytest.mark.parametrize(("input_hw", "sigma"), [((256, 192), 2.0), ((384, 288), 3.0)])
def test_unbiased_encode_then_dark_is_subpixel_accurate(input_hw, sigma) -> None:
    codec = HeatmapCodec.for_input(input_hw, sigma=sigma, unbiased=True)
    h, w = codec.heatmap_hw
    pos_hm = _random_positions(500, h, w, margin=3 * sigma)  # away from borders
    hm, _ = codec.encode(pos_hm * codec.stride_xy, np.ones(len(pos_hm)))
    dec, score = codec.decode(hm, "dark")
    err = np.linalg.norm(dec - pos_hm, axis=-1)
    assert err.mean() < 0.1, err.mean()
    assert np.all(score > 0.5)


@pytest.mark.parametrize("unbiased", [False, True])
def test_encode_then_argmax_with_quarter_shift_is_within_half_a_pixel(unbiased) -> None:
    codec = HeatmapCodec.for_input((256, 192), unbiased=unbiased)
    h, w = codec.heatmap_hw
    pos_hm = _random_positions(500, h, w, margin=3.0)
    hm, _ = codec.encode(pos_hm * codec.stride_xy, np.ones(len(pos_hm)))
    dec, _ = codec.decode(hm, "argmax")
    err = np.linalg.norm(dec - pos_hm, axis=-1)
    assert err.mean() < 0.5, err.mean()
    # the quarter shift must help over the bare argmax on the unbiased targets
    if unbiased:
        bare, _ = decode_argmax(hm, quarter_shift=False)
        assert err.mean() < np.linalg.norm(bare - pos_hm, axis=-1).mean()


# --- decode against the official rules ---------------------------------------------------------


def test_argmax_decode_agrees_with_the_official_loop_on_random_heatmaps() -> None:
    hm = RNG.normal(size=(6, 17, 64, 48)).astype(np.float32)
    hm[0, :3] = -np.abs(hm[0, :3])  # all-negative maps: coordinates (0, 0)
    hm[1, 3] = 0.0  # flat zero map
    hm[2, 4, 1, 1] = 100.0  # maxima on and next to the borders: no shift there
    hm[2, 5, 63, 20] = 100.0
    hm[2, 6, 2, 2] = 100.0
    hm[2, 7, 30, 1] = 100.0  # x = 1 with y inside: still no shift (strict 1 < x)
    hm[2, 8, 30, 46] = 100.0  # x = w - 2: shifted
    hm[2, 9, 62, 20] = 100.0  # y = h - 2: shifted
    ours, ours_s = decode_argmax(hm)
    ref, ref_s = official_decode(hm)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_allclose(ours_s, ref_s)


def test_decode_keeps_leading_dimensions() -> None:
    hm = RNG.random((2, 3, 5, 16, 12)).astype(np.float32)
    for fn in (decode_argmax, decode_dark):
        c, s = fn(hm)
        assert c.shape == (2, 3, 5, 2)
        assert s.shape == (2, 3, 5)


def test_dark_blur_matches_opencv() -> None:
    cv2 = pytest.importorskip("cv2")
    hm = RNG.random((4, 64, 48)).astype(np.float64)
    ours = gaussian_blur(hm, 11)
    for i in range(len(hm)):
        b = 5
        padded = np.zeros((64 + 2 * b, 48 + 2 * b))
        padded[b:-b, b:-b] = hm[i]
        ref = cv2.GaussianBlur(padded, (11, 11), 0)[b:-b, b:-b]
        ref *= hm[i].max() / ref.max()
        np.testing.assert_allclose(ours[i], ref, rtol=1e-6, atol=1e-9)


def test_dark_equals_the_official_full_map_procedure() -> None:
    """decode_dark blurs only the 5x5 window its step reads; the official procedure blurs the
    whole map (zero border, OpenCV's kernel), rescales it to the original maximum, takes the
    log and steps from the argmax. Same coordinates, maxima near the border included."""
    ys, xs = np.mgrid[0:64, 0:48].astype(np.float64)
    centres = np.c_[RNG.uniform(-2, 50, 40), RNG.uniform(-2, 66, 40)]
    hm = np.exp(-((xs - centres[:, :1, None]) ** 2 + (ys - centres[:, 1:, None]) ** 2) / 8.0)
    hm += 0.2 * RNG.random(hm.shape) * (RNG.random((40, 1, 1)) < 0.4)  # some noisy maps
    coords, _ = decode_dark(hm, blur_kernel=11)
    lg = np.log(np.maximum(gaussian_blur(hm, 11), 1e-10))
    for i in range(len(hm)):
        y, x = np.unravel_index(np.argmax(hm[i]), hm[i].shape)
        want = np.array([x, y], dtype=np.float64)
        if 1 < x < 46 and 1 < y < 62:
            L = lg[i]
            d = np.array([L[y, x + 1] - L[y, x - 1], L[y + 1, x] - L[y - 1, x]]) / 2
            dxx = (L[y, x + 2] - 2 * L[y, x] + L[y, x - 2]) / 4
            dyy = (L[y + 2, x] - 2 * L[y, x] + L[y - 2, x]) / 4
            dxy = (L[y + 1, x + 1] - L[y - 1, x + 1] - L[y + 1, x - 1] + L[y - 1, x - 1]) / 4
            hess = np.array([[dxx, dxy], [dxy, dyy]])
            if np.linalg.det(hess) != 0:
                want -= np.linalg.solve(hess, d)
        np.testing.assert_allclose(coords[i], want, atol=1e-9)


def test_dark_recovers_the_centre_of_a_rotated_anisotropic_gaussian() -> None:
    # log of this map is an exact quadratic with a cross term, so one Newton step is exact
    ys, xs = np.mgrid[0:64, 0:48].astype(np.float64)
    cx, cy = 21.37, 30.81
    a, b, c = 0.30, 0.18, 0.45  # quadratic form [[a, b], [b, c]], positive definite
    d = a * (xs - cx) ** 2 + 2 * b * (xs - cx) * (ys - cy) + c * (ys - cy) ** 2
    hm = np.exp(-0.5 * d)[None]
    coords, _ = decode_dark(hm, blur_kernel=3)
    assert np.linalg.norm(coords[0] - [cx, cy]) < 0.05, coords


def test_dark_moves_toward_the_true_peak_of_a_shifted_gaussian() -> None:
    hm = render_gaussians(np.array([[20.3, 30.6]]), (64, 48), 2.0)
    c, s = decode_dark(hm)
    assert np.linalg.norm(c[0] - [20.3, 30.6]) < 0.05
    assert s[0] == pytest.approx(hm.max())


# --- flip test ---------------------------------------------------------------------------------


def test_flip_back_of_a_flipped_gaussian_returns_the_pair_swapped_original() -> None:
    h, w = 64, 48
    kp = RNG.uniform([5, 5], [w - 6, h - 6], (17, 2))
    original = render_gaussians(kp, (h, w), 2.0)  # (17, h, w)
    # What the network sees for the mirrored crop: x -> w - 1 - x, left and right swapped.
    mirrored_kp = np.stack([w - 1 - kp[:, 0], kp[:, 1]], 1)[COCO17.flip_index]
    flipped = render_gaussians(mirrored_kp, (h, w), 2.0)
    back = flip_back(flipped[None], COCO17.flip_index, shift=False)[0]
    np.testing.assert_allclose(back, original, atol=1e-6)
    # with the official one-pixel shift the maps move right by one, column 0 kept
    shifted = flip_back(flipped[None], COCO17.flip_index, shift=True)[0]
    np.testing.assert_allclose(shifted[..., 1:], original[..., :-1], atol=1e-6)
    np.testing.assert_allclose(shifted[..., 0], original[..., 0], atol=1e-6)
    fused = fuse_flip(original[None], flipped[None], COCO17.flip_index, shift=False)[0]
    np.testing.assert_allclose(fused, original, atol=1e-6)


def test_a_fractional_flip_shift_interpolates_between_none_and_one_pixel() -> None:
    maps = RNG.random((2, 17, 8, 6)).astype(np.float32)
    none = flip_back(maps, COCO17.flip_index, shift=0.0)
    one = flip_back(maps, COCO17.flip_index, shift=1.0)
    np.testing.assert_array_equal(one, flip_back(maps, COCO17.flip_index, shift=True))
    np.testing.assert_array_equal(none, flip_back(maps, COCO17.flip_index, shift=False))
    for s in (0.25, 0.5, 0.75):
        np.testing.assert_allclose(
            flip_back(maps, COCO17.flip_index, shift=s), (1 - s) * none + s * one, atol=1e-6
        )
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="flip shift"):
            flip_back(maps, COCO17.flip_index, shift=bad)


@pytest.mark.parametrize(("input_w", "heatmap_w", "exact"), [(96, 48, 0.5), (192, 48, 0.75)])
def test_the_exact_flip_shift_puts_the_mirrored_crop_back_where_the_crop_is(
    input_w: int, heatmap_w: int, exact: float
) -> None:
    """A network trained on targets at x / stride, mirrored as the official code mirrors
    (x -> input_w - 1 - x): its heatmaps for the mirrored crop, flipped back with the exact shift,
    peak where its heatmaps for the crop do; the official one pixel at stride 2 does not."""
    assert exact_flip_shift(input_w, heatmap_w) == pytest.approx(exact)
    stride = input_w / heatmap_w
    hw = (2 * heatmap_w, heatmap_w)
    kp = RNG.uniform([8 * stride, 10], [input_w - 8 * stride, hw[0] - 10], (17, 2))  # input px
    crop = render_gaussians(kp / [stride, 1], hw, 2.0)
    mirrored_kp = np.stack([input_w - 1 - kp[:, 0], kp[:, 1]], 1)[COCO17.flip_index]
    mirrored = render_gaussians(mirrored_kp / [stride, 1], hw, 2.0)
    want = kp[:, 0] / stride

    def x_after(shift: float) -> np.ndarray:
        back = flip_back(mirrored[None], COCO17.flip_index, shift=shift)
        return decode_dark(back)[0][0, :, 0]

    assert np.abs(x_after(exact) - want).max() < 0.05
    fused = fuse_flip(crop[None], mirrored[None], COCO17.flip_index, shift=exact)
    assert np.abs(decode_dark(fused)[0][0, :, 0] - want).max() < 0.05
    # the whole pixel is 1 - exact too far right
    np.testing.assert_allclose(x_after(1.0) - want, 1 - exact, atol=0.05)


def test_render_gaussians_peak_and_shape() -> None:
    g = render_gaussians(np.array([[[3.0, 4.0], [10.5, 7.25]]]), (16, 12), 1.5)
    assert g.shape == (1, 2, 16, 12)
    assert g[0, 0, 4, 3] == pytest.approx(1.0)
    assert g[0, 1].max() < 1.0


def test_render_segments_is_a_gaussian_of_the_distance_to_the_segment() -> None:
    sigma = 2.0
    m = render_segments(np.array([[4.0, 10.0], [6.0, 6.0]]), np.array([[4.0, 30.0], [6.0, 6.0]]),
                        (40, 20), sigma)  # fmt: skip
    assert m.shape == (2, 40, 20)
    assert m[0, 10:31, 4].min() == pytest.approx(1.0)  # along the segment, ends included
    assert m[0, 20, 7] == pytest.approx(math.exp(-9 / (2 * sigma**2)), rel=1e-6)  # 3 px aside
    # 4 px past the end
    assert m[0, 34, 4] == pytest.approx(math.exp(-16 / (2 * sigma**2)), rel=1e-6)
    # a segment of zero length is the keypoint's own Gaussian
    np.testing.assert_allclose(m[1], render_gaussians(np.array([6.0, 6.0]), (40, 20), sigma),
                               rtol=1e-6, atol=1e-7)  # fmt: skip


def test_limb_targets_need_both_ends() -> None:
    codec = HeatmapCodec.for_input((128, 96), unbiased=True)
    kp = np.array([[20.0, 20.0], [20.0, 60.0], [500.0, 60.0]])  # the third outside the crop
    _, wt = codec.encode(kp, np.array([2, 2, 2]))
    maps, limb_w = codec.encode_limbs(kp, wt, ((0, 1), (1, 2)))
    assert limb_w.tolist() == [1.0, 0.0]
    assert maps[1].max() == 0.0
    assert maps[0].max() == pytest.approx(1.0)
    assert maps[0, 10, 5] == pytest.approx(1.0)  # heatmap (5, 10): input (20, 40), mid-shin


def test_map_correlation_tells_one_map_from_two() -> None:
    """Left/right collapse as the training's validation and benchmarks/mirror_pairs measure it:
    a map against itself 1, against its mirror image (a bump elsewhere) near 0 or below, a flat
    map 0."""
    from models.codec import map_correlation

    ys, xs = np.meshgrid(np.arange(16.0), np.arange(12.0), indexing="ij")
    bump = np.exp(-((xs - 3) ** 2 + (ys - 5) ** 2) / 4)[None]
    other = np.exp(-((xs - 8) ** 2 + (ys - 11) ** 2) / 4)[None]
    a = np.concatenate([bump, bump, bump])
    b = np.concatenate([bump, other, np.zeros((1, 16, 12))])
    c = map_correlation(a, b)
    assert c[0] == pytest.approx(1.0)
    assert c[1] < 0.05
    assert c[2] == 0
