"""The work around the models in `/pose` (issue 15): crops for 20 persons, and a one-person
`/pose` on the demo bundle against its model inference time.

    python benchmarks/pose_overhead.py [--code DIR] [--name NAME] [--reps 15]

`--code DIR` runs another checkout's package (a `git worktree` of an older commit) with this
script, so before and after are measured by the same code on the same machine; the one-person
ratio is service_bench's `end_to_end` (client-side /pose latency, each request after one timing
of the models in this process), with httpx as the client and again with the standard library's
http.client (httpx's own time per request, about 0.65 ms here, is not the service's). The
floor beside it: the same request answered by the real app and server around a pipeline that
takes no time (service_bench's replay), added to the models' time, is the least any pipeline
could reach. Writes benchmarks/results/NAME.{json,md} (default pose_overhead).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout whose package to run")
    ap.add_argument("--name", default="pose_overhead")
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    code = args.code.resolve()
    sys.path.insert(0, str(ROOT))  # benchmarks._common and service_bench from this checkout
    sys.path.insert(0, str(code))  # models/service from the measured one
    import benchmarks.service_bench as sb
    from benchmarks._common import git_commit, machine, md_header
    from benchmarks.service_bench import end_to_end, synth_image

    sb.ROOT = code  # the service subprocess runs from (and imports) the measured checkout
    from models.bundle import load_bundle
    from models.geometry import affine_matrices, box_to_center_scale, warp_affine
    from service.pipeline import PosePipeline

    commit = git_commit(code)
    work = ROOT / "runs" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    boxes = np.c_[
        rng.uniform(0, 500, 20),
        rng.uniform(0, 300, 20),
        rng.uniform(30, 140, 20),
        rng.uniform(60, 200, 20),
    ]
    crops: dict[str, float] = {}
    for hw in ((128, 96), (256, 192)):
        c, s = box_to_center_scale(boxes, hw[1] / hw[0])
        m = affine_matrices(c, s, None, hw)
        warp_affine(photo, m, hw)
        ts = []
        for _ in range(args.reps):
            t = time.perf_counter()
            warp_affine(photo, m, hw)
            ts.append(time.perf_counter() - t)
        crops[f"{hw[0]}x{hw[1]}"] = 1000 * float(np.median(ts))
    bundle_path = code / "bundles" / "demo"
    pipe = PosePipeline(load_bundle(bundle_path), device="cpu")
    img1, _, jpeg1 = synth_image(1, work, size=(256, 256))
    e2e = end_to_end(bundle_path, pipe, img1, jpeg1, args.reps)
    # the same with a lean client: what the service costs without httpx's own time
    lean = end_to_end(bundle_path, pipe, img1, jpeg1, args.reps, lean_client=True)
    # The floor: the same request answered by the real app and server around a pipeline that
    # takes no time (service_bench's replay: HTTP, image decoding, JSON, the client). No pipeline
    # can take the request below its models plus this.
    alone = sb.service_alone(bundle_path, jpeg1, work, args.reps)
    floor_ratio = (e2e["models_sum_ms"] + alone["end_to_end_ms"]) / e2e["models_sum_ms"]
    alone_lean = sb.service_alone(bundle_path, jpeg1, work, args.reps, lean_client=True)
    floor_lean = (lean["models_sum_ms"] + alone_lean["end_to_end_ms"]) / lean["models_sum_ms"]
    report: dict[str, Any] = {
        "command": "python benchmarks/pose_overhead.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "code": commit,
        "crops_20_persons_ms": crops,
        "one_person": e2e,
        "one_person_lean_client": lean,
        "service_alone": alone,
        "floor_ratio": floor_ratio,
        "service_alone_lean_client": alone_lean,
        "floor_ratio_lean_client": floor_lean,
    }
    lines = md_header(f"/pose overhead around the models (code at {commit})", report)
    lines += [
        "",
        "| what | value |",
        "|---|---|",
        *[f"| 20 person crops {k} (median ms) | {v:.2f} |" for k, v in crops.items()],
        f"| one-person /pose, client side (median ms) | {e2e['end_to_end_ms']:.1f} |",
        f"| its models (median ms) | {e2e['models_sum_ms']:.1f} ({e2e['models_ms']}) |",
        f"| ratio (target <= 1.15) | {e2e['ratio']:.2f} |",
        f"| the same with http.client as the client: /pose, its models, ratio | "
        f"{lean['end_to_end_ms']:.1f}, {lean['models_sum_ms']:.1f}, {lean['ratio']:.2f} |",
        f"| server stages (median ms) | {e2e['server_timings_ms']} |",
        f"| the service alone: the same request answered without running the pipeline "
        f"(median ms; server-side decode, total) | {alone['end_to_end_ms']:.1f} "
        f"({alone['server_timings_ms']}) |",
        f"| floor: (its models + the service alone) / its models | {floor_ratio:.2f} |",
        f"| the same with http.client as the client: the service alone, floor | "
        f"{alone_lean['end_to_end_ms']:.1f}, {floor_lean:.2f} |",
        "",
        "The floor is what any pipeline would reach if everything between and around the "
        "models took no time (the replay also deep-copies its stored answer, a little more "
        "than the service itself would do); the target 1.15 is "
        + (
            "below it with either client: unreachable over HTTP here."
            if min(floor_ratio, floor_lean) > 1.15
            else "above it with at least one client."
        ),
        "",
    ]
    # into this checkout's results (with --code, `benchmarks` itself is imported from there)
    out = ROOT / "benchmarks" / "results"
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
