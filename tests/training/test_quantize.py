"""The INT8 backbone and detector: `scio-pose rebundle --int8` adds them, the pipeline runs them
on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")

from models.bundle import (
    DETECTOR,
    DETECTOR_INT8,
    POSE,
    POSE_INT8,
    BundleError,
    load_bundle,
    sha256_file,
)
from service.pipeline import PosePipeline
from service.results import PoseOptions

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "bundles" / "demo"
MINI = ROOT.parent / "shared" / "data" / "coco-val-mini"
pytestmark = pytest.mark.skipif(
    not (DEMO / "bundle.json").exists() or not (MINI / "person_keypoints.json").exists(),
    reason="no bundles/demo or ../shared/data/coco-val-mini",
)


def _cli(args: list[str]) -> int:
    from service.cli import main

    return main(["rebundle", *args])


@pytest.fixture(scope="module")
def float_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bundle without its INT8 backbone and detector."""
    from dataclasses import replace

    from models.bundle import write_bundle

    demo = load_bundle(DEMO)
    files = {r: e for r, e in demo.manifest.files.items() if r not in (POSE_INT8, DETECTOR_INT8)}
    provenance = {
        k: v for k, v in demo.manifest.provenance.items() if k not in ("int8", "int8_detector")
    }
    out = tmp_path_factory.mktemp("float") / "bundle"
    manifest = replace(demo.manifest, files=files, provenance=provenance)
    write_bundle(out, manifest, {r: DEMO / e.path for r, e in files.items()})
    return out


