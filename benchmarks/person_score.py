"""A calibrated person score for the persons the detector finds, fitted on a tuning split, and
the detector threshold and minimum score to ship with it.

    python benchmarks/person_score.py --bundle bundles/demo \
        --ann runs/ablation/synth-tune-2001-400/person_keypoints.json \
        --images runs/ablation/synth-tune-2001-400/images [--oks-nms T] [--name NAME] \
        [--choose FILE]

The official person score (box score × mean keypoint score above 0.2) can never exceed the box
score, so with a minimum person score m no box scoring below m is ever answered, however clear
its pose. Here the pipeline answers every person the detector returns (down to its floor) with
the official scores, each answer is labelled as `benchmarks/pose_answers.py` does (found: OKS >=
0.5 with a labelled person not yet found, in score order), and a logistic model over
`models.postprocess.PERSON_FEATURES` (box score, keypoint scores, size) is fitted to "found": the
probability that an answer is a correct pose. Then, for each detector box threshold and each
minimum probability, the answers above both are classified again (in the official score's order,
which the pipeline keeps: the probability only decides who is answered; offline, OKS-NMS as the
official scores ran it) and F1 over persons found and answers is computed; the same table with
the official score and its own best minimum sits beside it.

`--choose FILE` (the build, on its tuning split) writes the model, the detector threshold and the
minimum probability to ship (`scio-pose rebundle --person-score FILE`): the bundle's detector
threshold and there the minimum with the best F1 (the lowest of equals). `--choose-threshold`
also chooses the threshold: the highest F1 over both, then the highest detector threshold whose F1
is within 0.002 of it (fewer crops for about the same answers), and at that threshold the lowest
minimum with its best F1. The F1 does not see what a lower threshold costs: more crops through
the backbone (stop 40: 0.15 instead of 0.25 ran 7 boxes instead of 4 on the 5-person image of
`pipeline_latency.py`, 1.6x its time, for the same three answers). So the build first makes the
boxes below the old threshold run without the flip test (`scio-pose rebundle --flip-min-score`;
one crop each instead of two), then collects here and chooses the threshold; `--choose`'s file
records that rule (`flip_min_score`), which the model's keypoint-score features depend on, and
`rebundle --person-score` applies it with the model. Held-out numbers come from
`benchmarks/pose_answers.py` on the new bundle, which runs the real pipeline with the new scores
(OKS-NMS included). Writes benchmarks/results/NAME.{json,md} (default person_score).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import (  # noqa: E402
    git_commit,
    machine,
    md_header,
    split_parser,
    write_results,
)
from benchmarks.pose_answers import MATCH_OKS, answer_oks, classify  # noqa: E402

DETECTOR_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
MIN_PROBABILITIES = tuple(round(0.05 + 0.025 * i, 3) for i in range(37))  # 0.05 ... 0.95
OFFICIAL_MINIMA = tuple(round(0.025 * i, 3) for i in range(21))  # 0 ... 0.5
F1_TOLERANCE = 0.002
CHUNK = 8
KEEP_RULE = "the bundle's detector threshold; there the lowest minimum probability with the best F1"
RULE = (
    "the highest F1; then the highest detector threshold within 0.002 of it, and there the lowest "
    "minimum probability with its best F1"
)


@dataclass
class Answers:
    """Every answer of one image with the official scores: features (N, F), box scores (N,),
    official scores (N,), OKS (N, persons) against the labelled persons."""

    features: npt.NDArray[np.float64]
    box: npt.NDArray[np.float64]
    official: npt.NDArray[np.float64]
    oks: npt.NDArray[np.float64]


def found_labels(images: list[Answers]) -> npt.NDArray[np.float64]:
    """1 for each answer found (in official score order), over all images' answers."""
    out: list[bool] = []
    for a in images:
        order = np.argsort(-a.official, kind="stable")
        kinds = np.empty(len(order), dtype=object)
        kinds[order] = classify(a.oks[order])
        out.extend(k == "found" for k in kinds)
    return np.asarray(out, dtype=np.float64)


def f1_counts(
    images: list[Answers], scores: list[npt.NDArray[np.float64]], threshold: float, minimum: float
) -> tuple[float, int, int]:
    """F1, persons found and answers when only answers with box score >= threshold and score >=
    minimum are kept (`scores`, one array per image), classified in the official score's order,
    as the pipeline orders them."""
    found = answers = persons = 0
    for a, s in zip(images, scores, strict=True):
        persons += a.oks.shape[1]
        keep = np.flatnonzero((a.box >= threshold) & (s >= minimum))
        order = keep[np.argsort(-a.official[keep], kind="stable")]
        kinds = classify(a.oks[order])
        found += kinds.count("found")
        answers += len(order)
    recall = found / max(persons, 1)
    precision = found / max(answers, 1)
    return 2 * precision * recall / max(precision + recall, 1e-12), found, answers


BINS = ((0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0))


