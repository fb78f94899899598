"""A bundle's INT8 backbone against its float one, the graphs alone: ONNX Runtime sessions as the
service makes them (CPU), inputs the service would feed them (crops of the tuning split's
annotated persons, with the flip test's mirrored copies where the bundle runs it), batches of
1, 2, 6 and 10 crops (one person without and with the flip test, three and five with it).
Rounds alternate the two graphs; a graph's time is the median over all its timed calls, each
round's median beside it. Also how far the INT8 outputs are from the float ones on those crops.

    python benchmarks/int8_backbone.py --bundle bundles/demo [--rounds 5]

Writes benchmarks/results/int8_backbone.{json,md} (`--name` overrides).
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
from models.bundle import POSE, POSE_INT8, load_bundle  # noqa: E402
from service.runtime import cpu_has_int8_dot, create_session  # noqa: E402

BATCHES = (1, 2, 6, 10)
CALLS = 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "demo")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=40, help="tuning-split images whose crops run")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument("--name", default="int8_backbone")
    args = ap.parse_args()
    from training.quantize import compare, network_inputs

    bundle = load_bundle(args.bundle)
    paths = {"fp32": bundle.path(POSE), "int8": bundle.path(POSE_INT8)}
    if paths["int8"] is None:
        ap.error(f"{args.bundle} has no INT8 backbone (scio-pose rebundle --int8)")
    split = make_split(args.work, "tune", 400)
    crops = np.concatenate(
        network_inputs(
            args.bundle, split / "person_keypoints.json", split / "images", limit=args.images
        )
    )
    sessions = {k: create_session(p, "cpu") for k, p in paths.items()}  # type: ignore[arg-type]
    name = sessions["fp32"].get_inputs()[0].name
    times: dict[str, dict[int, list[list[float]]]] = {k: {b: [] for b in BATCHES} for k in paths}
    for _ in range(args.rounds):
        for graph, session in sessions.items():
            for b in BATCHES:
                x = crops[:b]
                session.run(None, {name: x})  # warm-up
                calls = []
                for _ in range(CALLS):
                    t = time.perf_counter()
                    session.run(None, {name: x})
                    calls.append(1000 * (time.perf_counter() - t))
                times[graph][b].append(calls)
    rows: dict[int, dict[str, dict[str, Any]]] = {
        b: {
            graph: {
                "p50_ms": float(np.median(np.concatenate(times[graph][b]))),
                "rounds_ms": [float(np.median(r)) for r in times[graph][b]],
            }
            for graph in paths
        }
        for b in BATCHES
    }
    agreement = compare(paths["fp32"], paths["int8"], crops)  # type: ignore[arg-type]
    report: dict[str, Any] = {
        "command": "python benchmarks/int8_backbone.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "code": git_commit(),
        "cpu_has_int8_dot": cpu_has_int8_dot(),
        "crops": len(crops),
        "rounds": args.rounds,
        "batches": {str(b): r for b, r in rows.items()},
        "agreement": agreement,
        "calibration": bundle.manifest.provenance.get("int8"),
    }
    lines = md_header("INT8 backbone against the float one (graphs alone, CPU)", report)
    lines += [
        "",
        f"Bundle `{args.bundle}`; {len(crops)} crops of the tuning split's first {args.images} "
        f"images as the service makes them; {args.rounds} rounds alternating the graphs, "
        f"{CALLS} timed calls per graph and batch in each; p50 over all, each round's median "
        "in brackets. This CPU has 8-bit dot-product instructions: "
        f"{'yes' if report['cpu_has_int8_dot'] else 'no (the service would run the float graph)'}.",
        "",
        "| crops per call | float p50 ms | rounds | INT8 p50 ms | rounds | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for b, r in rows.items():
        f, q = r["fp32"], r["int8"]
        lines.append(
            f"| {b} | {f['p50_ms']:.2f} | {', '.join(f'{v:.2f}' for v in f['rounds_ms'])} | "
            f"{q['p50_ms']:.2f} | {', '.join(f'{v:.2f}' for v in q['rounds_ms'])} | "
            f"{f['p50_ms'] / q['p50_ms']:.2f}x |"
        )
    lines += [
        "",
        f"On these {len(crops)} crops: heatmap peaks within one heatmap pixel of the float "
        f"graph's {agreement['peak_within_1px']:.3f}, equal {agreement['peak_equal']:.3f}; "
        f"largest difference relative to each output's scale: heatmaps "
        f"{agreement['heatmaps_rel_diff']:.3f}, features {agreement['features_rel_diff']:.3f} "
        "(the crops include the calibration's).",
    ]
    write_results(args.name, report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
