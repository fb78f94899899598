import json
from pathlib import Path

import numpy as np
import pytest

from models.keypoints import COCO17, CROWDPOSE14
from training.data.coco import CocoKeypoints, load_detections

MINI = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco-val-mini"


@pytest.fixture(scope="module")
def mini() -> CocoKeypoints:
    if not (MINI / "person_keypoints.json").exists():
        pytest.skip("../shared/data/coco-val-mini is not beside the checkout")
    return CocoKeypoints(MINI / "person_keypoints.json", COCO17)


def test_reads_the_real_coco_sample(mini: CocoKeypoints) -> None:
    raw = json.loads((MINI / "person_keypoints.json").read_text())
    assert len(mini.images) == 20
    assert sum(len(mini.persons(i)) for i in mini.image_ids) == len(raw["annotations"]) == 73
    inst = mini.training_instances()
    # the README of the sample: 53 annotations carry keypoints; none of those is a crowd region
    assert len(inst) == 53
    for im, p in inst:
        assert (im.image_id, p.image_id) == (p.image_id, im.image_id)
        assert p.keypoints.shape == (17, 3)
        assert not p.iscrowd
        assert p.keypoints[:, 2].max() > 0
        assert (MINI / "images" / im.file_name).exists()
    first = next(a for a in raw["annotations"] if a["id"] == inst[0][1].ann_id)
    np.testing.assert_allclose(inst[0][1].keypoints.reshape(-1), first["keypoints"])


def test_crowd_regions_are_kept_as_persons_but_not_trained_on(mini: CocoKeypoints) -> None:
    crowd = [p for i in mini.image_ids for p in mini.persons(i) if p.iscrowd]
    assert crowd, "the sample has crowd regions"
    trained = {p.ann_id for _, p in mini.training_instances()}
    assert not trained & {p.ann_id for p in crowd}


def test_a_spec_with_the_wrong_keypoint_count_is_rejected() -> None:
    if not (MINI / "person_keypoints.json").exists():
        pytest.skip("no coco-val-mini")
    with pytest.raises(ValueError, match="17 keypoints"):
        CocoKeypoints(MINI / "person_keypoints.json", CROWDPOSE14)


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read COCO annotations"):
        CocoKeypoints(p, COCO17)
    p.write_text(
        json.dumps(
            {
                "images": [],
                "annotations": [
                    {"id": 1, "image_id": 9, "bbox": [0, 0, 1, 1], "keypoints": [0] * 51}
                ],
            }
        )
    )
    with pytest.raises(ValueError, match="unknown image"):
        CocoKeypoints(p, COCO17)


def test_load_detections_filters_category_and_score(tmp_path: Path) -> None:
    p = tmp_path / "det.json"
    rows = [
        {"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [5, 6, 7, 8], "score": 0.1},
    ]
    p.write_text(json.dumps(rows))
    d = load_detections(p, min_score=0.2)
    assert list(d) == [1]
    np.testing.assert_allclose(d[1][0][0], [1, 2, 3, 4])
    assert load_detections(p, image_ids={2})[2][0][1] == pytest.approx(0.1)
