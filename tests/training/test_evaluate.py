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


def _edge_case_file(tmp_path: Path) -> tuple[Path, Path]:
    """One black 64x64 image and three persons: a normal box at the top-left corner, a box 1 px
    wide, and one with area 0."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "a.png")
    kp = [0.0] * 51
    kp[0:3] = [10.0, 10.0, 2]

    def ann(i: int, bbox: list[float], area: float) -> dict:
        return {
            "id": i,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "bbox": bbox,
            "area": area,
            "keypoints": kp,
            "num_keypoints": 1,
        }

    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "annotations": [
            ann(1, [0, 0, 20, 40], 800.0),
            ann(2, [30, 10, 1, 30], 30.0),  # 1 px wide: the cleaned box has width 0
            ann(3, [30, 10, 20, 30], 0.0),  # area 0
        ],
        "categories": [COCO17.coco_category()],
    }
    path = tmp_path / "edge.json"
    path.write_text(json.dumps(data))
    return path, images


def test_official_protocol_gt_box_filter(tmp_path: Path) -> None:
    """The official code keeps a GT box 1 px wide (x2 >= x1 after cleaning) and drops an
    annotation of area 0; by default a box must have a positive cleaned size."""
    path, _ = _edge_case_file(tmp_path)
    coco = CocoKeypoints(path, COCO17)
    assert [p.ann_id for _, p in coco.training_instances()] == [1, 3]
    assert [p.ann_id for _, p in coco.training_instances(official=True)] == [1, 2]


def test_official_protocol_keeps_keypoints_off_the_image(tmp_path: Path) -> None:
    """On a black image the dot model's heatmaps are flat, so every keypoint decodes to the
    crop's corner, which lies outside the image for a box at the image's corner: the official
    results keep such keypoints where they are, /pose (and the default) clip them."""
    path, images = _edge_case_file(tmp_path)
    bundle = make_fake_bundle(tmp_path / "bundle")
    for protocol in ("service", "official"):
        out = tmp_path / f"{protocol}.json"
        args = ["evaluate", "--bundle", str(bundle), "--ann", str(path), "--images", str(images)]
        assert main([*args, "--protocol", protocol, "--out", str(out)]) == 0
        r = json.loads(out.read_text())
        assert r["protocol"] == protocol
        # service: boxes 1 and 3 (area 0 kept); official: 1 and 2 (1 px wide kept)
        assert r["persons"] == 2, (protocol, r["persons"])
    from service.pipeline import PosePipeline
    from service.results import PoseOptions

    pipe = PosePipeline.from_path(bundle, device="cpu")
    black = np.zeros((64, 64, 3), np.uint8)
    box = np.array([[0.0, 0.0, 19.0, 39.0]])
    official = pipe.estimate(black, PoseOptions(boxes=box, official=True)).persons[0].keypoints
    clipped = pipe.estimate(black, PoseOptions(boxes=box)).persons[0].keypoints
    assert (official[:, :2] < 0).any()
    assert (clipped[:, :2] >= 0).all()
    np.testing.assert_allclose(clipped[:, :2], np.clip(official[:, :2], 0, 63))


def test_bootstrap_of_ap_differences_is_paired_and_sees_a_real_difference() -> None:
    from training.evaluate import bootstrap_ap

    ann = json.loads((MINI / "person_keypoints.json").read_text())
    ids = sorted(im["id"] for im in ann["images"])
    exact = _gt_as_results(ann)
    noisy = _gt_as_results(ann)
    rng = np.random.default_rng(0)
    for r in noisy:
        r["keypoints"] = [
            v + rng.normal(0, 6) if i % 3 != 2 else v for i, v in enumerate(r["keypoints"])
        ]
    out = bootstrap_ap(
        MINI / "person_keypoints.json",
        {"noisy": noisy, "exact": exact, "same": noisy},
        COCO17,
        ids,
        samples=60,
    )
    exact_row, same_row = out["variants"]["exact"], out["variants"]["same"]
    assert exact_row["AP_95"][0] == pytest.approx(1.0)
    assert exact_row["minus_noisy_95"][0] > 0  # exact beats noisy on every resample
    assert exact_row["minus_noisy_share_above_0"] == 1.0
    assert same_row["minus_noisy_95"] == [0.0, 0.0]  # paired: identical results, no spread
    lo, hi = out["variants"]["noisy"]["AP_95"]
    full = coco_stats(MINI / "person_keypoints.json", noisy, COCO17, ids)["AP"]
    assert lo <= full <= hi
    assert hi - lo > 0.01


def test_evaluate_uses_the_official_oks_nms_whatever_the_bundle_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AP's protocol: OKS-NMS at 0.9 with the detector's boxes and with ground-truth boxes, even
    when the bundle's detector sets another threshold for /pose."""
    import service.pipeline as sp

    rows = np.array([[40, 60, 120, 260, 0.9, 0]], np.float32)
    bundle = make_fake_bundle(tmp_path / "bundle", detector_rows=rows, oks_nms=0.3)
    seen: list[float] = []
    nms = sp.oks_nms

    def watched(*a, **kw):
        seen.append(kw["thresh"])
        return nms(*a, **kw)

    monkeypatch.setattr(sp, "oks_nms", watched)
    for boxes in ("detector", "gt"):
        evaluate(
            bundle,
            MINI / "person_keypoints.json",
            MINI / "images",
            EvalOptions(boxes=boxes, limit=2),
        )
    assert len(seen) >= 4
    assert set(seen) == {0.9}


