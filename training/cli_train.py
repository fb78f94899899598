"""`scio-pose train backbone|scio|detector`: the training verbs.

Importing this module is cheap (no torch); each subcommand imports its trainer when it runs.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from training.config import PRESETS

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
    b.add_argument("--workers", type=int, help="override data-loader workers per process")
    b.add_argument(
        "--init-weights", help="start from an official/MMPose checkpoint (same keypoints)"
    )
    b.set_defaults(handler=_backbone)


def run(args: argparse.Namespace) -> int:
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def _backbone(args: argparse.Namespace) -> int:
    from training.config import load_backbone_config, merge
    from training.train_backbone import train_backbone

    cfg = load_backbone_config(args.preset, args.config)
    over: dict[str, object] = {}
    if args.epochs is not None:
        over["epochs"] = args.epochs
    if args.workers is not None:
        over["workers"] = args.workers
    if args.init_weights:
        over["init_weights"] = args.init_weights
    cfg = merge(cfg, over)
    metrics = train_backbone(cfg, args.out, resume=args.resume)
    log.info("done: %s", metrics)
    return 0
