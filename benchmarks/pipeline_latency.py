"""In-process pipeline latency of bundles on one 5-person synthetic image (640x480, seed 77), with
the image's ground-truth boxes (so every bundle poses the same 5 persons) and with its own
detector; refinement on. No HTTP (service_bench has that). Rounds alternate the bundles (each
round: 5 warm-up calls, then 20 timed calls per bundle and box source), so a busy spell of a
shared machine falls on all of them; a bundle's p50 is the median over all its timed calls, and
each round's median is reported beside it. Ratios are to the first bundle. Each bundle runs the
backbone graph the service would on the CPU (its INT8 copy where it has one: `backbone` column).

    python benchmarks/pipeline_latency.py [--flip | --no-flip] [--rounds 5] BUNDLE [BUNDLE ...]

Each bundle runs its own default (bundle.json pose.flip_test); `--flip` / `--no-flip` force the
flip test on / off for all of them. Writes benchmarks/results/pipeline_latency.{json,md}
(`--no-flip`: pipeline_latency_noflip, `--flip`: pipeline_latency_flip; `--name` overrides).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import (  # noqa: E402
    git_commit,
    machine,
    md_header,
    require_bundles,
    write_results,
)
from service.pipeline import PosePipeline  # noqa: E402
from service.results import PoseOptions  # noqa: E402
from training.synth.generate import SynthConfig, make_sample  # noqa: E402

WARMUP, TIMED = 5, 20


def timed_calls(
    pipe: PosePipeline, image: np.ndarray, options: PoseOptions
) -> tuple[list[float], int]:
    """TIMED call times in ms after WARMUP untimed calls, and the persons answered."""
    times, persons = [], 0
    for i in range(WARMUP + TIMED):
        t = time.perf_counter()
        r = pipe.estimate(image, options)
        if i >= WARMUP:
            times.append(1000 * (time.perf_counter() - t))
        persons = len(r.persons)
    return times, persons


def p50(pipe: PosePipeline, image: np.ndarray, options: PoseOptions) -> tuple[float, int]:
    """The median of one round's timed calls in ms, and the persons answered (gpu_parity.py)."""
    times, persons = timed_calls(pipe, image, options)
    return float(np.median(times)), persons


def markdown(report: dict[str, Any]) -> str:
    lines = md_header("Pipeline latency, one 5-person image (in process)", report)
    lines += [
        "",
        f"Synthetic 640x480 image (seed 77, 5 persons); refinement on; {report['rounds']} rounds "
        f"alternating the bundles, {TIMED} timed calls per bundle and box source in each; p50 over "
        "all of them, each round's median in brackets; ratio to the first bundle.",
        "",
        "| bundle | backbone | flip test | GT boxes p50 ms | ratio | rounds | detector p50 ms "
        "| ratio | rounds | persons (GT / detector) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["bundles"].items():
        lines.append(
            f"| `{name}` | {r.get('precision', 'fp32')} | {r['flip_test']} | "
            f"{r['p50_ms_gt_boxes']:.1f} | "
            f"{r['ratio_gt_boxes']:.2f} | {', '.join(f'{v:.1f}' for v in r['rounds_gt_boxes'])} | "
            f"{r['p50_ms_detector']:.1f} | {r['ratio_detector']:.2f} | "
            f"{', '.join(f'{v:.1f}' for v in r['rounds_detector'])} | "
            f"{r['persons_gt']} / {r['persons_detector']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path, help="bundle folders, compared in order")
    flip_group = ap.add_mutually_exclusive_group()
    flip_group.add_argument(
        "--flip", dest="flip", action="store_true", default=None, help="force the flip test on"
    )
    flip_group.add_argument(
        "--no-flip", dest="flip", action="store_false", help="force the flip test off"
    )
    ap.add_argument("--rounds", type=int, default=5, help="rounds alternating the bundles")
    ap.add_argument("--name", help="result file name (default: by the flip setting)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    require_bundles(ap, args.bundles)
    flip: bool | None = args.flip
    name = args.name or {None: "pipeline_latency", False: "pipeline_latency_noflip",
                         True: "pipeline_latency_flip"}[flip]  # fmt: skip
    sample = make_sample(SynthConfig(width=640, height=480, persons=(5, 5), seed=77), 0)
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (lab.bbox for lab in sample.labels)])
    pipes = []
    for path in args.bundles:
        pipe = PosePipeline.from_path(path, device="cpu")
        pipe.warmup()
        pipes.append(pipe)
    calls: dict[str, dict[str, list[list[float]]]] = {
        str(p): {"gt": [], "detector": []} for p in args.bundles
    }
    persons: dict[str, dict[str, int]] = {str(p): {} for p in args.bundles}
    for _ in range(args.rounds):
        for path, pipe in zip(args.bundles, pipes, strict=True):
            for source, options in (
                ("gt", PoseOptions(refine=True, boxes=boxes, flip=flip)),
                ("detector", PoseOptions(refine=True, flip=flip)),
            ):
                times, n = timed_calls(pipe, sample.image, options)
                calls[str(path)][source].append(times)
                persons[str(path)][source] = n
    bundles: dict[str, dict[str, Any]] = {}
    for path, pipe in zip(args.bundles, pipes, strict=True):
        c = calls[str(path)]
        bundles[str(path)] = {
            "flip_test": pipe.flips(flip),
            "precision": pipe.precision,
            "p50_ms_gt_boxes": float(np.median(np.concatenate(c["gt"]))),
            "rounds_gt_boxes": [float(np.median(r)) for r in c["gt"]],
            "persons_gt": persons[str(path)]["gt"],
            "p50_ms_detector": float(np.median(np.concatenate(c["detector"]))),
            "rounds_detector": [float(np.median(r)) for r in c["detector"]],
            "persons_detector": persons[str(path)]["detector"],
        }
    first = bundles[str(args.bundles[0])]
    for r in bundles.values():
        r["ratio_gt_boxes"] = r["p50_ms_gt_boxes"] / first["p50_ms_gt_boxes"]
        r["ratio_detector"] = r["p50_ms_detector"] / first["p50_ms_detector"]
    report = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "code": git_commit(),
        "rounds": args.rounds,
        "bundles": bundles,
    }
    write_results(name, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
