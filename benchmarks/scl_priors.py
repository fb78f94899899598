"""Self-constrained learning's prior ("+SCL") against the backbone, per bundle: Φ's predicted
heatmap of each distal keypoint alone or fused with the backbone's (weights 0.5, 0.7, 0.85 of the
backbone's), its peak taken anywhere (the paper) or within 1σ of the backbone's D
(`prior_radius`), no search. Keypoint AP with GT boxes and Table 5's distal accuracies; with
`--bootstrap VARIANT`, a paired bootstrap over images of that variant against the backbone.

    python benchmarks/scl_priors.py LABEL=BUNDLE [LABEL=BUNDLE ...] --split tune --name NAME

For telling whether a Φ (how long trained, how wide) predicts D well enough to help: bundles
that share a backbone and differ in Φ show it side by side. Each bundle keeps its own search
guards (which keypoints are examined: `min_confidence`, `max_distal_confidence`). Splits as
`scio_ablation.py` makes them; writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import md_header, write_results  # noqa: E402
from benchmarks.scio_ablation import SPLITS, make_split, prior_candidates, split_report  # noqa: E402
from models.bundle import load_bundle  # noqa: E402
from models.scio_search import ScioSearchConfig  # noqa: E402
from service.pipeline import PosePipeline  # noqa: E402
from training.evaluate import EvalOptions, bootstrap_ap, evaluate_variants  # noqa: E402


def variants(base: ScioSearchConfig, sigma: float) -> dict[str, ScioSearchConfig | None]:
    """The backbone (no refinement) and Φ's priors, as the ablation's tuning tries them."""
    return {**prior_candidates(base, sigma), "backbone": None}


def measure(bundle: Path, split: Path, bootstrap: str | None) -> dict[str, Any]:
    pipe = PosePipeline(load_bundle(bundle), device="cpu")
    if not pipe.refine_available:
        raise SystemExit(f"{bundle}: no Φ/Γ in this bundle")
    cands = variants(pipe.scio_config, pipe.codec.sigma)
    if bootstrap is not None and bootstrap not in cands:
        raise SystemExit(f"--bootstrap {bootstrap!r}: one of {', '.join(cands)}")
    ann = split / "person_keypoints.json"
    opts = EvalOptions(keep_results=bootstrap is not None)
    res = evaluate_variants(bundle, ann, split / "images", opts, cands, pipe=pipe)
    distal = res["backbone"]["distal_keypoints"]
    out: dict[str, Any] = {
        "rows": {
            k: {
                "AP": r["stats"]["AP"],
                "AP50": r["stats"]["AP50"],
                "distal": {n: r["keypoint_accuracy"][n] for n in distal},
            }
            for k, r in res.items()
        }
    }
    if bootstrap is not None:
        out["bootstrap"] = bootstrap_ap(
            ann,
            {k: res[k]["coco_results"] for k in ("backbone", bootstrap)},
            pipe.spec,
            res["backbone"]["image_ids"],
            samples=1000,
        )["variants"][bootstrap]
        out["bootstrap"]["variant"] = bootstrap
    return out


def markdown(r: dict[str, Any]) -> str:
    lines = md_header("SCL's prior: Φ alone or fused, anywhere or near the backbone's D", r)
    lines += [
        "",
        f"Split: synthetic seed {r['seed']} ({r['split']}, {r['images']} images), GT boxes, "
        "flip test as each bundle sets it, no search steps. AP in %; the distal columns are "
        "Table 5's accuracy (mean OKS term) of each distal keypoint.",
        "",
    ]
    for label, b in r["bundles"].items():
        rows = b["rows"]
        names = list(rows["backbone"]["distal"])
        base = rows["backbone"]["AP"]
        lines += [
            f"## {label} (`{b['path']}`)",
            "",
            "| prior | AP | vs backbone | AP50 | " + " | ".join(names) + " |",
            "|---|---|---|---|" + "---|" * len(names),
        ]
        for k, row in rows.items():
            acc = " | ".join(f"{row['distal'][n]:.4f}" for n in names)
            lines.append(
                f"| {k} | {100 * row['AP']:.2f} | {100 * (row['AP'] - base):+.2f} "
                f"| {100 * row['AP50']:.2f} | {acc} |"
            )
        if "bootstrap" in b:
            bs = b["bootstrap"]
            lo, hi = bs["minus_backbone_95"]
            lines += [
                "",
                f"Paired bootstrap over images (1000 resamples): AP({bs['variant']}) − "
                f"AP(backbone) {100 * bs['minus_backbone_mean']:+.2f}, 95% interval "
                f"[{100 * lo:+.2f}, {100 * hi:+.2f}], above 0 in "
                f"{bs['minus_backbone_share_above_0']:.0%} of resamples.",
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("bundles", nargs="+", metavar="LABEL=BUNDLE", help="bundles with Φ and Γ")
    ap.add_argument("--split", choices=sorted(SPLITS), default="tune")
    ap.add_argument("--images", type=int, default=400, help="images in the split")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument("--bootstrap", metavar="VARIANT", help="e.g. 'fusion 0.85 within 1σ'")
    ap.add_argument("--name", default="scl_priors", help="result file name")
    args = ap.parse_args()
    pairs = []
    for item in args.bundles:
        label, sep, path = item.partition("=")
        if not sep or not (Path(path) / "bundle.json").is_file():
            ap.error(f"{item!r}: expected LABEL=BUNDLE, a folder with bundle.json")
        pairs.append((label, Path(path)))
    split = make_split(args.work, args.split, args.images)
    report: dict[str, Any] = {
        **split_report(args),
        "bundles": {},
    }
    for label, path in pairs:
        report["bundles"][label] = {"path": str(path), **measure(path, split, args.bootstrap)}
    write_results(args.name, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
