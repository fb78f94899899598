"""`scio-pose synth`: write the built-in synthetic multi-person dataset in COCO format.

    scio-pose synth --out DIR --images N --seed S [--size W H] [--persons MIN MAX]
                    [--spec coco17|crowdpose14] [--workers N]

writes DIR/images/*.jpg, DIR/person_keypoints.json (COCO keypoints) and DIR/detections.json
(simulated detector output, COCO results format), then prints the per-keypoint visible /
occluded / outside rates. The same arguments give the same bytes, whatever --workers is.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

HELP = "generate the synthetic multi-person keypoint dataset (COCO format, with detections)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--images", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument(
        "--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"),
        help="image size (default 640 480)",
    )  # fmt: skip
    parser.add_argument(
        "--persons", type=int, nargs=2, default=(1, 6), metavar=("MIN", "MAX"),
        help="people per image (default 1 6)",
    )  # fmt: skip
    parser.add_argument("--spec", choices=("coco17", "crowdpose14"), default="coco17")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes (default: the CPU count)"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def run(args: argparse.Namespace) -> int:
    from training.synth.generate import SynthConfig, generate, rate_table

    if args.images < 0:
        print("scio-pose synth: --images must be >= 0", file=sys.stderr)
        return 2
    try:
        cfg = SynthConfig(
            width=args.size[0],
            height=args.size[1],
            persons=(args.persons[0], args.persons[1]),
            spec=args.spec,
            seed=args.seed,
        )
    except ValueError as e:
        print(f"scio-pose synth: {e}", file=sys.stderr)
        return 2
    summary = generate(cfg, args.out, args.images, workers=args.workers, progress=args.progress)
    log.info("wrote %s", ", ".join(str(f) for f in summary.files))
    print(rate_table(summary))
    return 0