@pytest.fixture(scope="module")
def int8_bundle(float_only: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "bundle"
    assert _cli(["--bundle", str(float_only), "--out", str(out), "--int8", str(MINI),
                 "--int8-images", "4"]) == 0  # fmt: skip
    return out


def test_rebundle_adds_an_int8_backbone_and_detector_and_keeps_the_rest(
    float_only: Path, int8_bundle: Path
) -> None:
    src, new = load_bundle(float_only), load_bundle(int8_bundle)
    assert POSE_INT8 not in src.manifest.files
    assert set(new.manifest.files) == set(src.manifest.files) | {POSE_INT8, DETECTOR_INT8}
    for role, entry in src.manifest.files.items():
        assert new.manifest.files[role].sha256 == entry.sha256, role
    q = new.manifest.provenance["int8"]
    assert q["data"] == str(MINI)
    assert q["calibration_images"] == 3
    assert q["check_crops"] > 0
    assert 0.5 < q["peak_within_1px"] <= 1.0
    assert 0.0 < q["heatmaps_rel_diff"] < 0.5  # quantized: close, not equal
    step = new.manifest.provenance["commands"][-1]
    assert any("INT8 backbone" in c for c in step["rebundled"])
    path = new.path(POSE_INT8)
    assert path is not None
    assert path.stat().st_size < 0.5 * sha_size(new, POSE)
    d = new.manifest.provenance["int8_detector"]
    assert (d["data"], d["calibration_images"], d["check_images"]) == (str(MINI / "images"), 3, 1)
    assert d["network_nodes"] > 100
    assert d["float_nodes"] > 10  # the box decoding and the NMS
    assert d["boxes_checked"] > 0
    assert 0.5 <= d["boxes_kept"] <= 1.0
    assert 0.9 <= d["median_iou"] <= 1.0
    assert any("INT8 detector" in c for c in step["rebundled"])
    path = new.path(DETECTOR_INT8)
    assert path is not None
    assert path.stat().st_size < 0.5 * sha_size(new, DETECTOR)


def test_the_int8_detector_keeps_its_box_decoding_and_nms_float() -> None:
    import onnx

    from training.quantize import detector_float_nodes

    model = onnx.load(str(DEMO / "detector.onnx"))
    keep = set(detector_float_nodes(model))
    nodes = {n.name: n.op_type for n in model.graph.node}
    assert "NonMaxSuppression" in {nodes[n] for n in keep}
    assert any("/dfl/" in n for n in keep)
    head = [n for n in nodes if n.startswith("/model/model.23/")]
    assert all((n in keep) == (nodes[n] != "Conv") for n in head if "/dfl/" not in n)
    assert not any(n.startswith("/model/model.22/") for n in keep)  # the network is quantized
    not_yolo = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"], name="relu")],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    with pytest.raises(ValueError, match="not an ultralytics detector export"):
        detector_float_nodes(not_yolo)


def test_a_new_detector_drops_the_old_ones_int8_copy(int8_bundle: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "det"
    run.mkdir()
    shutil.copyfile(DEMO / "detector.onnx", run / "detector.onnx")
    (run / "detector.json").write_text(json.dumps({"input_hw": [256, 256]}))
    out = tmp_path / "new"
    assert _cli(["--bundle", str(int8_bundle), "--out", str(out), "--detector", str(run)]) == 0
    new = load_bundle(out).manifest
    assert POSE_INT8 in new.files
    assert DETECTOR_INT8 not in new.files
    assert "int8_detector" not in new.provenance
    assert "the old detector's INT8 copy dropped" in new.provenance["commands"][-1]["rebundled"]


def sha_size(bundle, role: str) -> int:  # type: ignore[no-untyped-def]
    p = bundle.path(role)
    assert sha256_file(p) == bundle.manifest.files[role].sha256
    return int(p.stat().st_size)


def test_the_pipeline_runs_int8_on_the_cpu_unless_told(
    float_only: Path, int8_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.pipeline

    b = load_bundle(int8_bundle)
    # a CPU without 8-bit dot products keeps the float graph unless told
    monkeypatch.setattr(service.pipeline, "cpu_has_int8_dot", lambda: False)
    assert PosePipeline(b, device="cpu").precision == "fp32"
    assert PosePipeline(b, device="cpu", precision="int8").precision == "int8"
    monkeypatch.setattr(service.pipeline, "cpu_has_int8_dot", lambda: True)
    auto = PosePipeline(b, device="cpu")
    fp32 = PosePipeline(b, device="cpu", precision="fp32")
    assert auto.precision == "int8"
    assert auto.info["precision"] == "int8"
    assert fp32.precision == "fp32"
    assert auto.pose.name == "pose_int8"
    assert fp32.pose.name == "pose"
    assert auto.detector is not None
    assert fp32.detector is not None
    assert (auto.detector.model.name, auto.info["detector_precision"]) == ("detector_int8", "int8")
    assert (fp32.detector.model.name, fp32.info["detector_precision"]) == ("detector", "fp32")
    assert PosePipeline(load_bundle(float_only), device="cpu").precision == "fp32"  # none in it
    assert PosePipeline(load_bundle(DEMO), device="cpu").precision == "int8"  # as shipped
    with pytest.raises(BundleError, match="no INT8 backbone"):
        PosePipeline(load_bundle(float_only), device="cpu", precision="int8")
    with pytest.raises(ValueError, match="precision must be"):
        PosePipeline(b, device="cpu", precision="int4")

    ann = json.loads((MINI / "person_keypoints.json").read_text())
    im = ann["images"][0]
    boxes = np.array(
        [a["bbox"] for a in ann["annotations"] if a["image_id"] == im["id"] and a["num_keypoints"]]
    )
    boxes[:, 2:] += boxes[:, :2]
    from PIL import Image

    with Image.open(MINI / "images" / im["file_name"]) as f:
        image = np.asarray(f.convert("RGB"))
    opts = PoseOptions(boxes=boxes, refine=False)
    a, c = auto.estimate(image, opts), fp32.estimate(image, opts)
    ka = np.array([p.keypoints[:, :2] for p in a.persons])
    kc = np.array([p.keypoints[:, :2] for p in c.persons])
    dist = np.hypot(*(ka - kc).transpose(2, 0, 1))
    scale = float(np.max(boxes[:, 3] - boxes[:, 1]))
    assert dist.max() > 0  # a different graph ran
    assert np.median(dist) < 0.02 * scale  # and agrees with the float one
    # the INT8 detector finds the float one's people, its boxes nearly where the float ones are
    (ba, _), (bc, _) = auto.detector([image])[0], fp32.detector([image])[0]
    assert len(bc) > 0
    for box in bc:
        overlap = _iou(box, ba)
        assert overlap.max() > 0.8
    assert not np.array_equal(ba, bc)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    out: np.ndarray = inter / (area + np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) - inter)
    return out


def test_int8_needs_annotated_data_and_writes_nothing_otherwise(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _cli(["--bundle", str(DEMO), "--out", str(out), "--int8", str(tmp_path)]) == 2
    assert _cli(["--bundle", str(DEMO), "--out", str(out), "--int8", str(MINI),
                 "--int8-images", "2"]) == 2  # fmt: skip
    # DATA with fewer than 4 annotated images
    ann = json.loads((MINI / "person_keypoints.json").read_text())
    keep = {im["id"] for im in ann["images"][:2]}
    few = tmp_path / "few"
    few.mkdir()
    (few / "images").symlink_to(MINI / "images")
    (few / "person_keypoints.json").write_text(
        json.dumps(
            {
                **ann,
                "images": [im for im in ann["images"] if im["id"] in keep],
                "annotations": [a for a in ann["annotations"] if a["image_id"] in keep],
            }
        )
    )
    assert _cli(["--bundle", str(DEMO), "--out", str(out), "--int8", str(few)]) == 2
    assert not out.exists()


def test_a_bundle_refuses_an_int8_detector_without_its_float_one(tmp_path: Path) -> None:
    from models.bundle import write_bundle

    demo = load_bundle(DEMO)
    sources = {POSE: DEMO / "pose.onnx", DETECTOR_INT8: DEMO / "detector.onnx"}
    with pytest.raises(BundleError, match="needs its float detector"):
        write_bundle(tmp_path / "b", demo.manifest, sources)
    assert not (tmp_path / "b").exists()
    assert list(tmp_path.iterdir()) == []  # nothing half-written
