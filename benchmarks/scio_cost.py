"""SCIO's cost per person against the backbone's, for several bundles side by side, each at its
own settings (`scio_ablation.cost`'s measure: warm sessions, ground-truth boxes, the first
`--images` images of the tuning split, the best of three timings, SCIO's time being `finish`
with refinement on minus off). Rounds alternate the bundles, so a busy spell of a shared machine
falls on all of them. Each bundle's backbone runs as the service runs it on the CPU (its INT8
copy where it has one); `--also-fp32` adds a row with the float backbone for such bundles.

    python benchmarks/scio_cost.py BUNDLE [BUNDLE ...] --name NAME [--rounds 2] [--images 40]

Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, md_header, write_results  # noqa: E402
from benchmarks.scio_ablation import cost, make_split  # noqa: E402
from models.bundle import load_bundle  # noqa: E402
from models.scio_search import refine_work  # noqa: E402
from service.pipeline import PosePipeline  # noqa: E402

TARGET = 0.25  # issue 13: SCIO <= 25% of the backbone's time per person


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--name", required=True, help="result file name")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--images", type=int, default=40, help="images of the tuning split timed")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument(
        "--also-fp32",
        action="store_true",
        help="for a bundle with an INT8 backbone, a second row with its float backbone",
    )
    args = ap.parse_args()
    split = make_split(args.work, "tune", 400)
    rows: list[tuple[str, Path, str]] = []  # label, bundle, precision
    configs, work = {}, {}
    for b in args.bundles:
        pipe = PosePipeline(load_bundle(b), device="cpu")
        configs[b] = pipe.scio_config
        groups = np.arange(len(pipe.spec.groups))
        work[str(b)] = refine_work(configs[b], groups, has_phi=pipe.predictor is not None)
        rows.append((str(b), b, "auto"))
        if args.also_fp32 and pipe.precision == "int8":
            rows.append((f"{b} (float backbone)", b, "fp32"))
            work[rows[-1][0]] = work[str(b)]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in rows}
    precisions: dict[str, str] = {}
    for _ in range(args.rounds):
        for label, b, precision in rows:
            r = cost(b, split, configs[b], configs[b], args.images, precision)
            precisions[label] = r["precision"]
            runs[label].append(
                {k: r[k] for k in ("backbone_ms_per_person", "sco_default_ms_per_person")}
            )
            print(label, runs[label][-1], flush=True)
    report: dict[str, Any] = {
        "command": "python benchmarks/scio_cost.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "images": args.images,
        "runs": runs,
        "backbone": precisions,
        "networks_per_group": work,
    }
    lines = md_header("SCIO cost per person, bundles side by side", report)
    lines += [
        f"The tuning split's first {args.images} images, ground-truth boxes, each bundle at its "
        f"own settings; {args.rounds} rounds, the bundles alternating. Networks: in how many "
        "of the six groups (one row each) the service's refine runs Φ, Γ and the hypotheses "
        "(`models.scio_search.refine_work`).",
        "",
        "| bundle | backbone | networks (Φ / Γ / hypotheses of 6) | backbone ms/person | "
        f"SCIO ms/person | ratio (target {TARGET}) |",
        "|---|---|---|---|---|---|",
    ]
    for b, rs in runs.items():
        w = work[b]
        ratios = [r["sco_default_ms_per_person"] / r["backbone_ms_per_person"] for r in rs]
        lines.append(
            f"| `{b}` | {precisions[b]} | {w['phi']} / {w['gamma']} / {w['hypotheses']} | "
            + ", ".join(f"{r['backbone_ms_per_person']:.2f}" for r in rs)
            + " | "
            + ", ".join(f"{r['sco_default_ms_per_person']:.2f}" for r in rs)
            + " | "
            + ", ".join(f"{x:.2f}" for x in ratios)
            + " |"
        )
    write_results(args.name, report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
