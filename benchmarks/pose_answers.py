"""What `/pose` answers on a labelled split, by the OKS-NMS threshold between persons: how many
people it finds once, how many it answers twice (a duplicate pose of someone already found),
how many answers match nobody, and the COCO AP of the same answers.

    python benchmarks/pose_answers.py --bundle bundles/demo \
        --ann runs/ablation/synth-tune-2001-400/person_keypoints.json \
        --images runs/ablation/synth-tune-2001-400/images [--name NAME]

The bundle's detector finds the persons and the pipeline answers as `/pose` does by default
(every person, keypoints clipped to the image, the bundle's flip test and SCIO settings); only
the OKS-NMS threshold changes between rows. Matching, per image and in score order: an answer
takes the unmatched labelled person it overlaps most if their OKS is at least 0.5 (found); else,
if it overlaps an already matched person that much, it is a duplicate; else it matches nobody
(a missed pose or no person at all). F1 is over persons found and answers. The AP column is
pycocotools' on the same answers (AP ranks answers by score, so it gains from keeping more;
`scio-pose evaluate` uses the official 0.9). Writes benchmarks/results/NAME.{json,md} (default
pose_answers).

Every person is answered in these two tables whatever its score. A second table varies the
detector's box score threshold instead (the request's `detector_threshold`), at the bundle's
OKS-NMS threshold: what lowering it below the bundle's default buys and costs in answers. A third
drops the answers whose person score (box score × mean keypoint score) is below a minimum (the
request's `min_score`), at the OKS-NMS threshold chosen with `--choose`, else at the bundle's.

`--choose FILE` (the build, on its tuning split) writes what a bundle should ship to FILE: the
OKS-NMS threshold, each person answered once and as many persons as possible, i.e. the highest
threshold among those with the fewest duplicates (none, where one has none); and the minimum
person score with the highest F1 (the lowest of equals), the bundle's `min_person_score`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import (  # noqa: E402
    git_commit,
    machine,
    md_header,
    split_parser,
    write_results,
)

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DETECTOR_THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4)
MIN_SCORES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
MATCH_OKS = 0.5
CHUNK = 8  # images per pipeline call
CHOICE_RULE = "the highest threshold among those with the fewest duplicates"
MIN_SCORE_RULE = "the minimum person score with the highest F1, the lowest of equals"


def classify(oks: np.ndarray) -> list[str]:
    """Each answer (rows of `oks`, answers x labelled persons, answers in score order) as
    "found", "duplicate" or "none"."""
    taken = np.zeros(oks.shape[1], dtype=bool)
    out = []
    for row in oks:
        free = np.where(taken, -1.0, row)
        if free.size and free.max() >= MATCH_OKS:
            taken[int(np.argmax(free))] = True
            out.append("found")
        elif row.size and row.max() >= MATCH_OKS:
            out.append("duplicate")
        else:
            out.append("none")
    return out


def answer_oks(answers: list[Any], gt: list[Any], sigmas: np.ndarray) -> np.ndarray:
    """OKS of each answer (rows, `PersonPose`) with each labelled person (`PersonAnn`)."""
    from training.evaluate import person_oks

    return np.array(
        [[person_oks(p.keypoints, person, sigmas) for person in gt] for p in answers]
    ).reshape(len(answers), len(gt))


def admitted_by(person: Any) -> float:
    """What a minimum person score reads: the calibrated confidence where the bundle gives
    one, else the official score."""
    return float(person.score if person.confidence is None else person.confidence)


def choose_min_score(rows: list[dict[str, Any]]) -> float:
    """The minimum person score to ship: the highest F1, the lowest of equals."""
    best = max(r["f1"] for r in rows)
    return float(min(r["min_score"] for r in rows if r["f1"] == best))


def main() -> int:
    ap = split_parser(__doc__, "pose_answers")
    ap.add_argument("--choose", type=Path, help="write the threshold to ship to this JSON file")
    args = ap.parse_args()

    from PIL import Image

    from service.pipeline import PosePipeline
    from service.results import PoseOptions
    from training.data.coco import CocoKeypoints
    from training.evaluate import coco_stats, to_coco_results
    from training.progress import progress

    pipe = PosePipeline.from_path(args.bundle, device="cpu")
    if pipe.detector is None:
        raise SystemExit(f"{args.bundle} has no detector")
    coco = CocoKeypoints(args.ann, pipe.spec)
    sigmas = pipe.spec.sigmas_array
    thresholds = sorted({*THRESHOLDS, pipe.oks_nms})
    counts = {t: {"found": 0, "duplicate": 0, "none": 0} for t in thresholds}
    results: dict[float, dict[int, Any]] = {t: {} for t in thresholds}
    ids = coco.image_ids
    images = {
        i: np.asarray(Image.open(args.images / coco.images[i].file_name).convert("RGB"))
        for i in ids
    }
    gts = {i: coco.labelled_persons(i) for i in ids}
    persons = sum(len(g) for g in gts.values())

    kinds: dict[float, dict[int, list[str]]] = {t: {} for t in thresholds}

    def tally(counts: dict[str, int], image_id: int, answers: list[Any]) -> list[str]:
        """Count one image's answers (in score order) as found / duplicate / none."""
        out = classify(answer_oks(answers, gts[image_id], sigmas))
        for kind in out:
            counts[kind] += 1
        return out

    for start in progress(range(0, len(ids), CHUNK), desc="answers"):
        chunk = ids[start : start + CHUNK]
        items = [(images[i], PoseOptions(min_score=0.0)) for i in chunk]
        bp = pipe.backbone_pass(items)
        for t in thresholds:
            answers = pipe.finish([(im, replace(o, oks_nms_threshold=t)) for im, o in items], bp)
            for image_id, answer in zip(chunk, answers, strict=True):
                results[t][image_id] = answer.persons
                kinds[t][image_id] = tally(counts[t], image_id, answer.persons)

    def row(key: str, value: float, c: dict[str, int], res: dict[int, Any]) -> dict[str, Any]:
        n_answers = sum(c.values())
        recall = c["found"] / max(persons, 1)
        precision = c["found"] / max(n_answers, 1)
        return {
            key: value,
            "answers": n_answers,
            "found": c["found"],
            "found_share": recall,
            "duplicates": c["duplicate"],
            "unmatched": c["none"],
            "precision": precision,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12),
            "ap": coco_stats(args.ann, to_coco_results(res), pipe.spec, ids)["AP"],
        }

    rows = [row("oks_nms", t, counts[t], results[t]) for t in thresholds]
    default_thr = pipe.detector.info.score_threshold
    det_thresholds = sorted({*DETECTOR_THRESHOLDS, default_thr})
    det_rows = []
    for d in progress(det_thresholds, desc="detector thresholds"):
        c = {"found": 0, "duplicate": 0, "none": 0}
        by_image: dict[int, Any] = {}
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            opts = PoseOptions(detector_threshold=d, min_score=0.0)
            answers = pipe.estimate_many([(images[i], opts) for i in chunk])
            for image_id, r in zip(chunk, answers, strict=True):
                by_image[image_id] = r.persons
                tally(c, image_id, r.persons)
        det_rows.append(row("detector_threshold", d, c, by_image))
    fewest = min(r["duplicates"] for r in rows)
    chosen = max(r["oks_nms"] for r in rows if r["duplicates"] == fewest)
    # the minimum person score at the OKS-NMS threshold the build ships with it (--choose), or
    # at the bundle's: what /pose answers with each minimum
    nms_for_min = chosen if args.choose is not None else pipe.oks_nms
    min_rows = []
    for m in sorted({*MIN_SCORES, pipe.min_person_score}):
        kept = {
            i: [p for p in persons_ if admitted_by(p) >= m]
            for i, persons_ in results[nms_for_min].items()
        }
        # classified again: a minimum on the calibrated confidence may drop an answer ahead
        # of another in score order, whose class can then change
        c = {"found": 0, "duplicate": 0, "none": 0}
        for i, persons_ in kept.items():
            tally(c, i, persons_)
        min_rows.append(row("min_score", m, c, kept))
    min_score = choose_min_score(min_rows)
    bundle = args.bundle.relative_to(ROOT) if args.bundle.is_relative_to(ROOT) else args.bundle
    report: dict[str, Any] = {
        "command": "python benchmarks/pose_answers.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "code": git_commit(),
        "bundle": str(bundle),
        "bundle_oks_nms": pipe.oks_nms,
        "annotations": str(args.ann),
        "images": len(ids),
        "persons": persons,
        "rows": rows,
        "chosen": {
            "oks_nms": chosen,
            "rule": CHOICE_RULE,
            "min_person_score": min_score,
            "min_person_score_rule": MIN_SCORE_RULE,
        },
        "bundle_min_person_score": pipe.min_person_score,
        "bundle_detector_threshold": default_thr,
        "detector_rows": det_rows,
        "min_score_rows": min_rows,
        "min_score_rows_oks_nms": nms_for_min,
    }
    lines = md_header(
        f"What /pose answers, by OKS-NMS, detector threshold and minimum person score ({bundle})",
        report,
    )
    lines += [
        "",
        f"{persons} labelled persons in {len(ids)} images of `{args.ann}`; the bundle's detector "
        f"and defaults, except that every person is answered whatever its score (in the first two "
        f"tables); the bundle's OKS-NMS threshold: {pipe.oks_nms}. Found: an answer with "
        f"OKS >= {MATCH_OKS} to a person not yet found; duplicate: one to a person already found.",
        "",
        *_table("OKS-NMS", "oks_nms", rows, pipe.oks_nms),
        "",
        f"Chosen by the rule a build applies to its tuning split ({CHOICE_RULE}): {chosen:g}.",
        "",
        f"By the detector's box score threshold (a request's `detector_threshold`), OKS-NMS at "
        f"the bundle's {pipe.oks_nms}:",
        "",
        *_table("detector threshold", "detector_threshold", det_rows, default_thr),
        "",
        f"By the minimum person score (a request's `min_score`; the bundle's "
        f"`min_person_score`: {pipe.min_person_score:g}), OKS-NMS at "
        + (
            f"the chosen {chosen:g}:"
            if args.choose is not None
            else f"the bundle's {pipe.oks_nms:g}:"
        ),
        "",
        *_table("min person score", "min_score", min_rows, pipe.min_person_score),
        "",
        f"Chosen by the rule a build applies to its tuning split ({MIN_SCORE_RULE}): "
        f"{min_score:g}.",
        "",
    ]
    write_results(args.name, report, "\n".join(lines))
    if args.choose is not None:
        args.choose.write_text(json.dumps({**report["chosen"], "split": str(args.ann)}) + "\n")
    return 0


def _table(title: str, key: str, rows: list[dict[str, Any]], bundle_value: float) -> list[str]:
    """Markdown table of `rows` by `key`, the bundle's own value marked."""
    return [
        f"| {title} | answers | found | share of persons | duplicates | match nobody | F1 | AP |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r[key]:g}{' (bundle)' if r[key] == bundle_value else ''} | "
            f"{r['answers']} | {r['found']} | {r['found_share']:.3f} | {r['duplicates']} | "
            f"{r['unmatched']} | {r['f1']:.3f} | {100 * r['ap']:.1f} |"
            for r in rows
        ],
    ]


if __name__ == "__main__":
    raise SystemExit(main())
