"""`scio-pose convert`: official HRNet / SimpleBaseline or MMPose weights (and optionally your own
ultralytics detector `.pt`) -> a bundle the service can load, without training anything."""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from training.config import DETECTOR_SCORE_FLOOR

HELP = "turn official HRNet/SimpleBaseline or MMPose weights into a bundle"
log = logging.getLogger(__name__)

ARCHS = (
    "hrnet_w32",
    "hrnet_w48",
    "pose_resnet_18",
    "pose_resnet_50",
    "pose_resnet_101",
    "pose_resnet_152",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Load an official checkpoint (pose_hrnet_w32_256x192.pth, pose_resnet_50_256x192.pth, "
        "...) or an MMPose 0.x/1.x checkpoint with strict key checking, export it to ONNX with "
        "a parity check, and write a bundle. Preprocessing follows where the weights come "
        "from (--preprocessing auto): official SimpleBaseline ResNets take BGR with ImageNet "
        "statistics applied in RGB order (as the official code does), official HRNets RGB; "
        "MMPose checkpoints, ResNet and HRNet alike, take RGB normalised with MMPose's "
        "mean/std on 0-255 values. The result is recorded in bundle.json."
    )
    parser.add_argument("--weights", type=Path, required=True, help="the .pth checkpoint")
    parser.add_argument("--arch", choices=ARCHS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.add_argument(
        "--input-size", type=int, nargs=2, metavar=("H", "W"), help="default: the arch's"
    )
    parser.add_argument("--spec", default="coco17", choices=["coco17", "crowdpose14"])
    parser.add_argument(
        "--preprocessing",
        choices=["auto", "official", "mmpose"],
        default="auto",
        help="input colour order and normalisation: the official code's, or MMPose's "
        "(auto: MMPose for an MMPose-format checkpoint)",
    )
    parser.add_argument(
        "--color-order",
        choices=["RGB", "BGR"],
        help="override the input colour order that --preprocessing chose",
    )
    parser.add_argument(
        "--parity-tolerance",
        type=float,
        default=None,
        help="largest ONNX Runtime vs torch difference allowed, relative to each output's "
        "largest magnitude (default 1e-4)",
    )
    parser.add_argument(
        "--sigma", type=float, help="target sigma (default: 2 at 64x48, 3 at 96x72)"
    )
    parser.add_argument("--decode", default="argmax", choices=["argmax", "dark"])
    parser.add_argument(
        "--flip-test",
        action="store_true",
        help="run the flip test by default, as the official evaluation does (requests can say "
        "flip=false); off by default because it runs the network twice",
    )
    parser.add_argument("--detector-pt", type=Path, help="an ultralytics YOLO .pt to export")
    parser.add_argument("--detector-size", type=int, default=640, help="detector input size")
    parser.add_argument("--name", default="", help="bundle name (default: from the weights)")
    parser.add_argument("--version", default="1")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from models.bundle import DetectorInfo
    from models.checkpoint import load_weights
    from models.codec import default_sigma
    from models.keypoints import get_spec
    from models.zoo import build_backbone, get_config
    from training.bundle_export import BundleSpec, build_bundle
    from training.onnx_export import PARITY_RTOL

    spec = get_spec(args.spec)
    cfg = replace(get_config(args.arch), num_keypoints=spec.num_keypoints)
    if args.input_size:
        cfg = replace(cfg, input_hw=tuple(args.input_size))
    model = build_backbone(cfg)
    naming = load_weights(model, args.weights)
    preprocessing = args.preprocessing
    if preprocessing == "auto":
        preprocessing = "mmpose" if "mmpose" in naming else "official"
    if preprocessing == "mmpose":
        cfg = replace(cfg, color_order="RGB", mean=MMPOSE_MEAN, std=MMPOSE_STD)
    if args.color_order:
        cfg = replace(cfg, color_order=args.color_order)
    model.config = cfg  # the weights do not depend on the input statistics
    print(
        f"preprocessing: {preprocessing} ({cfg.color_order}, mean {_fmt(cfg.mean)}, "
        f"std {_fmt(cfg.std)} of RGB on the 0-1 scale)"
    )
    h, w = cfg.input_hw
    with tempfile.TemporaryDirectory(prefix="scio-convert-") as tmp:
        det = None
        if args.detector_pt is not None:
            det = export_detector(args.detector_pt, args.detector_size, Path(tmp))
        bundle = build_bundle(
            args.out,
            model,
            BundleSpec(
                name=args.name or args.weights.stem,
                version=args.version,
                arch=args.arch,
                spec=spec,
                sigma=args.sigma or default_sigma((h // 4, w // 4)),
                decode=args.decode,
                flip_test=args.flip_test,
                detector_onnx=det,
                detector_info=(
                    DetectorInfo(
                        input_hw=(args.detector_size, args.detector_size),
                        score_floor=DETECTOR_SCORE_FLOOR,
                    )
                    if det
                    else None
                ),
                parity_rtol=args.parity_tolerance or PARITY_RTOL,
                provenance={
                    "preprocessing": preprocessing,
                    "checkpoint_naming": naming,
                    "converted_from": args.weights.name,
                    "detector_from": args.detector_pt.name if args.detector_pt else None,
                    "command": args.command_line,
                },
            ),
        )
    print(f"wrote {bundle.root} ({bundle.manifest.name}, {args.arch}, {h}x{w})")
    return 0


# MMPose 1.x configs (td-hm_*.py): data_preprocessor mean/std on 0-255 RGB, bgr_to_rgb=True, for
# HRNet and ResNet alike; here on the 0-1 scale, listed for R, G, B.
MMPOSE_MEAN = (123.675 / 255.0, 116.28 / 255.0, 103.53 / 255.0)
MMPOSE_STD = (58.395 / 255.0, 57.12 / 255.0, 57.375 / 255.0)


def _fmt(v: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{x:.4f}" for x in v) + ")"


def export_detector(pt: Path, size: int, work: Path) -> Path:
    """Export an ultralytics .pt to ONNX with NMS inside, batch 1 (see service/detector.py).
    The export runs on a copy so nothing is written beside the user's file, with ultralytics
    switched offline (training.detector.ultralytics_offline) so nothing is fetched or sent."""
    from training.detector import ONNX_OPSET, ultralytics_offline

    ul = ultralytics_offline(work / ".ultralytics")
    copy = work / pt.name
    shutil.copyfile(pt, copy)
    onnx_path = ul.YOLO(str(copy)).export(
        format="onnx",
        nms=True,
        imgsz=size,
        batch=1,
        dynamic=False,
        simplify=True,
        opset=ONNX_OPSET,
        conf=DETECTOR_SCORE_FLOOR,
    )
    return Path(onnx_path)
