"""The `scio-pose` command line.

Each verb lives in its own module, named here by import path and imported only when that verb
runs (or when its help is shown), so `scio-pose serve` never imports torch. A verb module defines

    HELP: str                                    one line for the verb list
    def add_arguments(parser) -> None            its options; must not import heavy packages
    def run(args) -> int                         does the work; imports what it needs inside

A verb whose extra is not installed fails with a message naming the extra, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
from collections.abc import Sequence
from types import ModuleType

# verb -> module. Add a verb here when its capability lands; never a placeholder.
VERBS: dict[str, str] = {
    "serve": "service.serve",
    "synth": "training.synth.cli",
    "train": "training.cli_train",
    "convert": "training.cli_convert",
    "evaluate": "training.cli_evaluate",
    "export": "training.cli_export",
    "rebundle": "training.cli_rebundle",
    "predict": "service.predict",
}

# Top-level packages that only the `train` extra installs.
_TRAIN_ONLY = {"torch", "torchvision", "onnx", "ultralytics", "pycocotools", "xtcocotools", "tqdm"}

log = logging.getLogger("scio_pose")


def _verb_module(verb: str) -> ModuleType:
    return importlib.import_module(VERBS[verb])


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `verb`'s module is imported (all of them when verb is None, for help)."""
    parser = argparse.ArgumentParser(
        prog="scio-pose",
        description="Human pose estimation with self-constrained inference optimization (SCIO).",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERBS if verb is None else [verb]:
        mod = _verb_module(name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scio-pose")
    except PackageNotFoundError:
        return "unknown"


def _find_verb(argv: Sequence[str]) -> str | None:
    """The verb: the first word that is not an option or the value of --log-level."""
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--log-level":
            skip = True
        elif not a.startswith("-"):
            return a if a in VERBS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = _find_verb(argv)
    try:
        parser = build_parser(verb)
        args = parser.parse_args(argv)
        if args.verb is None:
            parser.print_help()
            return 0 if not argv or argv[0] in ("-h", "--help") else 2
        logging.basicConfig(
            level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        args.command_line = "scio-pose " + shlex.join(argv)  # for provenance records
        result: int = _verb_module(args.verb).run(args)
        return result
    except ModuleNotFoundError as e:
        root = (e.name or "").split(".")[0]
        if root in _TRAIN_ONLY:
            print(
                f"scio-pose {verb or ''}: needs the training extra ({root} is not installed); "
                "install it with: pip install 'scio-pose[train]'",
                file=sys.stderr,
            )
            return 2
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
