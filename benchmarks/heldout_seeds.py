"""Bundles side by side on fresh held-out synthetic splits (seeds no build chose anything on):
keypoint AP with ground-truth boxes and with each bundle's own detector, refinement off and at
the bundle's defaults, and per seed a paired bootstrap over images of the last bundle against the
first (GT boxes, each at its defaults). For judging whether a bundle that wins on the usual
held-out split (seed 3001) wins elsewhere too.

    python benchmarks/heldout_seeds.py BUNDLE [BUNDLE ...] --seeds 3002 3003 --name NAME

Splits: `scio-pose synth`'s generator, 256x256, 1-4 persons (as the held-out split), cached in
`--work`. Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import (  # noqa: E402
    git_commit,
    machine,
    md_header,
    require_bundles,
    write_results,
)
from models.bundle import load_bundle  # noqa: E402
from service.pipeline import PosePipeline  # noqa: E402
from training.evaluate import EvalOptions, bootstrap_ap, evaluate_variants  # noqa: E402

STATS = ("AP", "AP50")
USED = {1: "training", 2001: "tuning", 3001: "usual held-out split"}


def make_seed_split(work: Path, seed: int, images: int) -> Path:
    from training.synth.generate import generate_dataset

    d = work / f"synth-seed-{seed}-{images}"
    if not (d / "person_keypoints.json").exists():
        generate_dataset(d, images=images, seed=seed, size=(256, 256), persons=(1, 4))
    return d


def evaluate_bundle(bundle: Path, split: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """{boxes: {off|defaults: stats}} and the GT-box results at the defaults (for the bootstrap)."""
    pipe = PosePipeline(load_bundle(bundle), device="cpu")
    variants = {"off": None, "defaults": pipe.scio_config if pipe.refine_available else None}
    ann = split / "person_keypoints.json"
    out: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    for boxes in ("gt", "detector"):
        if boxes == "detector" and pipe.detector is None:
            continue
        opts = EvalOptions(boxes=boxes, keep_results=boxes == "gt")
        res = evaluate_variants(bundle, ann, split / "images", opts, variants, pipe=pipe)
        out[boxes] = {v: {k: r["stats"][k] for k in STATS} for v, r in res.items()}
        if boxes == "gt":
            kept = {
                "results": res["defaults"]["coco_results"],
                "image_ids": res["defaults"]["image_ids"],
            }
    return out, {**kept, "spec": pipe.spec}


def markdown(r: dict[str, Any]) -> str:
    lines = md_header("Bundles on fresh held-out seeds", r)
    lines += [
        "",
        f"Synthetic splits of {r['images']} images (256x256, 1-4 persons), seeds "
        f"{', '.join(str(s) for s in r['seeds'])}; no build chose anything on them. "
        "AP / AP50 in %, refinement off and at the bundle's defaults.",
        "",
        "| seed | bundle | GT boxes, off | GT boxes, defaults | detector, off "
        "| detector, defaults |",
        "|---|---|---|---|---|---|",
    ]

    def cell(s: dict[str, float] | None) -> str:
        return "–" if s is None else f"{100 * s['AP']:.1f} / {100 * s['AP50']:.1f}"

    for seed in r["seeds"]:
        for b in r["bundles"]:
            res = r["results"][str(seed)][b]
            det = res.get("detector", {})
            lines.append(
                f"| {seed} | `{b}` | {cell(res['gt']['off'])} | {cell(res['gt']['defaults'])} | "
                f"{cell(det.get('off'))} | {cell(det.get('defaults'))} |"
            )
    if len(r["bundles"]) > 1:
        first, last = r["bundles"][0], r["bundles"][-1]
        lines += [
            "",
            "Paired bootstrap over images (1000 resamples, GT boxes, each bundle at its defaults): "
            f"AP(`{last}`) - AP(`{first}`), in AP points:",
            "",
        ]
        for seed in r["seeds"]:
            d = r["bootstrap"][str(seed)]
            lines.append(
                f"- seed {seed}: {100 * d['mean']:+.2f}, 95% interval "
                f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}], above 0 in "
                f"{100 * d['above_0']:.0f}% of resamples"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--seeds", nargs="+", type=int, required=True)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument("--name", required=True, help="result file name")
    args = ap.parse_args()
    for seed in args.seeds:
        if seed in USED:
            ap.error(f"seed {seed} is the {USED[seed]} seed: choose a fresh one")
    require_bundles(ap, args.bundles)
    report: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "code": git_commit(),
        "bundles": [str(b) for b in args.bundles],
        "seeds": args.seeds,
        "images": args.images,
        "results": {},
        "bootstrap": {},
    }
    for seed in args.seeds:
        split = make_seed_split(args.work, seed, args.images)
        per: dict[str, Any] = {}
        kept: dict[str, Any] = {}
        for b in args.bundles:
            per[str(b)], kept[str(b)] = evaluate_bundle(b, split)
        report["results"][str(seed)] = per
        if len(args.bundles) > 1:
            first, last = str(args.bundles[0]), str(args.bundles[-1])
            boot = bootstrap_ap(
                split / "person_keypoints.json",
                {"first": kept[first]["results"], "last": kept[last]["results"]},
                kept[first]["spec"],
                kept[first]["image_ids"],
                samples=1000,
            )
            v = boot["variants"]["last"]
            low, high = v["minus_first_95"]
            report["bootstrap"][str(seed)] = {
                "mean": v["minus_first_mean"],
                "low": low,
                "high": high,
                "above_0": v["minus_first_share_above_0"],
            }
    write_results(args.name, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
