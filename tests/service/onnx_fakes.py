"""Hand-built ONNX models with known behaviour, for pipeline tests that need no trained weights.

- The "dot" pose model average-pools the first input channel by the stride and repeats it as K
  heatmaps, so a bright dot in the crop becomes a heatmap peak at the dot's position.
- The fixed detector returns the same boxes (in letterboxed input pixels) for every image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.bundle import DETECTOR, POSE, BundleManifest, DetectorInfo, PoseModelInfo, write_bundle
from models.keypoints import COCO17, KeypointSpec

OPSET = [helper.make_opsetid("", 17)]
IR_VERSION = 8  # what the torch exporter writes at opset 17; onnxruntime-gpu 1.31 reads <= 13


def make_dot_pose_model(path: Path, num_keypoints: int, stride: int = 4) -> Path:
    # image (N,3,H,W) -> first channel (N,1,H,W) -> avgpool -> (N,1,h,w) -> tile to (N,K,h,w)
    nodes = [
        helper.make_node("Slice", ["image", "s0", "s1", "ax1"], ["red"]),
        helper.make_node(
            "AveragePool",
            ["red"],
            ["pooled"],
            kernel_shape=[stride, stride],
            strides=[stride, stride],
        ),
        helper.make_node("Tile", ["pooled", "reps"], ["heatmaps"]),
        helper.make_node("Tile", ["pooled", "freps"], ["features"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([1], np.int64), "s1"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.array([1, num_keypoints, 1, 1], np.int64), "reps"),
        numpy_helper.from_array(np.array([1, 2, 1, 1], np.int64), "freps"),
    ]
    graph = helper.make_graph(
        nodes,
        "dot_pose",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [
            helper.make_tensor_value_info(
                "heatmaps", TensorProto.FLOAT, ["N", num_keypoints, "h", "w"]
            ),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 2, "h", "w"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def make_fixed_detector(path: Path, rows: np.ndarray) -> Path:
    """rows: (R, 6) [x1, y1, x2, y2, score, class] in letterboxed pixels, padded to 300."""
    table = np.zeros((1, 300, 6), np.float32)
    table[0, : len(rows)] = rows
    nodes = [
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("Slice", ["shape", "z", "o", "z"], ["batch"]),
        helper.make_node("Concat", ["batch", "tail"], ["target"], axis=0),
        helper.make_node("Expand", ["table", "target"], ["output0"]),
    ]
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([0], np.int64), "z"),
        numpy_helper.from_array(np.array([1], np.int64), "o"),
        numpy_helper.from_array(np.array([300, 6], np.int64), "tail"),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, "S", "S"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["B", 300, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def make_fake_bundle(
    root: Path,
    spec: KeypointSpec = COCO17,
    input_hw: tuple[int, int] = (128, 96),
    detector_rows: np.ndarray | None = None,
    detector_hw: tuple[int, int] = (320, 320),
    scio_files: dict[str, Path] | None = None,
    scio_settings: dict[str, Any] | None = None,
    flip_test: bool = False,
    oks_nms: float = 0.9,
    min_person_score: float = 0.0,
    person_score: Any = None,
    flip_min_score: float = 0.0,
) -> Path:
    """The dot pose model (features: 2 channels), optionally a fixed detector and SCIO files."""
    work = root.parent / f"{root.name}-src"
    work.mkdir(parents=True, exist_ok=True)
    sources = {POSE: make_dot_pose_model(work / "pose.onnx", spec.num_keypoints)}
    if detector_rows is not None:
        sources[DETECTOR] = make_fixed_detector(work / "det.onnx", detector_rows)
    sources.update(scio_files or {})
    manifest = BundleManifest(
        name="fake-dot",
        version="0",
        spec=spec,
        pose=PoseModelInfo(
            arch="dot",
            input_hw=input_hw,
            heatmap_hw=(input_hw[0] // 4, input_hw[1] // 4),
            sigma=1.0,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            color_order="RGB",
            feature_channels=2,
            flip_test=flip_test,
        ),
        files={},
        detector=DetectorInfo(
            input_hw=detector_hw,
            score_threshold=0.3,
            oks_nms=oks_nms,
            min_person_score=min_person_score,
            person_score=person_score,
            flip_min_score=flip_min_score,
        ),
        scio=scio_settings,
        provenance={"test": True},
    )
    write_bundle(root, manifest, sources)
    return root