def calibration(
    p: npt.NDArray[np.float64], labels: npt.NDArray[np.float64]
) -> list[dict[str, Any]]:
    """Per probability bin of `BINS`: answers, mean predicted probability, share positive."""
    out = []
    for lo, hi in BINS:
        sel = (p >= lo) & ((p < hi) if hi < 1 else (p <= hi))
        n = int(sel.sum())
        out.append(
            {
                "bin": [lo, hi],
                "answers": n,
                "mean_p": float(p[sel].mean()) if n else None,
                "found": float(labels[sel].mean()) if n else None,
            }
        )
    return out


def _separation_row(name: str, v: dict[str, Any]) -> str:
    """A markdown row: the score's AUROC, then each bin's share found (answers); – for the
    official score, which is no probability."""
    bins = v["calibration"] or [{"answers": 0}] * len(BINS)
    cells = [f"{b['found']:.2f} ({b['answers']})" if b["answers"] else "–" for b in bins]
    return f"| {name} | {v['auroc']:.3f} | " + " | ".join(cells) + " |"


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row to ship by `RULE` from rows with detector_threshold, min_probability and f1."""
    best = max(r["f1"] for r in rows)
    near = [r for r in rows if r["f1"] >= best - F1_TOLERANCE]
    threshold = max(r["detector_threshold"] for r in near)
    at = [r for r in rows if r["detector_threshold"] == threshold]
    top = max(r["f1"] for r in at)
    return min((r for r in at if r["f1"] == top), key=lambda r: r["min_probability"])


def collect(pipe: Any, ann: Path, images_dir: Path, floor: float) -> list[Answers]:
    """Every answer down to the detector threshold `floor`, with the official person scores."""
    from PIL import Image

    from models.postprocess import person_features
    from service.results import PoseOptions
    from training.data.coco import CocoKeypoints
    from training.progress import progress

    coco = CocoKeypoints(ann, pipe.spec)
    sigmas = pipe.spec.sigmas_array
    k = pipe.spec.num_keypoints
    ids = coco.image_ids
    out = []
    for start in progress(range(0, len(ids), CHUNK), desc="answers"):
        chunk = ids[start : start + CHUNK]
        ims = [
            np.asarray(Image.open(images_dir / coco.images[i].file_name).convert("RGB"))
            for i in chunk
        ]
        opts = PoseOptions(min_score=0.0, detector_threshold=floor)
        for image_id, im, r in zip(
            chunk, ims, pipe.estimate_many([(im, opts) for im in ims]), strict=True
        ):
            gt = coco.labelled_persons(image_id)
            ps = r.persons
            n = len(ps)
            out.append(
                Answers(
                    features=person_features(
                        [p.bbox_score for p in ps],
                        np.array([p.keypoints[:, 2] for p in ps]).reshape(n, k),
                        np.array([p.bbox for p in ps]).reshape(n, 4),
                        [im.shape[:2]] * n,
                    ),
                    box=np.array([p.bbox_score for p in ps]),
                    official=np.array([p.score for p in ps]),
                    oks=answer_oks(ps, gt, sigmas),
                )
            )
    return out


def main() -> int:
    ap = split_parser(__doc__, "person_score")
    ap.add_argument("--choose", type=Path, help="write the model and thresholds to ship here")
    ap.add_argument(
        "--choose-threshold",
        action="store_true",
        help="with --choose, also choose the detector threshold (default: keep the bundle's; "
        "a lower one costs crops, i.e. latency, that the F1 does not show)",
    )
    ap.add_argument(
        "--oks-nms",
        type=float,
        help="the OKS-NMS threshold to answer with (default: the bundle's; a build passes the one "
        "it ships, `pose_answers.py --choose`'s)",
    )
    args = ap.parse_args()

    from models.postprocess import PERSON_FEATURES
    from service.pipeline import PosePipeline
    from training.probes import auroc, fit_person_score

    pipe = PosePipeline.from_path(args.bundle, device="cpu")
    if pipe.detector is None:
        raise SystemExit(f"{args.bundle} has no detector")
    if args.oks_nms is not None:
        if not 0 < args.oks_nms <= 1:
            raise SystemExit("--oks-nms must lie in (0, 1]")
        pipe.oks_nms = args.oks_nms
    info = pipe.detector.info
    floor = max(info.score_floor, min(DETECTOR_THRESHOLDS))
    thresholds = sorted({t for t in DETECTOR_THRESHOLDS if t >= floor} | {info.score_threshold})
    images = collect(pipe, args.ann, args.images, floor)
    labels = found_labels(images)
    model = fit_person_score(np.concatenate([a.features for a in images]), labels)
    calibrated = [model(a.features) for a in images]
    official = [a.official for a in images]

    rows, official_rows = [], []
    for t in thresholds:
        for m in MIN_PROBABILITIES:
            f1, found, answers = f1_counts(images, calibrated, t, m)
            row = {"detector_threshold": t, "min_probability": m, "f1": f1}
            rows.append({**row, "found": found, "answers": answers})
        best = max(
            ((*f1_counts(images, official, t, m), m) for m in OFFICIAL_MINIMA),
            key=lambda r: (r[0], -r[3]),
        )
        row = {"detector_threshold": t, "min_score": best[3], "f1": best[0]}
        official_rows.append({**row, "found": best[1], "answers": best[2]})
    rule = RULE if args.choose_threshold else KEEP_RULE
    chosen = choose(
        rows
        if args.choose_threshold
        else [r for r in rows if r["detector_threshold"] == info.score_threshold]
    )
    persons = sum(a.oks.shape[1] for a in images)
    # the bundle's own scores: its model where it has one (on a held-out split: its calibration)
    own = [info.person_score(a.features) for a in images] if info.person_score else official
    bundle_now = f1_counts(images, own, info.score_threshold, info.min_person_score)
    kept = np.concatenate([a.box >= info.score_threshold for a in images])
    scorings = {"official": official, "fitted here (in sample)": calibrated}
    if info.person_score is not None:
        scorings["the bundle's"] = own
    separation: dict[str, dict[str, Any]] = {
        name: {
            "auroc": auroc(np.concatenate(sc)[kept], labels[kept]),
            "calibration": (
                calibration(np.concatenate(sc)[kept], labels[kept]) if name != "official" else None
            ),
        }
        for name, sc in scorings.items()
    }
    by_threshold = [
        max((r for r in rows if r["detector_threshold"] == t), key=lambda r: r["f1"])
        for t in thresholds
    ]
    bundle = args.bundle.relative_to(ROOT) if args.bundle.is_relative_to(ROOT) else args.bundle
    report: dict[str, Any] = {
        "command": "python benchmarks/person_score.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "code": git_commit(),
        "bundle": str(bundle),
        "annotations": str(args.ann),
        "images": len(images),
        "persons": persons,
        "answers": len(labels),
        "found_share_of_answers": float(labels.mean()),
        "model": model.to_dict(),
        "best_by_detector_threshold": by_threshold,
        "official_by_detector_threshold": official_rows,
        "bundle_as_it_is": {"f1": bundle_now[0], "found": bundle_now[1], "answers": bundle_now[2]},
        "separation": separation,
        "chosen": {**chosen, "rule": rule},
    }
    lines = md_header(f"A calibrated person score ({bundle})", report)
    lines += [
        "",
        f"{persons} labelled persons in {len(images)} images of `{args.ann}`. Every answer down to "
        f"the detector threshold {floor:g}, with the official scores and the bundle's OKS-NMS "
        f"({pipe.oks_nms:g}): {len(labels)} answers, {labels.mean():.3f} of them found "
        f"(OKS >= {MATCH_OKS} with a person not yet found, in official score order)."
        + (
            f" Boxes scoring below {info.flip_min_score:g} ran without the flip test "
            "(the bundle's `detector.flip_min_score`)."
            if info.flip_min_score > 0 and pipe.bundle.manifest.pose.flip_test
            else ""
        ),
        "",
        "The fitted model (`detector.person_score`), P(found) = sigmoid(w · features + b): "
        + ", ".join(f"{f} {w:+.3f}" for f, w in zip(PERSON_FEATURES, model.weights, strict=True))
        + f"; bias {model.bias:+.3f}. Fitted and scored on this split (in sample).",
        "",
        "| detector threshold | official score: best minimum | F1 | found | answers "
        "| calibrated: best minimum | F1 | found | answers |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {t:g}{' (bundle)' if t == info.score_threshold else ''} | {o['min_score']:g} | "
            f"{o['f1']:.4f} | {o['found']} | {o['answers']} | {c['min_probability']:g} | "
            f"{c['f1']:.4f} | {c['found']} | {c['answers']} |"
            for t, o, c in zip(thresholds, official_rows, by_threshold, strict=True)
        ],
        "",
    ]
    lines += [
        f"The bundle as it is ({'its calibrated' if info.person_score else 'the official'} score, "
        f"detector threshold {info.score_threshold:g}, minimum {info.min_person_score:g}): "
        f"F1 {bundle_now[0]:.4f}, {bundle_now[1]} found, {bundle_now[2]} answers.",
        "",
        f"How well each score separates found answers from the others (answers with box score >= "
        f"the bundle's threshold {info.score_threshold:g}), and for the probabilities, the share "
        "found by predicted probability:",
        "",
        "| score | AUROC | " + " | ".join(f"p {lo:g}-{hi:g}" for lo, hi in BINS) + " |",
        "|---|---|" + "---|" * len(BINS),
        *[_separation_row(name, v) for name, v in separation.items()],
        "",
    ]
    lines += [
        f"Chosen ({rule}): detector threshold {chosen['detector_threshold']:g}, minimum "
        f"probability {chosen['min_probability']:g} (F1 {chosen['f1']:.4f}, {chosen['found']} "
        f"found, {chosen['answers']} answers).",
        "",
    ]
    write_results(args.name, report, "\n".join(lines))
    if args.choose is not None:
        args.choose.write_text(
            json.dumps(
                {
                    "person_score": model.to_dict(),
                    "detector_threshold": chosen["detector_threshold"],
                    "min_person_score": chosen["min_probability"],
                    # the flip rule the answers were collected with: the keypoint scores the
                    # model reads depend on it, so the bundle must run the same
                    "flip_min_score": info.flip_min_score,
                    "rule": rule,
                    "split": str(args.ann),
                }
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
