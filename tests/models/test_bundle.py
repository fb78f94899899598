import json
from dataclasses import replace
from pathlib import Path

import pytest

from models.bundle import (
    DETECTOR,
    POSE,
    BundleError,
    BundleManifest,
    DetectorInfo,
    PoseModelInfo,
    load_bundle,
    write_bundle,
)
from models.keypoints import COCO17
from models.pairs import PairSplit

POSE_INFO = PoseModelInfo(
    arch="hrnet_small",
    input_hw=(128, 96),
    heatmap_hw=(32, 24),
    sigma=1.0,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    color_order="RGB",
    feature_channels=16,
)


def _manifest() -> BundleManifest:
    return BundleManifest(
        name="t",
        version="1",
        spec=COCO17,
        pose=POSE_INFO,
        files={},
        detector=DetectorInfo(input_hw=(320, 320)),
        scio={"search": {"step": 1.5}},
        provenance={"data": "synthetic seed 1"},
    )


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.onnx").write_bytes(b"pose-bytes")
    (tmp_path / "src" / "b.onnx").write_bytes(b"det-bytes")
    write_bundle(
        tmp_path / "b",
        _manifest(),
        {POSE: tmp_path / "src" / "a.onnx", DETECTOR: tmp_path / "src" / "b.onnx"},
    )
    return tmp_path / "b"


def test_round_trip(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    m = b.manifest
    assert m.spec == COCO17
    assert m.pose == POSE_INFO
    assert m.detector == DetectorInfo(input_hw=(320, 320))
    assert m.scio == {"search": {"step": 1.5}}
    assert b.path(POSE).read_bytes() == b"pose-bytes"
    assert not b.has_scio
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == ["b", "src"]  # no leftovers


def test_the_pair_split_round_trips_and_older_bundles_have_none(bundle_dir: Path) -> None:
    assert load_bundle(bundle_dir).manifest.pose.pair_split is None
    meta = bundle_dir / "bundle.json"
    d = json.loads(meta.read_text())
    assert d["pose"]["pair_split"] is None
    del d["pose"]["pair_split"]  # as bundles written before it existed
    meta.write_text(json.dumps(d))
    assert load_bundle(bundle_dir).manifest.pose.pair_split is None
    split = PairSplit(((15, 16, 13, 14),), min_second=0.3)
    m = replace(_manifest(), pose=replace(POSE_INFO, pair_split=split))
    write_bundle(bundle_dir, m, {POSE: bundle_dir / "pose.onnx"})
    assert load_bundle(bundle_dir).manifest.pose.pair_split == split


def test_the_person_score_round_trips_and_older_bundles_have_none(bundle_dir: Path) -> None:
    from models.postprocess import PersonScoreModel

    assert load_bundle(bundle_dir).manifest.detector.person_score is None  # type: ignore[union-attr]
    meta = bundle_dir / "bundle.json"
    d = json.loads(meta.read_text())
    assert d["detector"]["person_score"] is None
    del d["detector"]["person_score"]  # as bundles written before it existed
    meta.write_text(json.dumps(d))
    assert load_bundle(bundle_dir).manifest.detector.person_score is None  # type: ignore[union-attr]
    model = PersonScoreModel(weights=(0.5, 2.0), bias=-1.0, features=("box_logit", "keypoint_max"))
    det = DetectorInfo(input_hw=(320, 320), min_person_score=0.4, person_score=model)
    old = load_bundle(bundle_dir)
    files = {POSE: old.path(POSE), DETECTOR: old.path(DETECTOR)}
    write_bundle(bundle_dir, replace(_manifest(), detector=det), files)  # type: ignore[arg-type]
    assert load_bundle(bundle_dir).manifest.detector == det
    saved = json.loads(meta.read_text())["detector"]["person_score"]
    assert saved == {"features": ["box_logit", "keypoint_max"], "weights": [0.5, 2.0], "bias": -1.0}


def test_rewrite_replaces_the_bundle_whole(bundle_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "src" / "c.onnx").write_bytes(b"new-pose")
    write_bundle(bundle_dir, _manifest(), {POSE: tmp_path / "src" / "c.onnx"})
    b = load_bundle(bundle_dir)
    assert b.path(POSE).read_bytes() == b"new-pose"
    assert b.manifest.detector is None  # no detector file, no detector settings
    assert not (bundle_dir / "detector.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "src"]


def test_a_failed_write_leaves_the_old_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_bundle(bundle_dir, _manifest(), {POSE: tmp_path / "missing.onnx"})
    assert load_bundle(bundle_dir).path(POSE).read_bytes() == b"pose-bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "src"]


def test_tampered_file_fails_the_checksum(bundle_dir: Path) -> None:
    (bundle_dir / "pose.onnx").write_bytes(b"evil")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle_dir)
    load_bundle(bundle_dir, verify=False)


def test_the_flip_shift_round_trips_and_older_booleans_read_as_pixels(bundle_dir: Path) -> None:
    assert load_bundle(bundle_dir).manifest.pose.flip_shift == 1.0  # the official default
    meta = bundle_dir / "bundle.json"
    for written, read in ((True, 1.0), (False, 0.0), (0.5, 0.5), (0, 0.0)):
        d = json.loads(meta.read_text())
        d["pose"]["flip_shift"] = written  # booleans: as bundles wrote it before fractions
        meta.write_text(json.dumps(d))
        assert load_bundle(bundle_dir, verify=False).manifest.pose.flip_shift == read
    d = json.loads(meta.read_text())
    del d["pose"]["flip_shift"]
    meta.write_text(json.dumps(d))
    assert load_bundle(bundle_dir, verify=False).manifest.pose.flip_shift == 1.0
    m = replace(_manifest(), pose=replace(POSE_INFO, flip_shift=0.75))
    write_bundle(bundle_dir, m, {POSE: bundle_dir / "pose.onnx"})
    assert json.loads(meta.read_text())["pose"]["flip_shift"] == 0.75
    assert load_bundle(bundle_dir).manifest.pose.flip_shift == 0.75


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="other"), "not a scio-pose bundle"),
        (lambda d: d["pose"].update(flip_shift=1.5), "flip_shift must be"),
        (lambda d: d["pose"].update(flip_shift="half"), "flip_shift must be"),
        (lambda d: d.update(format_version=99), "not supported"),
        (lambda d: d["files"]["pose"].update(path="../../etc/passwd"), "leaves the bundle"),
        (lambda d: d["files"]["pose"].update(path="nope.onnx"), "missing"),
        (lambda d: d["files"].pop("pose"), "names no 'pose'"),
        (lambda d: d["pose"].pop("sigma"), "malformed"),
        (lambda d: d["pose"].update(pair_split={"pairs": [[15, 16, 13, 17]]}), "indices must be"),
        (lambda d: d["pose"].update(pair_split={"pairs": [[15, 16]]}), "four distinct"),
        (
            lambda d: d["detector"].update(
                person_score={"features": ["height"], "weights": [1.0], "bias": 0.0}
            ),
            "unknown person score features",
        ),
        (lambda d: d["detector"].update(person_score={"bias": 0.0}), "malformed"),
    ],
)
def test_bad_manifests_give_clear_errors(bundle_dir: Path, edit, message) -> None:
    meta = bundle_dir / "bundle.json"
    d = json.loads(meta.read_text())
    edit(d)
    meta.write_text(json.dumps(d))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="missing"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("{")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)


