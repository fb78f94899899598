"""A bundle's INT8 detector against its float one, the graphs alone: ONNX Runtime sessions as the
service makes them (CPU), one letterboxed image per call as the service feeds them (held-out
split images), rounds alternating the two graphs; a graph's time is the median over all its
timed calls, each round's median beside it. Also how many of the float graph's boxes at the
service's threshold the INT8 graph returns (IoU >= 0.9) on those images.

    python benchmarks/int8_detector.py --bundle bundles/demo [--rounds 5]

Writes benchmarks/results/int8_detector.{json,md} (`--name` overrides).
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

from benchmarks._common import git_commit, machine, md_header, write_results  # noqa: E402
from benchmarks.scio_ablation import make_split  # noqa: E402
from models.bundle import DETECTOR, DETECTOR_INT8, load_bundle  # noqa: E402
from service.runtime import cpu_has_int8_dot, create_session  # noqa: E402

CALLS = 30


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "demo")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=40, help="held-out images to run")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument("--name", default="int8_detector")
    args = ap.parse_args()
    from training.quantize import compare_detections, detector_inputs

    bundle = load_bundle(args.bundle)
    info = bundle.manifest.detector
    fp32, int8 = bundle.path(DETECTOR), bundle.path(DETECTOR_INT8)
    if info is None or fp32 is None or int8 is None:
        ap.error(f"{args.bundle} has no INT8 detector (scio-pose rebundle --int8)")
    paths = {"fp32": fp32, "int8": int8}
    split = make_split(args.work, "val", 400)
    inputs = detector_inputs(split / "images", info.input_hw, limit=args.images)
    sessions = {k: create_session(p, "cpu") for k, p in paths.items()}
    name = sessions["fp32"].get_inputs()[0].name
    for s in sessions.values():  # warm-up
        for x in inputs[:5]:
            s.run(None, {name: x})
    rounds: dict[str, list[float]] = {k: [] for k in sessions}
    calls: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for k, s in sessions.items():
            ts = []
            for i in range(CALLS):
                x = inputs[i % len(inputs)]
                t = time.perf_counter()
                s.run(None, {name: x})
                ts.append(1000 * (time.perf_counter() - t))
            rounds[k].append(float(np.median(ts)))
            calls[k].extend(ts)
    p50 = {k: float(np.median(v)) for k, v in calls.items()}
    kept, checked, median_iou, score_diff = compare_detections(
        paths["fp32"], paths["int8"], inputs, info.score_threshold
    )
    bundle_name = args.bundle.relative_to(ROOT) if args.bundle.is_relative_to(ROOT) else args.bundle
    report: dict[str, Any] = {
        "command": "python benchmarks/int8_detector.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "code": git_commit(),
        "bundle": str(bundle_name),
        "int8_dot": cpu_has_int8_dot(),
        "images": len(inputs),
        "input_hw": list(info.input_hw),
        "p50_ms": p50,
        "round_medians_ms": rounds,
        "speedup": p50["fp32"] / p50["int8"],
        "boxes": {
            "threshold": info.score_threshold,
            "float_boxes": checked,
            "kept_iou_0.9": kept,
            "median_iou": median_iou,
            "max_score_diff": score_diff,
        },
    }
    lines = md_header("INT8 detector against the float one (graphs alone, CPU)", report)
    lines += [
        "",
        f"Bundle `{bundle_name}`; {len(inputs)} held-out images (synthetic seed 3001) letterboxed "
        f"to {info.input_hw[0]}x{info.input_hw[1]} as the service does, one image per call; "
        f"{args.rounds} rounds alternating the graphs, {CALLS} timed calls per graph in each. This "
        f"CPU has 8-bit dot-product instructions: {'yes' if report['int8_dot'] else 'no'}.",
        "",
        "| graph | p50 ms | rounds |",
        "|---|---|---|",
        *[f"| {k} | {p50[k]:.2f} | {', '.join(f'{v:.2f}' for v in rounds[k])} |" for k in sessions],
        "",
        f"Speed-up {report['speedup']:.2f}x. Of the float graph's {checked} boxes at the "
        f"service's threshold {info.score_threshold:g} on these images, the INT8 graph returns "
        f"{kept:.3f} with IoU >= 0.9 (median IoU of each one's best match {median_iou:.3f}; "
        f"scores within {score_diff:.3f}).",
        "",
    ]
    write_results(args.name, report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
