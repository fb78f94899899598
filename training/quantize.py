"""INT8 backbone and detector for CPU serving: ONNX Runtime's static quantization of a bundle's
`pose.onnx` and `detector.onnx`.

The backbone dominates a multi-person request on the CPU (each person's crop, twice with the
flip test). Its INT8 copy (`pose_int8.onnx`, QDQ format: weights int8 per output channel,
activations uint8 per tensor, ranges by min/max calibration) runs on the CPU's integer dot
products (AVX-512 VNNI / AMX where the CPU has them); the service uses it where the backbone runs
on the CPU (`precision: auto`) and keeps the float graph for CUDA and TensorRT.

Calibration inputs are what the service feeds the backbone: the crops of annotated person boxes
of a COCO-format folder (`scio-pose synth`'s layout), made by the pipeline's own code, with the
mirrored copies where the bundle runs the flip test. Every fourth image is kept out of
calibration and used for the check that follows: the INT8 graph's heatmaps and features against
the float graph's (largest difference relative to each output's scale, and how often the
heatmap peak stays within one heatmap pixel).

The detector's INT8 copy (`detector_int8.onnx`) quantizes the network: its convolutions and the
activations between them, the detection head's convolutions included. What follows them stays
float: the head's box decoding (the distribution-focal integral, anchors, strides) and the NMS
that ultralytics' export appends, whose coordinates and scores 8 bits would coarsen for nothing.
It is calibrated on the images of the same folder, letterboxed as the service does, and checked
on every fourth: of the float graph's boxes at the service's score threshold, the share that the
INT8 graph returns too (a box overlapping it with IoU >= 0.9), and how far the scores move.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class QuantizationReport:
    calibration_images: int
    calibration_crops: int
    check_crops: int
    heatmaps_rel_diff: float  # max |int8 - fp32| / max |fp32| over the check crops
    features_rel_diff: float
    peak_within_1px: float  # share of (crop, keypoint) heatmap peaks within 1 px of fp32's
    peak_equal: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def network_inputs(
    bundle_dir: Path, ann: Path, images: Path, limit: int | None = None
) -> list[npt.NDArray[np.float32]]:
    """Per image, the backbone's input for its annotated persons (their boxes as annotated), as
    the service makes it (with the mirrored crops where the bundle runs the flip test)."""
    from models.bundle import load_bundle
    from service.pipeline import PosePipeline
    from service.results import PoseOptions
    from training.data.coco import CocoKeypoints
    from training.evaluate import load_rgb, xyxy

    pipe = PosePipeline(load_bundle(bundle_dir), device="cpu", precision="fp32")
    coco = CocoKeypoints(ann, pipe.spec)
    out = []
    for image_id in coco.image_ids:
        ps = coco.labelled_persons(image_id)
        if not ps:
            continue
        boxes = xyxy(np.stack([p.bbox_xywh for p in ps]))
        image = load_rgb(images, coco.images[image_id])
        out.append(pipe.network_input([(image, PoseOptions(boxes=boxes))]))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"{ann}: no annotated persons to calibrate on")
    return out


def _calibration_split(
    per_image: list[npt.NDArray[np.float32]], what: str
) -> tuple[list[npt.NDArray[np.float32]], list[npt.NDArray[np.float32]]]:
    """Three items in four calibrate, every fourth checks."""
    if len(per_image) < 4:
        raise ValueError(
            f"INT8 calibration needs at least 4 {what}, not {len(per_image)} (three calibrate, "
            "the fourth checks)"
        )
    calib = [x for i, x in enumerate(per_image) if i % 4 != 3]
    check = [x for i, x in enumerate(per_image) if i % 4 == 3]
    return calib, check


def _quantize(
    src: Path,
    dst: Path,
    batches: list[npt.NDArray[np.float32]],
    keep_float: list[str] | None = None,
) -> None:
    """ONNX Runtime's static quantization as both graphs get it (module doc): QDQ, int8 weights
    per output channel, uint8 activations with min/max ranges over `batches` (the calibration
    inputs, one call each); `keep_float` names the nodes left alone."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
            x = next(self.items, None)
            return None if x is None else {input_name: x}

    prepared = dst.with_name(f"{dst.stem}-prepared.onnx")
    # the graph's shapes are already inferred by the exporter; ONNX Runtime's symbolic inference
    # gives up on the backbone's dynamic batch dimension
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=keep_float or [],
    )
    prepared.unlink()


def quantize_pose(
    src: Path,
    dst: Path,
    per_image: list[npt.NDArray[np.float32]],
) -> QuantizationReport:
    """Write the INT8 copy of the backbone `src` to `dst`, calibrated on three images in four of
    `per_image` (network inputs) and checked on the fourth (module doc)."""
    calib, check = _calibration_split(per_image, "images with annotated persons")
    calib_x = np.concatenate(calib)
    check_x = np.concatenate(check)
    with tempfile.TemporaryDirectory(prefix="scio-int8-") as tmp:
        written = Path(tmp) / "int8.onnx"
        feeds = [
            calib_x[i : i + CALIBRATION_BATCH] for i in range(0, len(calib_x), CALIBRATION_BATCH)
        ]
        _quantize(src, written, feeds)
        report = compare(src, written, check_x)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(written, dst)  # the temporary folder may be on another file system
    return QuantizationReport(
        calibration_images=len(calib),
        calibration_crops=len(calib_x),
        check_crops=len(check_x),
        **report,
    )