def test_the_detector_oks_nms_threshold_defaults_to_the_official_one_and_is_checked() -> None:
    assert DetectorInfo.from_dict({"input_hw": [256, 256]}).oks_nms == 0.9  # older bundles
    assert DetectorInfo.from_dict({"input_hw": [256, 256], "oks_nms": 0.6}).oks_nms == 0.6
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="OKS-NMS"):
            DetectorInfo(input_hw=(256, 256), oks_nms=bad)


def test_the_minimum_person_score_defaults_to_answering_everyone_and_is_checked() -> None:
    assert DetectorInfo.from_dict({"input_hw": [256, 256]}).min_person_score == 0.0  # older
    saved = {"input_hw": [256, 256], "min_person_score": 0.15}
    assert DetectorInfo.from_dict(saved).min_person_score == 0.15
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="minimum person score"):
            DetectorInfo(input_hw=(256, 256), min_person_score=bad)


def test_the_flip_minimum_defaults_to_every_box_and_is_checked() -> None:
    assert DetectorInfo.from_dict({"input_hw": [256, 256]}).flip_min_score == 0.0  # older
    saved = {"input_hw": [256, 256], "flip_min_score": 0.25}
    assert DetectorInfo.from_dict(saved).flip_min_score == 0.25
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="flip test's minimum box score"):
            DetectorInfo(input_hw=(256, 256), flip_min_score=bad)


def test_the_detector_score_floor_comes_from_the_export_and_is_checked() -> None:
    assert DetectorInfo.from_dict({"input_hw": [256, 256]}).score_floor == 0.0  # older bundles
    run = {"input_hw": [256, 256], "export": {"conf": 0.05, "iou": 0.8}}  # detector.json
    assert DetectorInfo.from_dict(run).score_floor == 0.05
    saved = {"input_hw": [256, 256], "score_floor": 0.01, "export": {"conf": 0.05}}
    assert DetectorInfo.from_dict(saved).score_floor == 0.01  # bundle.json's own wins
    with pytest.raises(ValueError, match="score_floor"):
        DetectorInfo(input_hw=(256, 256), score_threshold=0.25, score_floor=0.3)
