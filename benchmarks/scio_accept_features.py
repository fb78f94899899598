"""How well the acceptance rule's inputs tell a closer hypothesis, with and without the limb.

    python benchmarks/scio_accept_features.py --bundle B [--search S.json] [--split tune]

The acceptance rule (issue 13, `models/scio_search.apply_rule`) moves D to a hypothesis (the
backbone's or Φ's D, H_D's other maxima, the mirrored keypoint) where a logistic model says
"closer to the truth than the current D". This probes the bundle's search with every hypothesis
and no rule, and reports, per group and overall, the share of hypotheses (more than half a pixel
from the current D) that are closer and the cross-validated AUROC (4 folds by image, one model per
row of the table) of that model over ACCEPT_FEATURES and the row's CONFIDENCE_FEATURES, then with
the limb's plausibility at the hypothesis too (HYP_EXTRA_FEATURES). Ground-truth boxes.

Writes benchmarks/results/scio_accept_features.{json,md} (or --name).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, md_header, write_results  # noqa: E402
from benchmarks.scio_ablation import SPLITS, make_split, split_arguments  # noqa: E402
from benchmarks.scio_probes import NO_RULE  # noqa: E402
from models.bundle import load_bundle  # noqa: E402
from models.scio_search import (  # noqa: E402
    ACCEPT_FEATURES,
    CONFIDENCE_FEATURES,
    HYP_EXTRA_FEATURES,
    ScioSearchConfig,
    sigmoid,
)
from service.pipeline import PosePipeline  # noqa: E402
from training.probes import auroc, logistic_fit, probe  # noqa: E402

FOLDS = 4


def cv_auroc(x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> float:
    """AUROC of out-of-fold logistic scores (L2 1e-2, as the rule's fit)."""
    score = np.zeros(len(y))
    for k in np.unique(fold):
        t = fold == k
        w = logistic_fit(x[~t], y[~t], 1e-2)
        score[t] = sigmoid(x[t] @ w[:-1] + w[-1])
    return auroc(score, y.astype(bool))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    split_arguments(ap, split="tune", name="scio_accept_features")
    ap.add_argument("--search", type=Path, help="search settings (JSON) over the bundle's")
    args = ap.parse_args()
    split = make_split(args.work, args.split, args.images)
    pipe = PosePipeline(load_bundle(args.bundle), device="cpu")
    settings = pipe.scio_config.to_dict()
    if args.search is not None:
        settings.update(json.loads(args.search.read_text()))
    settings.update(
        hypotheses=("backbone", "phi", "peaks", "mirror"),
        accept_row_features=CONFIDENCE_FEATURES,
        accept_hyp_features=HYP_EXTRA_FEATURES,
        **NO_RULE,
    )
    search = ScioSearchConfig.from_dict(settings)
    ann = split / "person_keypoints.json"
    rows = probe(pipe, ann, split / "images", search=search)["_rows"]
    x = np.stack(rows.hyp_features)  # (rows, H, F)
    usable = np.stack(rows.hyp_valid) & np.stack(rows.hyp_far)
    y = np.stack(rows.hyp_closer).astype(np.float64)
    n_hyp = x.shape[1]
    group = np.repeat(np.asarray(rows.group)[:, None], n_hyp, 1)
    fold = np.unique(np.asarray(rows.image), return_inverse=True)[1].reshape(-1) % FOLDS
    fold = np.repeat(fold[:, None], n_hyp, 1)
    n_base = len(ACCEPT_FEATURES) + len(CONFIDENCE_FEATURES)
    names = [g.name for g in pipe.spec.groups]
    table: list[dict[str, Any]] = []
    for gi in [None, *range(len(names))]:
        sel = usable if gi is None else usable & (group == gi)
        if sel.sum() < 2 * FOLDS:
            continue
        xs, ys, fs = x[sel], y[sel], fold[sel]
        table.append(
            {
                "group": "all" if gi is None else names[gi],
                "hypotheses": int(sel.sum()),
                "closer": float(ys.mean()),
                "cv_auroc": cv_auroc(xs[:, :n_base], ys, fs),
                "cv_auroc_with_limb": cv_auroc(xs, ys, fs),
            }
        )
    alone = {
        n: auroc(-x[usable][:, n_base + j], y[usable].astype(bool))
        for j, n in enumerate(HYP_EXTRA_FEATURES)
    }
    report = {
        "command": "python benchmarks/scio_accept_features.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "bundle": str(args.bundle),
        "split": {"name": args.split, "seed": SPLITS[args.split], "images": args.images},
        "search": search.to_dict(),
        "groups": table,
        "limb_alone_auroc_of_smaller": alone,
    }
    lines = md_header("What tells a closer hypothesis: the acceptance rule's inputs", report)
    lines += [
        f"Bundle: {args.bundle}; split: synthetic seed {SPLITS[args.split]} ({args.split}), "
        f"{args.images} images, ground-truth boxes. Hypotheses more than half a pixel from the "
        'current D; AUROC of out-of-fold logistic scores for "closer than the current D" '
        f"({FOLDS} folds by image), over ACCEPT_FEATURES and the row's CONFIDENCE_FEATURES, then "
        "with the limb's plausibility at the hypothesis (limb_dlog, limb_dlog2) too.",
        "",
        "| group | hypotheses | closer | AUROC without the limb | with it |",
        "|---|---|---|---|---|",
        *(
            f"| {r['group']} | {r['hypotheses']} | {100 * r['closer']:.1f}% | "
            f"{r['cv_auroc']:.3f} | {r['cv_auroc_with_limb']:.3f} |"
            for r in table
        ),
        "",
        "The limb alone (a smaller value = closer): "
        + ", ".join(f"{n} {v:.3f}" for n, v in alone.items()),
        "",
    ]
    write_results(args.name, report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