def test_evaluate_answers_every_detected_person_whatever_the_bundles_minimum_score(
    tmp_path: Path,
) -> None:
    """AP ranks every answer: a bundle whose minimum person score /pose would apply to all its
    detections (1.0) still has its detected person evaluated."""
    rows = np.array([[40, 60, 120, 260, 0.9, 0]], np.float32)
    bundle = make_fake_bundle(tmp_path / "bundle", detector_rows=rows, min_person_score=1.0)
    opts = EvalOptions(boxes="detector", limit=2)
    r = evaluate(bundle, MINI / "person_keypoints.json", MINI / "images", opts)
    assert r["persons"] == 2  # the fixed detector's one box in each image


def test_pose_answers_chooses_the_minimum_person_score_with_the_best_f1() -> None:
    from types import SimpleNamespace

    from benchmarks.pose_answers import admitted_by, choose_min_score

    # a minimum reads the calibrated confidence where there is one, else the official score
    assert admitted_by(SimpleNamespace(score=0.3, confidence=None)) == 0.3
    assert admitted_by(SimpleNamespace(score=0.3, confidence=0.9)) == 0.9
    rows = [{"min_score": m, "f1": f} for m, f in ((0.0, 0.7), (0.1, 0.8), (0.15, 0.8), (0.2, 0.6))]
    assert choose_min_score(rows) == 0.1  # the lowest of the best


def test_pose_answers_classifies_found_duplicate_and_unmatched_in_score_order() -> None:
    from benchmarks.pose_answers import classify

    # answers (score order) x labelled persons: OKS
    oks = np.array(
        [
            [0.9, 0.6],  # takes person 0
            [0.8, 0.55],  # person 0 is taken, person 1 is free and >= 0.5: found
            [0.7, 0.7],  # both taken: a duplicate
            [0.4, 0.3],  # nobody
        ]
    )
    assert classify(oks) == ["found", "found", "duplicate", "none"]
    assert classify(np.zeros((2, 0))) == ["none", "none"]  # an image without labelled persons


def test_evaluate_applies_the_bundles_pair_split_unless_told_not_to(tmp_path: Path) -> None:
    from training.cli_rebundle import rebundle

    plain = make_fake_bundle(tmp_path / "plain")
    wanted = {"pairs": [[15, 16, 13, 14]], "min_second": 0.3, "max_apart": 1.0}
    (tmp_path / "split.json").write_text(json.dumps({"pair_split": wanted}))
    rebundle(plain, tmp_path / "split", pair_split_file=tmp_path / "split.json")
    args = [
        "evaluate",
        "--bundle",
        str(tmp_path / "split"),
        "--ann",
        str(MINI / "person_keypoints.json"),
    ]
    args += ["--images", str(MINI / "images"), "--limit", "2"]
    assert main([*args, "--out", str(tmp_path / "on.json")]) == 0
    assert main([*args, "--no-pair-split", "--out", str(tmp_path / "off.json")]) == 0
    assert json.loads((tmp_path / "on.json").read_text())["pair_split"] == wanted
    assert json.loads((tmp_path / "off.json").read_text())["pair_split"] is None