def compare(
    fp32: Path, int8: Path, x: npt.NDArray[np.float32], batch: int = 32
) -> dict[str, float]:
    """The INT8 graph's outputs against the float graph's on inputs `x` (module doc)."""
    import onnxruntime as ort

    sessions = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)
    ]
    name = sessions[0].get_inputs()[0].name
    outs = [
        [np.concatenate(o) for o in zip(*(s.run(None, {name: x[i : i + batch]})
                                          for i in range(0, len(x), batch)), strict=True)]
        for s in sessions
    ]  # fmt: skip
    (heat_a, feat_a), (heat_b, feat_b) = outs
    w = heat_a.shape[-1]
    pa = heat_a.reshape(*heat_a.shape[:2], -1).argmax(-1)
    pb = heat_b.reshape(*heat_b.shape[:2], -1).argmax(-1)
    dist = np.hypot(pa % w - pb % w, pa // w - pb // w)
    return {
        "heatmaps_rel_diff": float(np.abs(heat_a - heat_b).max() / np.abs(heat_a).max()),
        "features_rel_diff": float(np.abs(feat_a - feat_b).max() / np.abs(feat_a).max()),
        "peak_within_1px": float((dist < 1.5).mean()),
        "peak_equal": float((dist == 0).mean()),
    }


@dataclass(frozen=True)
class DetectorQuantizationReport:
    calibration_images: int
    check_images: int
    network_nodes: int  # left to the quantizer (module doc)
    float_nodes: int  # the box decoding and NMS
    boxes_checked: int  # the float graph's boxes at the score threshold, on the check images
    boxes_kept: float  # share of them the INT8 graph returns with IoU >= 0.9
    median_iou: float
    max_score_diff: float  # over the kept boxes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detector_inputs(
    images: Path, input_hw: tuple[int, int], limit: int | None = None
) -> list[npt.NDArray[np.float32]]:
    """The detector's input (1, 3, h, w) for each image of a folder (sorted by name), letterboxed
    as the service does (service.detector)."""
    from PIL import Image

    from service.detector import detector_input

    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    out = []
    for f in files[:limit]:
        with Image.open(f) as img:
            out.append(detector_input(np.asarray(img.convert("RGB")), input_hw)[0])
    if not out:
        raise ValueError(f"{images}: no images to calibrate the detector on")
    return out


def detector_float_nodes(model: Any) -> list[str]:
    """Nodes of an ultralytics detector export that stay float: everything outside the network
    (`/model/...`: the NMS the export appends), the distribution-focal integral (`dfl`) and the
    head's other non-convolution nodes (the box decoding). The head is the network's last
    module (`/model/model.N/`)."""
    import re

    names = [n.name for n in model.graph.node]
    modules = [int(m.group(1)) for n in names if (m := re.match(r"/model/model\.(\d+)/", n))]
    if not modules:
        raise ValueError(
            "not an ultralytics detector export (no /model/model.N/ nodes): cannot tell its "
            "network from its box decoding"
        )
    head = f"/model/model.{max(modules)}/"
    return [
        n.name
        for n in model.graph.node
        if not n.name.startswith("/model/")
        or "/dfl/" in n.name
        or (n.name.startswith(head) and n.op_type != "Conv")
    ]


def quantize_detector(
    src: Path,
    dst: Path,
    per_image: list[npt.NDArray[np.float32]],
    score_threshold: float,
) -> DetectorQuantizationReport:
    """Write the INT8 copy of the detector `src` to `dst`, calibrated on three images in four of
    `per_image` (network inputs) and checked on the fourth (module doc)."""
    import onnx

    calib, check = _calibration_split(per_image, "images")
    model = onnx.load(str(src))
    keep_float = detector_float_nodes(model)
    with tempfile.TemporaryDirectory(prefix="scio-int8-") as tmp:
        written = Path(tmp) / "int8.onnx"
        _quantize(src, written, calib, keep_float)  # one image per call: the NMS is for batch 1
        quantized = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(written)).graph.node)
        if quantized == 0:
            raise ValueError(f"{src}: nothing was quantized")
        kept, checked, median_iou, score_diff = compare_detections(
            src, written, check, score_threshold
        )
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(written, dst)
    return DetectorQuantizationReport(
        calibration_images=len(calib),
        check_images=len(check),
        network_nodes=len(model.graph.node) - len(keep_float),
        float_nodes=len(keep_float),
        boxes_checked=checked,
        boxes_kept=kept,
        median_iou=median_iou,
        max_score_diff=score_diff,
    )


def compare_detections(
    fp32: Path, int8: Path, inputs: list[npt.NDArray[np.float32]], score_threshold: float
) -> tuple[float, int, float, float]:
    """Of the float detector's boxes scoring at least `score_threshold` on `inputs`: the share
    that the INT8 detector returns with IoU >= 0.9 (any score), how many there were, the median
    IoU of each one's best INT8 box, and the largest score difference among the kept ones."""
    import onnxruntime as ort

    sessions = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)
    ]
    name = sessions[0].get_inputs()[0].name
    from service.tracking import box_iou

    ious: list[float] = []
    diffs: list[float] = []
    for x in inputs:
        a, b = (s.run(None, {name: x})[0][0] for s in sessions)  # (300, 6): x1 y1 x2 y2 s c
        a = a[a[:, 4] >= score_threshold]
        b = b[b[:, 4] > 0]
        if not len(b):
            ious += [0.0] * len(a)
            continue
        iou = box_iou(a[:, :4], b[:, :4])  # each float box's best INT8 box
        best = iou.argmax(axis=1)
        for i, j in enumerate(best):
            ious.append(float(iou[i, j]))
            if iou[i, j] >= 0.9:
                diffs.append(abs(float(a[i, 4] - b[j, 4])))
    if not ious:
        return 1.0, 0, 1.0, 0.0
    v = np.array(ious)
    return float((v >= 0.9).mean()), len(v), float(np.median(v)), max(diffs, default=0.0)
