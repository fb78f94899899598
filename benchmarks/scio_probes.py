"""Verification probes of a bundle's Γ (issue 13), per group and overall, on a tuning split.

    python benchmarks/scio_probes.py --bundle bundles/demo [--split tune] [--images 400]

Within-keypoint measures of whether the verifier verifies (see `training/probes.py`): does the
loss prefer the true D to the search's start, does it order the search's candidates by their
distance to the truth, do accepted moves get closer, how far Γ's Â follows D against A's own
error, and how well the verification loss predicts a correct keypoint next to the backbone's
heatmap peak. The pooled loss/accuracy correlation is kept, labelled: it mixes samples and
mostly measures how hard a sample is. Ground-truth boxes; the flip test as the bundle's default.

Writes benchmarks/results/scio_probes.{json,md} (or --name).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, md_header, md_targets, write_results  # noqa: E402
from benchmarks.scio_ablation import SPLITS, make_split, split_arguments  # noqa: E402
from models.bundle import load_bundle  # noqa: E402
from models.scio_search import (  # noqa: E402
    CONFIDENCE_FEATURES,
    HYP_EXTRA_FEATURES,
    ScioSearchConfig,
    confidence_cost,
)
from service.pipeline import PosePipeline  # noqa: E402
from training.probes import (  # noqa: E402
    COSTLY_MIN_GAIN,
    MIN_GAIN,
    fit_acceptance,
    fit_confidence,
    markdown_table,
    mirror_groups,
    probe,
    select_confidence_features,
)

# When the bundle's own settings do not search (iterations 0, no hypotheses), the moves judged
# are those of the paper's search from the bundle's prior: descent, step 1.5, radius 4.
PROBE_SEARCH = {"strategy": "descent", "iterations": 50, "radius": 4.0, "step": 1.5}
# search settings without an acceptance rule
NO_RULE: dict[str, Any] = {
    "accept_weights": (),
    "accept_group_weights": (),
    "accept_group_bias": (),
    "accept_group_thresholds": (),
}


def verification_auroc(o: dict[str, Any]) -> float:
    """AUROC of the score the API reports: the calibrated P(correct) where the settings have a
    calibration, else the loss where the search started."""
    conf = o.get("auroc_confidence", float("nan"))
    return float(conf) if conf == conf else float(o["auroc_loss_start"])


def targets(r: dict[str, Any]) -> dict[str, bool]:
    o = r["overall"]
    # issue 12: the anchors must be much better than what they anchor
    anchors = {
        f"{name}: median error of A <= half that of the backbone's D": m["a_error"]
        <= 0.5 * m["backbone_d_error"]
        for name, m in r["per_group"].items()
        if m.get("rows")
    }
    return {
        **anchors,
        "P(loss at true D < loss at the start) >= 0.6": o["truth_beats_start"] >= 0.6,
        "accepted moves that end closer >= 65%": o["accepted_closer"] >= 0.65,
        "verification AUROC >= heatmap-peak AUROC + 0.03": verification_auroc(o)
        >= o["auroc_peak"] + 0.03,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    split_arguments(ap, split="tune", name="scio_probes")
    ap.add_argument("--search", type=Path, help="search settings (JSON) instead of the bundle's")
    ap.add_argument(
        "--hypotheses",
        help="comma-separated hypothesis kinds for the judged search (backbone,phi,peaks,mirror)",
    )
    ap.add_argument(
        "--peaks",
        type=int,
        help="how many local maxima of H_D besides its peak the 'peaks' hypotheses take "
        "(hypothesis_peaks; default: the settings')",
    )
    ap.add_argument(
        "--accept-row-features",
        help="CONFIDENCE_FEATURES the acceptance rule also reads for the row (comma-separated, "
        "or 'all'); with --fit",
    )
    ap.add_argument(
        "--accept-hyp-features",
        help="per-hypothesis HYP_EXTRA_FEATURES the acceptance rule also reads (comma-separated, "
        "or 'all'; the limb's plausibility there); with --fit",
    )
    ap.add_argument(
        "--per-group-rules",
        action="store_true",
        help="with --fit: one acceptance rule per group (a group moves only where its rule "
        "gains enough on this split)",
    )
    ap.add_argument(
        "--mirror-rules",
        action="store_true",
        help="with --per-group-rules: a group and its mirror image (left and right arm...) "
        "share one rule and threshold, fitted on both sides' rows",
    )
    ap.add_argument(
        "--fit",
        type=Path,
        metavar="OUT.json",
        help="fit the acceptance rule on this split, write the search settings with it to OUT, "
        "and report the probes of the search with the rule",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    split = make_split(args.work, args.split, args.images)
    pipe = PosePipeline(load_bundle(args.bundle), device="cpu")
    shipped = pipe.scio_config
    search = shipped
    if args.search is not None:
        search = ScioSearchConfig.from_dict(
            {**shipped.to_dict(), **json.loads(args.search.read_text())}
        )
    elif shipped.strategy == "descent" and shipped.iterations == 0 and not shipped.hypotheses:
        search = ScioSearchConfig.from_dict({**shipped.to_dict(), **PROBE_SEARCH})
    if args.hypotheses:
        kinds = tuple(k for k in args.hypotheses.split(",") if k)
        search = ScioSearchConfig.from_dict({**search.to_dict(), "hypotheses": kinds})
    if args.peaks is not None:
        search = ScioSearchConfig.from_dict({**search.to_dict(), "hypothesis_peaks": args.peaks})
    # the rule's optional inputs: comma-separated names, or "all" of them; a rule fitted on
    # other inputs no longer applies
    for setting, given, known in (
        ("accept_row_features", args.accept_row_features, CONFIDENCE_FEATURES),
        ("accept_hyp_features", args.accept_hyp_features, HYP_EXTRA_FEATURES),
    ):
        if given:
            names = known if given == "all" else tuple(n for n in given.split(",") if n)
            search = ScioSearchConfig.from_dict({**search.to_dict(), setting: names, **NO_RULE})
    ann, images = split / "person_keypoints.json", split / "images"
    fit = None
    if args.fit is not None:
        unruled = ScioSearchConfig.from_dict({**search.to_dict(), **NO_RULE})
        rows = probe(pipe, ann, images, search=unruled).pop("_rows")
        n_groups = len(pipe.spec.groups)
        fit = (
            fit_acceptance(
                rows,
                n_groups=n_groups,
                per_group_rules=args.per_group_rules,
                mirror=mirror_groups(pipe.spec.groups, pipe.spec.flip_index.tolist())
                if args.mirror_rules
                else None,
            )
            if search.hypotheses
            else {}
        )
        search = ScioSearchConfig.from_dict(
            {**search.to_dict(), **{k: v for k, v in fit.items() if k != "fit"}}
        )
        # the calibration belongs to the positions the final search returns
        rows = probe(pipe, ann, images, search=search).pop("_rows")
        # the features by cross-validation over this split's images, one model per group
        # features that would make the service run Φ, Γ or the hypotheses in more rows must
        # earn more (training.probes.COSTLY_MIN_GAIN)
        costly = confidence_cost(search, n_groups, has_phi=pipe.predictor is not None)
        features, steps = select_confidence_features(rows, costly=costly)
        calibration = fit_confidence(rows, features, per_group=True, groups=len(pipe.spec.groups))
        fit.update(calibration, confidence_selection=steps, costly_features=sorted(costly))
        search = ScioSearchConfig.from_dict({**search.to_dict(), **calibration})
        args.fit.write_text(json.dumps(search.to_dict(), indent=2) + "\n")
        print(f"acceptance rule: {json.dumps(fit)}\nwrote {args.fit}")
    r = probe(pipe, ann, images, search=search)
    r.pop("_rows")
    report = {
        "command": "python benchmarks/scio_probes.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "bundle": str(args.bundle),
        "bundle_name": pipe.bundle.manifest.name,
        "flip_test": pipe.bundle.manifest.pose.flip_test,
        "split": {"name": args.split, "seed": SPLITS[args.split], "images": args.images},
        "search": search.to_dict(),
        "search_is_the_bundles": search == shipped,
        "acceptance_fit": fit,
        **r,
    }
    report["targets"] = targets(r)
    lines = md_header("SCIO verification probes", report)
    lines += [
        f"Bundle: {report['bundle_name']} ({args.bundle}); split: synthetic seed "
        f"{SPLITS[args.split]} ({args.split}), {args.images} images, ground-truth boxes, "
        f"flip test {'on' if report['flip_test'] else 'off'} (the bundle's default).",
        f"Search judged: {json.dumps(search.to_dict())}"
        + ("" if report["search_is_the_bundles"] else " (the bundle's own settings do not search)"),
        "",
        *markdown_table(r),
        "",
        "- P(truth<start): share of rows (start > 1 px off) where the loss at the true D is "
        "below the loss where the search starts. Diagnostics beside it: … Gaussian A: the "
        "same with Γ's target a Gaussian at the backbone's decoded A instead of its H_A; … "
        "true A: a Gaussian at the true A; … true A, B, "
        "C: also with Gaussians at the true B and C as Γ's inputs (rows where both are "
        "labelled): whether Γ verifies given exact anchors, as the paper's method assumes.",
        "- Spearman: within one row, loss against distance to the truth over the radius-4 "
        "lattice around the start, mean over rows.",
        "- acc. closer: of the accepted moves, the share that end closer to the truth.",
        "- A err, bb D err: median error of the backbone's A and of its D over the group's "
        "rows (heatmap px; rows are the keypoints the search examines).",
        "- gain: px that Γ's decoded Â moves per px of D; A err/gain: the backbone's median "
        "A error divided by it, to compare with D err (median error of the start, heatmap px).",
        "- AUROC: separation of correct (OKS term >= 0.5) from wrong returned D by the loss "
        "at the start / at the end (lower = better) and by the backbone's heatmap peak.",
        "- AUROC P(correct): the calibrated verification probability the API reports, "
        f"one logistic model per group over {', '.join(search.confidence_features)} "
        "(features chosen by cross-validation over the tuning split's images; see "
        "`models/scio_search.CONFIDENCE_FEATURES`). Compare it with the peak within each group "
        "too: the pooled AUROC also credits knowing which keypoints are right more often.",
        *(
            [
                "- Calibration features, cross-validated AUROC on this split as each was added: "
                + "; ".join(
                    f"{'+'.join(st['features'])} {st['cv_auroc']:.3f}"
                    for st in fit["confidence_selection"]
                )
                + (
                    f" (each must add {MIN_GAIN}; "
                    f"{', '.join(fit['costly_features'])}, which would make the service run Φ, Γ "
                    f"or the hypotheses in more rows at these rules: {COSTLY_MIN_GAIN})"
                    if fit.get("costly_features")
                    else ""
                )
            ]
            if fit and "confidence_selection" in fit
            else []
        ),
        "- pooled r: Pearson of the loss with the OKS term over all rows: pooled across samples, "
        "so it mostly measures how hard a sample is, not whether Γ ranks positions.",
        "",
        *md_targets(report["targets"]),
        "",
    ]
    write_results(args.name, report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
