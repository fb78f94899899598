import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pycocotools")
pytest.importorskip("onnx")

from models.keypoints import COCO17, CROWDPOSE14
from service.cli import main
from service.results import PersonPose
from tests.service.onnx_fakes import make_fake_bundle
from training.data.coco import CocoKeypoints
from training.evaluate import (
    EvalOptions,
    coco_stats,
    evaluate,
    keypoint_accuracy,
    match_predictions,
)

MINI = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco-val-mini"
pytestmark = pytest.mark.skipif(
    not (MINI / "person_keypoints.json").exists(), reason="no ../shared/data/coco-val-mini"
)


def _gt_as_results(ann: dict) -> list[dict]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": 1,
            "keypoints": a["keypoints"],
            "score": 1.0,
        }
        for a in ann["annotations"]
        if not a.get("iscrowd") and a["num_keypoints"] > 0
    ]


def test_ground_truth_as_predictions_gives_ap_one_on_real_coco() -> None:
    ann = json.loads((MINI / "person_keypoints.json").read_text())
    ids = sorted(im["id"] for im in ann["images"])
    stats = coco_stats(MINI / "person_keypoints.json", _gt_as_results(ann), COCO17, ids)
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["AR"] == pytest.approx(1.0)
    # and a shifted copy scores less: the metric is not blind
    worse = _gt_as_results(ann)
    for r in worse:
        r["keypoints"] = [v + 8.0 if i % 3 != 2 else v for i, v in enumerate(r["keypoints"])]
    assert coco_stats(MINI / "person_keypoints.json", worse, COCO17, ids)["AP"] < 0.9


def _crowdpose_file(tmp_path: Path) -> Path:
    """coco-val-mini turned into a CrowdPose-format file (14 keypoints, crowdIndex per image)."""
    ann = json.loads((MINI / "person_keypoints.json").read_text())
    take = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]  # shoulders .. ankles
    for a in ann["annotations"]:
        k = np.array(a["keypoints"], dtype=float).reshape(17, 3)
        nose, ls, rs = k[0], k[5], k[6]
        neck = (ls + rs) / 2 if ls[2] > 0 and rs[2] > 0 else np.zeros(3)
        neck[2] = 2 if neck.any() else 0
        kp = np.concatenate([k[take], nose[None], neck[None]])
        a["keypoints"] = kp.reshape(-1).tolist()
        a["num_keypoints"] = int((kp[:, 2] > 0).sum())
    for im in ann["images"]:
        im["crowdIndex"] = 0.3
    ann["categories"] = [CROWDPOSE14.coco_category()]
    p = tmp_path / "crowd.json"
    p.write_text(json.dumps(ann))
    return p


def test_ground_truth_as_predictions_gives_ap_one_in_the_crowd_evaluation(tmp_path: Path) -> None:
    pytest.importorskip("xtcocotools")
    p = _crowdpose_file(tmp_path)
    ann = json.loads(p.read_text())
    ids = sorted(im["id"] for im in ann["images"])
    stats = coco_stats(p, _gt_as_results(ann), CROWDPOSE14, ids)
    assert set(stats) >= {"AP", "AP_easy", "AP_medium", "AP_hard"}
    assert stats["AP"] == pytest.approx(1.0)


def test_matching_and_keypoint_accuracy_on_ground_truth() -> None:
    coco = CocoKeypoints(MINI / "person_keypoints.json", COCO17)
    preds = {}
    for image_id in coco.image_ids:
        preds[image_id] = [
            PersonPose(bbox=np.zeros(4), bbox_score=1.0, score=1.0, keypoints=p.keypoints.copy())
            for p in coco.persons(image_id)
            if not p.iscrowd and p.keypoints[:, 2].max() > 0
        ]
    matches = match_predictions(coco, preds, COCO17)
    assert len(matches) == 53
    assert all(m.pred is not None and m.pred.keypoints is not None for m in matches)
    for m in matches:
        np.testing.assert_array_equal(m.pred.keypoints, m.gt.keypoints)  # each got its own
    acc = keypoint_accuracy(matches, COCO17)
    assert min(acc.values()) == pytest.approx(1.0)
    # drop every prediction of one image: its persons count as misses
    preds[coco.image_ids[0]] = []
    acc2 = keypoint_accuracy(match_predictions(coco, preds, COCO17), COCO17)
    assert sum(acc2.values()) < sum(acc.values())


def test_evaluate_runs_the_service_pipeline_and_writes_json(tmp_path: Path) -> None:
    bundle = make_fake_bundle(tmp_path / "bundle")
    r = evaluate(bundle, MINI / "person_keypoints.json", MINI / "images", EvalOptions(limit=6))
    assert r["images"] == 6
    assert r["persons"] > 0
    assert set(r["stats"]) >= {"AP", "AP50", "AP75", "APM", "APL", "AR"}
    assert 0.0 <= r["stats"]["AP"] < 0.5  # the dot model knows nothing about people
    assert r["distal_keypoints"] == [
        "left_wrist",
        "right_wrist",
        "left_ankle",
        "right_ankle",
        "left_ear",
        "right_ear",
    ]
    out = tmp_path / "r.json"
    code = main(
        [
            "evaluate",
            "--bundle",
            str(bundle),
            "--ann",
            str(MINI / "person_keypoints.json"),
            "--images",
            str(MINI / "images"),
            "--limit",
            "6",
            "--flip",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    saved = json.loads(out.read_text())
    assert saved["flip"] is True
    assert saved["images"] == 6
    with pytest.raises(ValueError, match="no SCIO networks"):
        evaluate(
            bundle,
            MINI / "person_keypoints.json",
            MINI / "images",
            EvalOptions(refine="sco", limit=1),
        )


def test_evaluate_with_the_bundles_own_detector(tmp_path: Path) -> None:
    rows = np.array([[40, 60, 120, 260, 0.9, 0]], np.float32)  # one person per image
    bundle = make_fake_bundle(tmp_path / "bundle", detector_rows=rows)
    r = evaluate(
        bundle,
        MINI / "person_keypoints.json",
        MINI / "images",
        EvalOptions(boxes="detector", limit=4),
    )
    assert r["boxes"] == "detector"
    assert r["persons"] == 4
    with pytest.raises(ValueError, match="no detector"):
        evaluate(
            make_fake_bundle(tmp_path / "nodet"),
            MINI / "person_keypoints.json",
            MINI / "images",
            EvalOptions(boxes="detector", limit=1),
        )
