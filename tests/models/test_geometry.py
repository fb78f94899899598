import numpy as np
import pytest

from models.geometry import (
    affine_matrices,
    box_to_center_scale,
    clean_gt_boxes,
    flip_keypoints_horizontal,
    heatmap_to_image,
    resize_bilinear,
    transform_points,
    warp_affine,
)
from models.keypoints import COCO17

RNG = np.random.default_rng(1)


def official_affine(center, scale, rot, output_wh):
    """get_affine_transform's three-point construction, solved exactly (cv2 does the same
    solve in float32)."""
    src_w = scale[0] * 200.0
    rot_rad = np.pi * rot / 180

    def get_dir(p, r):
        sn, cs = np.sin(r), np.cos(r)
        return np.array([p[0] * cs - p[1] * sn, p[0] * sn + p[1] * cs])

    def third(a, b):
        d = a - b
        return b + np.array([-d[1], d[0]])

    src_dir = get_dir([0, src_w * -0.5], rot_rad)
    dst_dir = np.array([0, output_wh[0] * -0.5])
    src = np.zeros((3, 2))
    dst = np.zeros((3, 2))
    src[0] = center
    src[1] = center + src_dir
    dst[0] = [output_wh[0] * 0.5, output_wh[1] * 0.5]
    dst[1] = dst[0] + dst_dir
    src[2] = third(src[0], src[1])
    dst[2] = third(dst[0], dst[1])
    # solve dst = M @ [src, 1]
    a = np.hstack([src, np.ones((3, 1))])
    return np.linalg.solve(a, dst).T


def test_box_to_center_scale_grows_to_the_aspect_ratio_and_pads() -> None:
    c, s = box_to_center_scale([[10, 20, 30, 80], [0, 0, 300, 100]], aspect_ratio=0.75)
    np.testing.assert_allclose(c, [[25, 60], [150, 50]])
    # tall box: w grows to 0.75 * 80 = 60; wide box: h grows to 300 / 0.75 = 400
    np.testing.assert_allclose(s, [[60 / 200 * 1.25, 80 / 200 * 1.25], [1.875, 2.5]])


def test_clean_gt_boxes_follows_the_official_rule() -> None:
    b = clean_gt_boxes([[10, 20, 30, 40], [-5, -5, 20, 20], [600, 400, 100, 100]], (480, 640))
    np.testing.assert_allclose(b, [[10, 20, 29, 39], [0, 0, 19, 19], [600, 400, 39, 79]])


@pytest.mark.parametrize("rot", [0.0, 17.0, -90.0, 44.5])
def test_affine_matrix_equals_the_official_construction(rot) -> None:
    c = np.array([123.4, 56.7])
    s = np.array([1.3, 1.9])
    ours = affine_matrices(c, s, rot, (256, 192))[0]
    np.testing.assert_allclose(ours, official_affine(c, s, rot, (192, 256)), atol=1e-9)
    inv = affine_matrices(c, s, rot, (256, 192), inverse=True)[0]
    np.testing.assert_allclose(inv, official_affine_inverse(c, s, rot, (192, 256)), atol=1e-9)


def official_affine_inverse(center, scale, rot, output_wh):
    m = np.vstack([official_affine(center, scale, rot, output_wh), [0, 0, 1]])
    return np.linalg.inv(m)[:2]


def test_affine_matrix_matches_opencv() -> None:
    cv2 = pytest.importorskip("cv2")
    c = np.array([300.0, 200.0])
    s = np.array([1.0, 1.333])
    src = np.float32([[300, 200], [300, 100], [200, 100]])
    dst = np.float32([[96, 128], [96, 32], [0, 32]])
    ref = cv2.getAffineTransform(src, dst)
    np.testing.assert_allclose(affine_matrices(c, s, 0.0, (256, 192))[0], ref, atol=1e-5)


def test_image_to_crop_to_image_round_trip_is_exact() -> None:
    n = 50
    c = RNG.uniform(0, 600, (n, 2))
    s = RNG.uniform(0.2, 3.0, (n, 2))
    r = RNG.uniform(-45, 45, n)
    pts = RNG.uniform(-100, 700, (n, 17, 2))
    fwd = affine_matrices(c, s, r, (256, 192))
    inv = affine_matrices(c, s, r, (256, 192), inverse=True)
    back = transform_points(transform_points(pts, fwd), inv)
    assert np.abs(back - pts).max() < 1e-4
    # via heatmap coordinates and the back-projection the decoder uses
    hm = transform_points(pts, affine_matrices(c, s, r, (64, 48)))
    assert np.abs(heatmap_to_image(hm, c, s, (64, 48), r) - pts).max() < 1e-4


