import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.codec import HeatmapCodec
from models.geometry import heatmap_to_image
from models.keypoints import COCO17
from models.preprocess import Normalization, to_network_input
from training.config import AugmentConfig
from training.data.coco import CocoKeypoints
from training.data.topdown import TopDownDataset

MINI = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco-val-mini"
W, H = 320, 240
RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def coded_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[CocoKeypoints, Path]:
    """One image whose red channel encodes x and green encodes y (PNG, lossless), and one person
    with keypoints at random places inside it."""
    d = tmp_path_factory.mktemp("coded")
    ys, xs = np.mgrid[0:H, 0:W]
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = (xs * 255 / (W - 1)).round()
    img[..., 1] = (ys * 255 / (H - 1)).round()
    img[..., 2] = 128
    (d / "images").mkdir()
    Image.fromarray(img).save(d / "images" / "a.png")
    kp = np.concatenate([RNG.uniform([100, 60], [220, 200], (17, 2)), np.full((17, 1), 2)], 1)
    ann = {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        "annotations": [
            {
                "id": 7,
                "image_id": 1,
                "category_id": 1,
                "bbox": [90, 50, 140, 160],
                "keypoints": kp.reshape(-1).tolist(),
                "num_keypoints": 17,
                "area": 140 * 160,
                "iscrowd": 0,
            }
        ],
        "categories": [COCO17.coco_category()],
    }
    (d / "ann.json").write_text(json.dumps(ann))
    return CocoKeypoints(d / "ann.json", COCO17), d / "images"


def _decode_position(image_chw: np.ndarray, norm: Normalization, at: np.ndarray) -> np.ndarray:
    """Read the coded (x, y) back from the normalised crop, sampled bilinearly at `at`."""
    x = image_chw.transpose(1, 2, 0) * np.array(norm.std) + np.array(norm.mean)
    x0 = np.floor(at).astype(int)
    f = at - x0
    rgb = 0.0
    for dy in (0, 1):
        for dx in (0, 1):
            wgt = (f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1])
            rgb = rgb + wgt[:, None] * x[x0[:, 1] + dy, x0[:, 0] + dx]
    rgb = rgb * 255
    return np.stack([rgb[:, 0] * (W - 1) / 255, rgb[:, 1] * (H - 1) / 255], 1)


@pytest.mark.parametrize(
    "aug",
    [
        None,
        AugmentConfig(rotation_prob=1.0, flip_prob=0.0, half_body_prob=0.0),
        AugmentConfig(rotation_prob=1.0, flip_prob=1.0, half_body_prob=0.0),
        AugmentConfig(rotation_prob=0.0, flip_prob=1.0, half_body_prob=1.0),
    ],
    ids=["plain", "rotate-scale", "rotate-scale-flip", "halfbody-flip"],
)
def test_crop_pixels_and_joints_stay_aligned(coded_set, aug) -> None:
    coco, images = coded_set
    norm = Normalization()
    codec = HeatmapCodec.for_input((256, 192))
    ds = TopDownDataset(coco, images, codec, norm, augment=aug, seed=5)
    truth = coco.training_instances()[0][1].keypoints[:, :2]
    flipped = aug is not None and aug.flip_prob == 1.0
    for epoch in range(3):
        ds.set_epoch(epoch)
        s = ds[0]
        joints = s["joints"].numpy()
        inside = np.all((joints >= 1) & (joints <= [189, 253]), axis=1)
        assert inside.sum() >= 5
        got = _decode_position(s["image"].numpy(), norm, joints[inside])
        # The colours give original-image coordinates. Flipped, channel k holds the mirror
        # partner, which sits where that partner was in the original image.
        want = truth[COCO17.flip_index] if flipped else truth
        err = np.abs(got - want[inside])
        # colour quantisation (1.25 px per level) and the crop's uint8 rounding, nothing more
        assert err.max() < 1.6, err.max()
        assert err.mean() < 0.6, err.mean()


def test_targets_decode_back_to_the_ground_truth_on_real_coco() -> None:
    if not (MINI / "person_keypoints.json").exists():
        pytest.skip("no coco-val-mini")
    coco = CocoKeypoints(MINI / "person_keypoints.json", COCO17)
    codec = HeatmapCodec.for_input((256, 192))
    ds = TopDownDataset(coco, MINI / "images", codec, Normalization())
    from models.geometry import box_to_center_scale, clean_gt_boxes

    worst = 0.0
    for i in range(0, len(ds), 7):
        s = ds[i]
        im, p = ds.instances[i]
        coords, scores = codec.decode(s["target"].numpy()[None], "argmax")
        box = clean_gt_boxes(p.bbox_xywh[None], (im.height, im.width))
        c, sc = box_to_center_scale(box, 0.75)
        back = heatmap_to_image(coords, c, sc, codec.heatmap_hw)[0]
        ok = (s["target_weight"].numpy() > 0) & (scores[0] > 0)
        stride_img = sc[0, 0] * 200 / codec.heatmap_hw[1]  # image pixels per heatmap pixel
        err = np.linalg.norm(back[ok] - p.keypoints[ok, :2], axis=1) / stride_img
        worst = max(worst, float(err.max()))
    assert worst <= 0.75  # official integer-centre targets: at most half a pixel per axis


def test_augmentation_is_deterministic_per_seed_epoch_and_index(coded_set) -> None:
    coco, images = coded_set
    codec = HeatmapCodec.for_input((128, 96))
    a = TopDownDataset(coco, images, codec, Normalization(), AugmentConfig(), seed=1)
    b = TopDownDataset(coco, images, codec, Normalization(), AugmentConfig(), seed=1)
    assert np.array_equal(a[0]["image"].numpy(), b[0]["image"].numpy())
    b.set_epoch(1)
    assert not np.array_equal(a[0]["image"].numpy(), b[0]["image"].numpy())
    assert a[0]["target"].shape == (17, 32, 24)


def test_bgr_normalisation_reverses_the_channels() -> None:
    crops = RNG.integers(0, 256, (2, 8, 6, 3), dtype=np.uint8)
    rgb = to_network_input(crops, Normalization())
    bgr = to_network_input(crops, replace(Normalization(), color_order="BGR"))
    np.testing.assert_allclose(bgr, rgb[:, ::-1], rtol=1e-6)
    assert rgb.shape == (2, 3, 8, 6)
    assert rgb.dtype == np.float32
