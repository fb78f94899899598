"""`scio-pose train backbone|scio|detector`: the training verbs.

Importing this module is cheap (no torch); each subcommand imports its trainer when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.config import DETECTOR_SCORE_FLOOR, PRESETS, SCIO_PRESETS, merge

HELP = "train the backbone, the SCIO networks or the person detector"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    b = sub.add_parser(
        "backbone",
        help="train a heatmap backbone (multi-GPU: run under torchrun)",
        description=(
            "Train HRNet or SimpleBaseline top-down. Start from --preset or a TOML --config "
            "(whose keys are the settings in training/config.py; it may name a preset to "
            "override). Multi-GPU and multi-node: torchrun --nproc_per_node=N -m service.cli "
            "train backbone ..."
        ),
    )
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(PRESETS), help="named settings")
    src.add_argument("--config", type=Path, help="TOML file of settings")
    b.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs)")
    b.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it is there")
    b.add_argument("--epochs", type=int, help="override the number of epochs")
    b.add_argument(
        "--samples",
        type=int,
        help="override the schedule's length in samples (train_samples; 0: use epochs)",
    )
    b.add_argument("--workers", type=int, help="override data-loader workers per process")
    b.add_argument("--threads", type=int, help="override torch intra-op threads per process")
    b.add_argument(
        "--cpu-bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "override cpu_bf16: bfloat16 autocast on a CPU with native bf16 (avx512_bf16 or "
            "AMX; elsewhere it stays off, with a warning)"
        ),
    )
    b.add_argument(
        "--time-budget",
        type=parse_duration,
        metavar="DURATION",
        help=(
            "stop cleanly after this much wall time in this sitting (e.g. 5400, 90m, 1.5h); "
            "continue later with --resume, exactly where it stopped"
        ),
    )
    b.add_argument(
        "--init-weights", help="start from an official/MMPose checkpoint (same keypoints)"
    )
    b.set_defaults(handler=_backbone)

    s = sub.add_parser(
        "scio",
        help="self-constrained learning of the SCIO networks Φ and Γ (backbone frozen)",
        description=(
            "Train Φ (predicts the distal keypoint D of each group) and Γ (verifies by "
            "predicting A back from B, C, D) on the frozen backbone's heatmaps and features, "
            "alternating as in the paper, with Γ trained to be sensitive to D. Data: the "
            "backbone run's own training data, or --data (images the backbone never saw). "
            "Reports Γ's sensitivity on the backbone run's validation split."
        ),
    )
    s.add_argument(
        "--backbone", type=Path, required=True, help="backbone run checkpoint (final.pt)"
    )
    s.add_argument(
        "--out", type=Path, required=True, help="output folder (phi.pt, gamma.pt, scio.json)"
    )
    s.add_argument("--preset", default="cpu-small", choices=sorted(SCIO_PRESETS))
    s.add_argument("--epochs", type=int, help="override the number of epochs")
    s.add_argument(
        "--persons",
        type=int,
        help="override the cap on cached training persons (about 0.3 MB each at 64x48; 0: all)",
    )
    s.add_argument(
        "--groups",
        choices=["design", "proximal"],
        help="group assignment: DESIGN.md's (A next to D) or proximal (A = the torso joint)",
    )
    s.add_argument(
        "--data",
        type=Path,
        help="train on this folder (person_keypoints.json and images/, e.g. from `scio-pose "
        "synth`) instead of the backbone's own training images, so that Φ and Γ see the "
        "backbone's errors on images it never saw, as at inference",
    )
    s.add_argument(
        "--flip-test",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cache the backbone's heatmaps flip-fused, as a bundle with the flip test serves "
        "them (preset's choice by default)",
    )
    s.add_argument(
        "--seed",
        type=int,
        help="override the seed (Φ/Γ initialisation, sample order, augmentation; preset: 0)",
    )
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any field of the preset (training.config.ScioTrainConfig), the value as "
        "JSON (e.g. --set candidates_weight=4 --set context_widths=[8,12,16,24]); repeatable",
    )
    s.add_argument("--resume", action="store_true", help="continue from OUT if a run is there")
    s.set_defaults(handler=_scio)
    _add_detector(sub)


def _add_detector(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser(
        "detector",
        help="train a person detector with ultralytics and export it to ONNX (NMS inside)",
        description=(
            "Train an ultralytics YOLO person detector on COCO-format person boxes (crowd regions "
            "skipped) or on generated synthetic people, from a model yaml (built from scratch) "
            "or your own .pt, and export OUT/detector.onnx (NMS inside, batch 1, opset 17) with "
            "OUT/detector.json (input size, score threshold, val mAP, provenance). Nothing is "
            "downloaded: ultralytics runs offline with its settings in OUT/.ultralytics."
        ),
    )
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--synthetic", action="store_true", help="generate synthetic people (see --synth-*)"
    )
    src.add_argument("--train-ann", type=Path, help="COCO-format annotation file (persons)")
    d.add_argument("--train-images", type=Path, help="image folder of --train-ann")
    d.add_argument("--val-ann", type=Path, help="validation annotation file")
    d.add_argument("--val-images", type=Path, help="image folder of --val-ann")
    d.add_argument("--synth-images", type=int, default=1000, help="synthetic training images")
    d.add_argument("--synth-val-images", type=int, default=100, help="synthetic val images")
    d.add_argument("--synth-size", type=int, nargs=2, default=(256, 256), metavar=("W", "H"))
    d.add_argument("--synth-persons", type=int, nargs=2, default=(1, 4), metavar=("MIN", "MAX"))
    d.add_argument("--synth-seed", type=int, default=1, help="val uses seed + 1000")
    d.add_argument(
        "--synth-cache",
        type=Path,
        help="folder for the synthetic images (default OUT/data; share it with a backbone run)",
    )
    model = d.add_mutually_exclusive_group()
    model.add_argument(
        "--model",
        default="yolo11n.yaml",
        help="model yaml, packaged name or path (default %(default)s)",
    )
    model.add_argument("--weights", type=Path, help="a local ultralytics .pt to fine-tune")
    d.add_argument("--out", type=Path, required=True, help="run folder")
    d.add_argument("--epochs", type=int, default=30)
    d.add_argument(
        "--time-budget",
        type=parse_duration,
        help=(
            "wall-clock budget (seconds, or 90m, 1.5h): ultralytics refits the number of epochs"
            " and its learning-rate schedule to it after the first epoch; --epochs is ignored"
        ),
    )
    d.add_argument(
        "--warmup-epochs",
        type=float,
        default=3.0,
        help="learning-rate warm-up in epochs (default %(default)s; fewer for a large pool)",
    )
    d.add_argument(
        "--optimizer",
        default="auto",
        help=(
            "ultralytics' optimizer (SGD, AdamW, ...; default %(default)s: it picks the optimizer "
            "and the learning rate itself and ignores --lr0)"
        ),
    )
    d.add_argument(
        "--lr0",
        type=float,
        help="initial learning rate, with --optimizer (continuing a trained detector: smaller)",
    )
    d.add_argument(
        "--close-mosaic",
        type=_non_negative_int,
        default=10,
        help=(
            "train the last N epochs without mosaic augmentation (default %(default)s, "
            "ultralytics': a run of up to N epochs never sees a mosaic; 0: mosaic to the end)"
        ),
    )
    d.add_argument("--imgsz", type=int, default=256, help="square input size, multiple of 32")
    d.add_argument("--batch", type=int, default=16)
    d.add_argument("--workers", type=int, default=2, help="data-loader workers (GPU only)")
    d.add_argument("--device", default="auto", help="auto, cpu, 0, 0,1, ... (default %(default)s)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, help="torch CPU threads (default: cores - 1)")
    d.add_argument(
        "--score-threshold", type=float, default=0.25, help="the service's default min score"
    )
    d.add_argument(
        "--export-conf",
        type=float,
        default=DETECTOR_SCORE_FLOOR,
        help="score floor baked into the exported NMS (default %(default)s)",
    )
    d.add_argument(
        "--nms-iou",
        type=float,
        default=0.7,
        help=(
            "NMS IoU baked into the export (default %(default)s, ultralytics'): higher keeps "
            "people whose boxes overlap more; the pipeline's OKS-NMS removes duplicate poses"
        ),
    )
    d.add_argument(
        "--export-only",
        action="store_true",
        help="no training: validate and export --weights as they are (e.g. with another --nms-iou)",
    )
    d.set_defaults(handler=_detector)


def run(args: argparse.Namespace) -> int:
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def _overrides(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs; each VALUE parsed as JSON, else taken as a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _scio(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from training.train_scio import train_scio

    cfg = SCIO_PRESETS[args.preset]
    if args.epochs is not None:
        cfg = replace(cfg, epochs=args.epochs)
    if args.persons is not None:
        if args.persons < 0:
            raise SystemExit("--persons must be >= 0 (0: all)")
        cfg = replace(cfg, max_train_persons=args.persons)
    if args.groups is not None:
        cfg = replace(cfg, groups=args.groups)
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    if args.data is not None:
        cfg = replace(cfg, data=str(args.data))
    if args.flip_test is not None:
        cfg = replace(cfg, flip_test=args.flip_test)
    if args.set:
        cfg = merge(cfg, _overrides(args.set))
    train_scio(args.backbone, args.out, cfg, resume=args.resume)
    return 0


def _backbone(args: argparse.Namespace) -> int:
    from training.config import load_backbone_config, merge
    from training.train_backbone import train_backbone

    cfg = load_backbone_config(args.preset, args.config)
    over: dict[str, object] = {}
    if args.epochs is not None:
        over["epochs"] = args.epochs
    if args.samples is not None:
        over["train_samples"] = args.samples
    if args.workers is not None:
        over["workers"] = args.workers
    if args.threads is not None:
        over["torch_threads"] = args.threads
    if args.cpu_bf16 is not None:
        over["cpu_bf16"] = args.cpu_bf16
    if args.init_weights:
        over["init_weights"] = args.init_weights
    cfg = merge(cfg, over)
    metrics = train_backbone(cfg, args.out, resume=args.resume, time_budget_s=args.time_budget)
    if metrics.get("stopped") == "time_budget":
        log.info(
            "stopped at the time budget after %d samples; continue with --resume",
            metrics["samples"],
        )
    else:
        log.info("done: %s", metrics)
    return 0


def parse_duration(text: str) -> float:
    """Seconds from "5400", "90s", "90m" or "1.5h"."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    t = text.strip().lower()
    scale = units.get(t[-1:])
    number = t[:-1] if scale is not None else t
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (e.g. 5400, 90m, 1.5h)"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a time budget must be positive, got {text!r}")
    return value


