"""In-process pipeline latency of bundles on one 5-person synthetic image (640x480, seed 77):
median of 20 calls after 5 warm-ups, with the image's ground-truth boxes (so every bundle poses
the same 5 persons) and with its own detector; refinement on. No HTTP (service_bench has that).

    python benchmarks/pipeline_latency.py [--flip | --no-flip] BUNDLE [BUNDLE ...]

Each bundle runs its own default (bundle.json pose.flip_test); `--flip` / `--no-flip` force the
flip test on / off for all of them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine  # noqa: E402
from service.pipeline import PosePipeline  # noqa: E402
from service.results import PoseOptions  # noqa: E402
from training.synth.generate import SynthConfig, make_sample  # noqa: E402


def p50(pipe: PosePipeline, image: np.ndarray, options: PoseOptions) -> tuple[float, int]:
    times, persons = [], 0
    for i in range(25):
        t = time.perf_counter()
        r = pipe.estimate(image, options)
        if i >= 5:
            times.append(time.perf_counter() - t)
        persons = len(r.persons)
    return 1000 * float(np.median(times)), persons


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
    args = ap.parse_args()
    for path in args.bundles:
        if not (path / "bundle.json").is_file():
            ap.error(f"{path} is not a bundle (no bundle.json)")
    sample = make_sample(SynthConfig(width=640, height=480, persons=(5, 5), seed=77), 0)
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (lab.bbox for lab in sample.labels)])
    out: dict[str, object] = {"machine": machine(), "command": " ".join(sys.argv)}
    flip: bool | None = args.flip
    for path in args.bundles:
        pipe = PosePipeline.from_path(path, device="cpu")
        pipe.warmup()
        gt_ms, gt_n = p50(pipe, sample.image, PoseOptions(refine=True, boxes=boxes, flip=flip))
        det_ms, det_n = p50(pipe, sample.image, PoseOptions(refine=True, flip=flip))
        out[str(path)] = {"flip_test": pipe.flips(flip),
                          "p50_ms_gt_boxes": gt_ms, "persons_gt": gt_n,
                          "p50_ms_detector": det_ms, "persons_detector": det_n}  # fmt: skip
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
