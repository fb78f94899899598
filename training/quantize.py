"""INT8 backbone for CPU serving: ONNX Runtime's static quantization of a bundle's `pose.onnx`.

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


def quantize_pose(
    src: Path,
    dst: Path,
    per_image: list[npt.NDArray[np.float32]],
) -> QuantizationReport:
    """Write the INT8 copy of the backbone `src` to `dst`, calibrated on three images in four of
    `per_image` (network inputs) and checked on the fourth (module doc)."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(per_image) < 4:
        raise ValueError(
            f"INT8 calibration needs at least 4 images with annotated persons, not "
            f"{len(per_image)} (three calibrate, the fourth checks)"
        )
    calib = [x for i, x in enumerate(per_image) if i % 4 != 3]
    check = [x for i, x in enumerate(per_image) if i % 4 == 3]
    calib_x = np.concatenate(calib)
    check_x = np.concatenate(check)
    input_name = (
        ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
            if self.start >= len(calib_x):
                return None
            batch = calib_x[self.start : self.start + CALIBRATION_BATCH]
            self.start += CALIBRATION_BATCH
            return {input_name: batch}

    with tempfile.TemporaryDirectory(prefix="scio-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # the graph's shapes are already inferred by the exporter; ONNX Runtime's symbolic
        # inference gives up on its dynamic batch dimension
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        written = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(written),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
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
