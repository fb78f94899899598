"""The geometric oracle of benchmarks/scio_geometry_oracle.py: its density prefers the place the
training poses put D, its units are the crop's heatmap pixels, and its matching pairs each
labelled person with its own prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.scio_geometry_oracle import PoseBank, hm_units, matched_predictions
from models.keypoints import COCO17
from training.data.coco import CocoKeypoints

ARM = COCO17.groups[0]  # {left elbow, left shoulder, left hip | left wrist}


def _poses(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 17, 3) poses whose wrist is the shoulder reflected through the elbow (so the anchors
    determine D)."""
    kps = np.zeros((n, 17, 3))
    kps[:, :, 2] = 2
    kps[:, :, :2] = rng.uniform(20, 40, size=(n, 17, 2))
    kps[:, ARM.b, :2] = kps[:, ARM.a, :2] + rng.uniform(-8, 8, size=(n, 2))
    kps[:, ARM.c, :2] = kps[:, ARM.b, :2] + [0.0, 12.0]  # the hip below the shoulder
    kps[:, ARM.d, :2] = 2 * kps[:, ARM.a, :2] - kps[:, ARM.b, :2]
    return kps


def test_density_prefers_where_training_poses_put_d() -> None:
    rng = np.random.default_rng(0)
    bank = PoseBank(_poses(4000, rng), np.ones(4000), ARM, size=4000)
    q = _poses(50, rng)[:, :, :2]
    truth = q[:, ARM.d]
    off = truth + np.array([2.0, -1.5])
    k, h = 50, 1.0
    assert (bank.log_density(q, truth, k, h) > bank.log_density(q, off, k, h)).all()
    # the mirror image of the truth about A is as far from the bank's answer as 2 * |D - A|
    mirror = 2 * q[:, ARM.a] - truth
    far = np.linalg.norm(mirror - truth, axis=1) > 3
    assert (bank.log_density(q, truth, k, h) > bank.log_density(q, mirror, k, h))[far].all()


def test_a_torso_bank_ignores_a() -> None:
    rng = np.random.default_rng(3)
    bank = PoseBank(_poses(2000, rng), np.ones(2000), ARM, size=2000, torso=True)
    assert bank.layout.shape == (2000, 2)  # C - B only
    q = _poses(20, rng)[:, :, :2]
    moved = q.copy()
    moved[:, ARM.a] += 5.0  # A does not enter the torso layout or D's origin
    d = q[:, ARM.d]
    np.testing.assert_array_equal(
        bank.log_density(q, d, 50, 1.0), bank.log_density(moved, d, 50, 1.0)
    )


def test_bank_keeps_only_poses_with_the_group_labelled() -> None:
    kps = _poses(10, np.random.default_rng(1))
    kps[:4, ARM.d, 2] = 0
    assert len(PoseBank(kps, np.ones(10), ARM, size=100).layout) == 6


def test_units_are_heatmap_pixels_of_the_crop() -> None:
    # a 96 x 128 box fills a 128x96 input exactly; padded by 1.25 its crop is 160 px high
    u = hm_units(np.array([[0.0, 0.0, 96.0, 128.0], [0.0, 0.0, 200.0, 100.0]]), (128, 96), 64)
    assert np.allclose(u, [160 / 64, 200 / 0.75 * 1.25 / 64])


def test_matching_pairs_each_person_with_its_prediction(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    kps = _poses(2, rng)
    kps[1, :, :2] += 100  # two people far apart in one image
    ann = {
        "images": [{"id": 1, "file_name": "a.png", "width": 256, "height": 256}],
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.keypoint_names),
                        "skeleton": []}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 900.0,
             "bbox": [0, 0, 30, 30], "num_keypoints": 17, "keypoints": kps[i].ravel().tolist()}
            for i in range(2)
        ],
    }  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps(ann))
    coco = CocoKeypoints(tmp_path / "a.json", COCO17)
    # predictions in reverse order, each a little off its own person
    results = [
        {"image_id": 1, "score": 0.9 - 0.1 * j, "keypoints": (kps[i] + [1, 0, 0]).ravel().tolist()}
        for j, i in enumerate((1, 0))
    ]
    gts, preds = matched_predictions(coco, results, COCO17)
    assert len(gts) == 2
    for g, p in zip(gts, preds, strict=True):
        assert np.allclose(p[:, :2] - g.keypoints[:, :2], [1, 0])
