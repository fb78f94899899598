"""The per-keypoint confidence of detected persons by box score, as the bundle runs them and with
the flip test forced on every box: what `detector.flip_min_score` does to the boxes below it.

    python benchmarks/keypoint_confidence_flip.py --bundle bundles/demo \
        --ann runs/ablation/synth-val-3001-400/person_keypoints.json \
        --images runs/ablation/synth-val-3001-400/images [--name NAME]

Every detected person is answered (minimum score 0); each answer is matched to a labelled person
as `scio-pose evaluate` matches them (greedy OKS in score order), and each distal keypoint SCIO
examined and the label has is correct when its OKS term is at least 0.5. Per box-score band: the
keypoints, their mean reported confidence (SCIO's calibration, fitted on the tuning split with the
bundle's flip default), the share correct and the confidence's AUROC for "correct". A calibrated
confidence has its mean near the share correct. Writes benchmarks/results/NAME.{json,md}
(default keypoint_confidence_flip).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import git_commit, machine, md_header, split_parser, write_results  # noqa: E402

CORRECT = 0.5


def collect(pipe: Any, coco: Any, images: Path, flip: bool | None) -> np.ndarray:
    """(rows, 3): box score, reported confidence, correct (0/1) per examined distal keypoint."""
    from service.results import PoseOptions
    from training.evaluate import load_rgb, match_predictions, refinement_rows
    from training.progress import progress

    spec = pipe.bundle.manifest.spec
    preds = {}
    for image_id in progress(coco.image_ids, desc=f"flip {flip}"):
        image = load_rgb(images, coco.images[image_id])
        preds[image_id] = pipe.estimate(image, PoseOptions(flip=flip, min_score=0.0)).persons
    rows = [
        (r["bbox_score"], r["confidence"], float(r["accuracy"] >= CORRECT))
        for r in refinement_rows(match_predictions(coco, preds, spec), spec)
        if r["confidence"] is not None
    ]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def main() -> int:
    ap = split_parser(__doc__, "keypoint_confidence_flip")
    args = ap.parse_args()

    from models.bundle import load_bundle
    from service.pipeline import PosePipeline
    from training.data.coco import CocoKeypoints
    from training.probes import auroc

    pipe = PosePipeline(load_bundle(args.bundle), device="cpu")
    if pipe.detector is None or not pipe.refine_available:
        raise SystemExit(f"{args.bundle}: needs a detector and SCIO's calibrated confidence")
    info = pipe.detector.info
    coco = CocoKeypoints(args.ann, pipe.bundle.manifest.spec)
    edges = sorted({info.score_threshold, info.flip_min_score, 1.0 + 1e-9} - {0.0})
    bands = [(lo, hi) for lo, hi in itertools.pairwise(edges) if lo < hi]
    table: dict[str, list[dict[str, Any]]] = {}
    for label, flip in (("as the bundle runs it", None), ("flip test on every box", True)):
        rows = collect(pipe, coco, args.images, flip)
        table[label] = []
        for lo, hi in bands:
            sel = (rows[:, 0] >= lo) & (rows[:, 0] < hi)
            c, y = rows[sel, 1], rows[sel, 2]
            table[label].append(
                {
                    "box_scores": [lo, min(hi, 1.0)],
                    "keypoints": int(sel.sum()),
                    "mean_confidence": float(c.mean()) if len(c) else None,
                    "share_correct": float(y.mean()) if len(y) else None,
                    "auroc": auroc(c, y) if 0 < y.sum() < len(y) else None,
                }
            )
    bundle = args.bundle.relative_to(ROOT) if args.bundle.is_relative_to(ROOT) else args.bundle
    report: dict[str, Any] = {
        "command": "python benchmarks/keypoint_confidence_flip.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "code": git_commit(),
        "bundle": str(bundle),
        "annotations": str(args.ann),
        "detector_threshold": info.score_threshold,
        "flip_min_score": info.flip_min_score,
        "bands": table,
    }

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    lines = md_header(f"Per-keypoint confidence by box score and flip test ({bundle})", report)
    lines += [
        "",
        f"Detector threshold {info.score_threshold:g}; boxes below {info.flip_min_score:g} run "
        "without the flip test by the bundle's default. Every detected person answered, matched "
        f"to the labelled persons of `{args.ann}`; distal keypoints SCIO examined, correct: OKS "
        f"term >= {CORRECT}.",
        "",
        "| run | box scores | keypoints | mean confidence | share correct | AUROC |",
        "|---|---|---|---|---|---|",
        *[
            f"| {label} | {b['box_scores'][0]:g}–{b['box_scores'][1]:g} | {b['keypoints']} | "
            f"{fmt(b['mean_confidence'])} | {fmt(b['share_correct'])} | {fmt(b['auroc'])} |"
            for label, rows in table.items()
            for b in rows
        ],
        "",
    ]
    write_results(args.name, report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