def test_back_projection_closed_form() -> None:
    c = np.array([[200.0, 150.0]])
    s = np.array([[1.2, 1.6]])
    hm = np.array([[[10.0, 20.0], [47.0, 63.0]]])
    img = heatmap_to_image(hm, c, s, (64, 48))
    expected_x = 200 + (hm[0, :, 0] - 48 / 2) * 200 * 1.2 / 48
    expected_y = 150 + (hm[0, :, 1] - 64 / 2) * 200 * 1.2 / 48
    np.testing.assert_allclose(img[0], np.stack([expected_x, expected_y], 1))


def test_center_maps_to_the_middle_of_the_crop() -> None:
    m = affine_matrices([[50.0, 80.0]], [[0.5, 0.7]], None, (256, 192))
    np.testing.assert_allclose(transform_points([[[50.0, 80.0]]], m), [[[96.0, 128.0]]])


def test_warp_affine_matches_opencv() -> None:
    cv2 = pytest.importorskip("cv2")
    img = RNG.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(img, (5, 5), 0)  # smooth, so OpenCV's fixed-point weights matter less
    c = np.array([[80.0, 60.0], [10.0, 100.0]])
    s = np.array([[0.6, 0.8], [0.5, 0.66]])
    r = np.array([0.0, 30.0])
    m = affine_matrices(c, s, r, (64, 48))
    ours = warp_affine(img, m, (64, 48))
    for i in range(2):
        ref = cv2.warpAffine(img, m[i], (48, 64), flags=cv2.INTER_LINEAR)
        diff = np.abs(ours[i].astype(int) - ref.astype(int))
        assert diff.max() <= 2, diff.max()
        assert diff.mean() < 0.3


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_warp_affine_matches_opencv_anywhere(channels: int) -> None:
    """Crops partly or wholly outside the image, tiny images, rotations, any channel count."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(channels)
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(3, 200, 2))
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, channels), dtype=np.uint8), (3, 3), 0)
        img = img.reshape(h, w, channels)
        k = int(rng.integers(1, 4))
        c = rng.uniform(-60, max(h, w) + 60, (k, 2))
        s = rng.uniform(0.02, 2.0, (k, 2))
        out_hw = (int(rng.integers(2, 70)), int(rng.integers(2, 50)))
        m = affine_matrices(c, s, rng.uniform(-180, 180, k), out_hw)
        ours = warp_affine(img, m, out_hw)
        assert ours.shape == (k, *out_hw, channels)
        for i in range(k):
            ref = cv2.warpAffine(img, m[i], out_hw[::-1], flags=cv2.INTER_LINEAR)
            ref = ref.reshape(*out_hw, channels)
            diff = np.abs(ours[i].astype(int) - ref.astype(int))
            assert diff.max() <= 2, diff.max()
            assert diff.mean() < 0.3


def test_warp_affine_identity_and_border() -> None:
    img = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    eye = np.array([[[1.0, 0, 0], [0, 1.0, 0]]])
    np.testing.assert_array_equal(warp_affine(img, eye, (10, 12))[0], img)
    shifted = warp_affine(img, np.array([[[1.0, 0, 3], [0, 1.0, 0]]]), (10, 12))[0]
    np.testing.assert_array_equal(shifted[:, 3:], img[:, :-3])
    assert shifted[:, :3].max() == 0
    assert warp_affine(img, np.zeros((0, 2, 3)), (4, 4)).shape == (0, 4, 4, 3)


@pytest.mark.parametrize("out_hw", [(48, 64), (37, 90), (240, 320), (61, 61), (120, 160)])
def test_resize_bilinear_matches_opencv(out_hw) -> None:
    cv2 = pytest.importorskip("cv2")
    img = RNG.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    ours = resize_bilinear(img, out_hw)
    ref = cv2.resize(img, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 1, diff.max()  # OpenCV's fixed-point weights round differently


def test_resize_bilinear_matches_opencv_at_random_sizes_and_for_grey() -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(7)
    for _ in range(20):
        H, W, h, w = (int(v) for v in rng.integers(2, 300, 4))
        for shape in ((H, W, 3), (H, W)):
            img = rng.integers(0, 256, shape, dtype=np.uint8)
            ours = resize_bilinear(img, (h, w))
            ref = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
            assert ours.shape == ref.shape
            assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_flip_keypoints_mirrors_and_swaps() -> None:
    kp = np.zeros((17, 3))
    kp[5] = [10, 20, 2]  # left shoulder
    kp[6] = [30, 20, 1]  # right shoulder
    out = flip_keypoints_horizontal(kp, image_width=100, flip_index=COCO17.flip_index)
    np.testing.assert_allclose(out[6], [89, 20, 2])  # old left is now the right shoulder
    np.testing.assert_allclose(out[5], [69, 20, 1])