def _detector(args: argparse.Namespace) -> int:
    from training.config import DataConfig, SyntheticData
    from training.data.sources import DatasetPaths, resolve_data
    from training.detector import DetectorDataError, DetectorTrainConfig, train_detector

    cfg = DetectorTrainConfig(
        model=args.model,
        weights=args.weights,
        imgsz=args.imgsz,
        epochs=args.epochs,
        time_budget_s=args.time_budget,
        warmup_epochs=args.warmup_epochs,
        optimizer=args.optimizer,
        lr0=args.lr0,
        close_mosaic=args.close_mosaic,
        batch=args.batch,
        workers=args.workers,
        device=args.device,
        seed=args.seed,
        threads=args.threads,
        score_threshold=args.score_threshold,
        export_conf=args.export_conf,
        iou=args.nms_iou,
        export_only=args.export_only,
    )
    try:
        if args.synthetic:
            s = SyntheticData(
                train_images=args.synth_images,
                val_images=args.synth_val_images,
                seed=args.synth_seed,
                size=tuple(args.synth_size),
                persons=tuple(args.synth_persons),
            )
            paths = resolve_data(DataConfig(synthetic=s), args.synth_cache or args.out / "data")
        else:
            missing = [
                f"--{n.replace('_', '-')}"
                for n in ("train_images", "val_ann", "val_images")
                if getattr(args, n) is None
            ]
            if missing:
                raise DetectorDataError(f"--train-ann also needs {', '.join(missing)}")
            paths = DatasetPaths(args.train_ann, args.train_images, args.val_ann, args.val_images)
        command = getattr(args, "command_line", "")  # set by service.cli.main
        result = train_detector(cfg, paths, args.out, command=command)
    except DetectorDataError as e:
        log.error("%s", e)
        return 2
    m = result.metrics
    print(
        f"wrote {result.onnx} (input {result.info.input_hw[0]}x{result.info.input_hw[1]}, "
        f"val mAP50 {m['map50']:.3f}, mAP50-95 {m['map50_95']:.3f})"
    )
    return 0


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value
