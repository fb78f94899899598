"""`scio-pose evaluate`: COCO keypoint AP of a bundle through the service's own pipeline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "COCO keypoint evaluation of a bundle (the same pipeline the service runs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from service.settings import PRECISION_HELP, PRECISIONS

    parser.description = (
        "Run the bundle's pipeline on every image of a COCO-format annotation file and report "
        "pycocotools' keypoint table (xtcocotools' crowd table for CrowdPose bundles) and the "
        "per-keypoint accuracy of the distal keypoints. --refine none|scl|sco gives the paper's "
        "ablation rows: baseline, +SCL (Φ's prior), +SCL+SCO (and the search)."
    )
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--ann", type=Path, required=True, help="COCO-format keypoint annotations")
    parser.add_argument("--images", type=Path, required=True, help="the images folder")
    parser.add_argument(
        "--boxes",
        default="gt",
        help="'gt' (ground-truth boxes), 'detector' (the bundle's), or a COCO results file",
    )
    parser.add_argument("--refine", default="none", choices=["none", "scl", "sco"])
    parser.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip test, the mirrored crop's heatmaps moved back by the bundle's pose.flip_shift "
        "(the official 1 heatmap px, or the exact shift for the stride that export writes); "
        "default: the bundle's (bundle.json pose.flip_test)",
    )
    parser.add_argument(
        "--head-view",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the head view, as /pose?head_view=: the backbone run again on each person's "
        "upper-body crop for the nose, eyes and ears",
    )
    parser.add_argument(
        "--pair-split",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="split left/right pairs decoded on one spot as the bundle says (bundle.json "
        "pose.pair_split; --no-pair-split: the backbone's own decoding)",
    )
    parser.add_argument("--device", default="cpu", choices=["auto", "cuda", "tensorrt", "cpu"])
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    parser.add_argument(
        "--protocol",
        default="service",
        choices=["service", "official"],
        help="official: the official HRNet code's protocol exactly (its GT-box filter, "
        "keypoints not clipped to the image, its OKS-NMS tie order); service: keypoints as "
        "/pose returns them (clipped), degenerate GT boxes skipped",
    )
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--out", type=Path, help="write the result JSON here")
    parser.add_argument(
        "--dump-refinements", type=Path, help="write one JSON line per refined keypoint here"
    )


def run(args: argparse.Namespace) -> int:
    from training.evaluate import (
        EvalOptions,
        evaluate,
        format_report,
        write_json,
    )

    if args.boxes not in ("gt", "detector") and not Path(args.boxes).is_file():
        raise SystemExit(f"--boxes: {args.boxes} is neither 'gt', 'detector' nor a file")
    result = evaluate(
        args.bundle,
        args.ann,
        args.images,
        EvalOptions(
            boxes=args.boxes,
            refine=args.refine,
            flip=args.flip,
            device=args.device,
            precision=args.precision,
            limit=args.limit,
            protocol=args.protocol,
            pair_split=args.pair_split,
            head_view=args.head_view,
            keep_refinements=args.dump_refinements is not None,
        ),
    )
    rows = result.pop("refinement_rows", None)
    print(format_report(result))
    if args.out:
        write_json(args.out, result)
    if args.dump_refinements and rows is not None:
        args.dump_refinements.parent.mkdir(parents=True, exist_ok=True)
        args.dump_refinements.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0