def test_ap50_misses_finds_each_answers_oks_and_the_ranking_bound() -> None:
    """The ground truth as answers: every answer's OKS is 1; shuffled scores leave AP as it is
    when every answer is right, and the true OKS as the score is the bound (AP 1)."""
    from benchmarks.ap50_misses import answer_oks, features, person_oks
    from training.evaluate import keypoint_eval

    ann = json.loads((MINI / "person_keypoints.json").read_text())
    rows = _gt_as_results(ann)
    rng = np.random.default_rng(0)
    for r in rows:
        r["score"] = float(rng.uniform(0.1, 1.0))
    ev = keypoint_eval(MINI / "person_keypoints.json", rows, COCO17.sigmas_array)
    oks = answer_oks(ev, rows)
    assert oks.shape == (len(rows),)
    np.testing.assert_allclose(oks, 1.0, atol=1e-9)
    best = person_oks(ev)  # every person of the images, crowds and unlabelled ones too
    labelled = [a["id"] for a in ann["annotations"] if not a.get("iscrowd") and a["num_keypoints"]]
    assert labelled
    assert all(best[i] == pytest.approx(1.0) for i in labelled)
    assert ev.stats[0] == pytest.approx(1.0)
    # one answer moved far away: its OKS drops, the others stay
    far = [dict(r) for r in rows]
    kp = np.asarray(far[0]["keypoints"], dtype=np.float64).reshape(-1, 3)
    kp[:, :2] += 500.0
    far[0]["keypoints"] = kp.reshape(-1).tolist()
    ev_far = keypoint_eval(MINI / "person_keypoints.json", far, COCO17.sigmas_array)
    oks_far = answer_oks(ev_far, far)
    assert oks_far[0] < 0.01
    np.testing.assert_allclose(oks_far[1:], 1.0, atol=1e-9)
    x = features(rows)
    assert x.shape == (len(rows), 2 * 17 + 5)


def test_person_score_keeps_the_cheapest_detector_threshold_near_the_best_f1() -> None:
    from benchmarks.person_score import choose

    rows = [
        {"detector_threshold": t, "min_probability": m, "f1": f}
        for t, m, f in (
            (0.1, 0.4, 0.810),
            (0.15, 0.4, 0.8085),
            (0.15, 0.45, 0.8085),
            (0.15, 0.5, 0.8),
            (0.25, 0.45, 0.805),  # more than 0.002 below the best
        )
    ]
    got = choose(rows)
    assert (got["detector_threshold"], got["min_probability"]) == (0.15, 0.4)


def test_person_score_f1_reclassifies_the_kept_answers() -> None:
    """Two answers to one person, one to nobody: kept by box threshold and minimum, classified
    in the official order (the first answer finds the person, the second is a duplicate)."""
    from benchmarks.person_score import Answers, f1_counts, found_labels

    a = Answers(
        features=np.zeros((3, 7)),
        box=np.array([0.9, 0.5, 0.2]),
        official=np.array([0.8, 0.45, 0.1]),
        oks=np.array([[0.6, 0.0], [0.9, 0.0], [0.0, 0.0]]),
    )
    np.testing.assert_array_equal(found_labels([a]), [1.0, 0.0, 0.0])
    # everyone kept: 1 found of 2 persons, 3 answers
    assert f1_counts([a], [a.official], 0.0, 0.0)[1:] == (1, 3)
    f1, found, answers = f1_counts([a], [np.array([0.3, 0.9, 0.05])], 0.3, 0.2)
    assert (found, answers) == (1, 2)  # the third is below the box threshold
    # the minimum drops the first answer: the second, no longer a duplicate, finds the person
    assert f1_counts([a], [np.array([0.1, 0.9, 0.05])], 0.0, 0.2)[1:] == (1, 1)
    assert f1 == pytest.approx(2 * 0.5 * 0.5 / 1.0)
