"""What the shipped SCIO settings do on the held-out split: the bundle with refinement off
against the bundle as shipped (its prior, search, hypotheses and acceptance rule), with
ground-truth boxes and with the split's simulated detections; a paired bootstrap over images
(GT boxes) and the accuracy of each distal keypoint (Table 5's measure).

    python benchmarks/scio_heldout.py --bundle bundles/demo [--split val]

The settings were chosen on the tuning split (seed 2001; `scio_probes.py --fit`); this split
(seed 3001) played no part in them. Writes benchmarks/results/scio_heldout.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, md_header, md_targets, write_results  # noqa: E402
from benchmarks.scio_ablation import SPLITS, make_split, split_arguments  # noqa: E402
from models.bundle import load_bundle  # noqa: E402
from service.pipeline import PosePipeline  # noqa: E402
from training.evaluate import EvalOptions, bootstrap_ap, evaluate_variants  # noqa: E402

STATS = ("AP", "AP50", "AP75", "AR")
ROWS = ("baseline", "shipped SCIO")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    split_arguments(ap, split="val", name="scio_heldout")
    args = ap.parse_args()
    split = make_split(args.work, args.split, args.images)
    pipe = PosePipeline(load_bundle(args.bundle), device="cpu")
    if not pipe.refine_available:
        raise SystemExit(f"{args.bundle} has no SCIO networks")
    ann = split / "person_keypoints.json"
    report: dict[str, Any] = {
        "command": "python benchmarks/scio_heldout.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "bundle": str(args.bundle),
        "split": {"name": args.split, "seed": SPLITS[args.split], "images": args.images},
        "search": pipe.scio_config.to_dict(),
        "flip_test": pipe.bundle.manifest.pose.flip_test,
    }
    for key, boxes in (("gt boxes", "gt"), ("detections", str(split / "detections.json"))):
        opts = EvalOptions(boxes=boxes, keep_results=True)
        variants = {"baseline": None, "shipped SCIO": pipe.scio_config}
        res = evaluate_variants(args.bundle, ann, split / "images", opts, variants, pipe=pipe)
        report[key] = {row: {k: r["stats"][k] for k in STATS} for row, r in res.items()}
        distal = res["baseline"]["distal_keypoints"]
        report[key + " distal accuracy"] = {
            row: {n: r["keypoint_accuracy"][n] for n in distal} for row, r in res.items()
        }
        if boxes == "gt":
            results = {row: res[row].pop("coco_results") for row in ROWS}
            report["bootstrap_gt"] = bootstrap_ap(
                ann, results, pipe.spec, res["baseline"]["image_ids"], samples=1000
            )
    b = report["bootstrap_gt"]["variants"]["shipped SCIO"]
    gt = report["gt boxes"]
    acc = report["gt boxes distal accuracy"]
    report["targets"] = {
        "AP(shipped SCIO) - AP(baseline) >= +1.0 AP points, GT boxes": gt["shipped SCIO"]["AP"]
        - gt["baseline"]["AP"]
        >= 0.01,
        "its 95% bootstrap interval over images above 0": b["minus_baseline_95"][0] > 0,
        "every distal keypoint's accuracy improved": all(
            acc["shipped SCIO"][n] > acc["baseline"][n] for n in acc["baseline"]
        ),
    }
    write_results(args.name, report, markdown(report))
    return 0


def markdown(r: dict[str, Any]) -> str:
    lines = [
        *md_header("SCIO on the held-out split: off against the shipped settings", r),
        f"Bundle `{r['bundle']}`; split: synthetic seed {r['split']['seed']} "
        f"({r['split']['name']}), {r['split']['images']} images; flip test "
        f"{'on' if r.get('flip_test') else 'off'} (the bundle's default). Settings chosen on the "
        "tuning split (seed 2001).",
        "",
    ]
    for key in ("gt boxes", "detections"):
        lines += [f"## AP ({key})", "", "| | " + " | ".join(STATS) + " |", "|---|---|---|---|---|"]
        lines += [
            f"| {row} | " + " | ".join(f"{v[k] * 100:.1f}" for k in STATS) + " |"
            for row, v in r[key].items()
        ]
        acc = r[key + " distal accuracy"]
        names = list(acc["baseline"])
        lines += [
            "",
            f"Distal keypoint accuracy ({key}):",
            "",
            "| | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        lines += [
            f"| {row} | " + " | ".join(f"{v[n]:.4f}" for n in names) + " |"
            for row, v in acc.items()
        ]
        lines.append("")
    b = r["bootstrap_gt"]["variants"]["shipped SCIO"]
    lo, hi = b["minus_baseline_95"]
    lines += [
        "Paired bootstrap over the images (1000 resamples, GT boxes): AP(shipped SCIO) - "
        f"AP(baseline) {b['minus_baseline_mean'] * 100:+.2f} points, 95% interval "
        f"[{lo * 100:+.2f}, {hi * 100:+.2f}], above 0 in "
        f"{b['minus_baseline_share_above_0']:.0%} of resamples.",
        "",
        *md_targets(r["targets"]),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
