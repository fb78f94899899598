"""Which left/right pairs decoded on one spot to split by their anchors, and at what second-peak
threshold (models.pairs): COCO AP with ground-truth boxes, SCIO off, for each candidate pair
alone and for the pairs that gain together, at each threshold, on one backbone pass.

    python benchmarks/pair_split.py --bundle bundles/demo --split tune [--choose FILE]
    python benchmarks/pair_split.py --bundle B --split val --name NAME   # a report held out

The bundle's own `pose.pair_split` is ignored: the passes decode without it, and every row
applies its own settings to the same heatmaps. `--choose FILE` (the build, on its tuning split)
writes the settings a bundle should ship (`scio-pose rebundle --pair-split FILE`): the pairs
that gain at least `MIN_GAIN` AP alone, at the threshold where they give the highest AP
together; `{"pair_split": null}` where no pair gains that much. Writes
benchmarks/results/NAME.{json,md} (default pair_split).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, md_header, write_results  # noqa: E402
from benchmarks.scio_ablation import SPLITS, make_split, split_arguments  # noqa: E402

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
MIN_GAIN = 0.001  # AP (0.1 points) on the tuning split, or no split ships
CHOICE_RULE = (
    f"the pairs that gain at least {100 * MIN_GAIN:.1f} AP alone, at the threshold where they "
    "give the highest AP together"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    split_arguments(ap, split="tune", name="pair_split")
    ap.add_argument("--choose", type=Path, help="write the settings to ship to this JSON file")
    ap.add_argument("--batch-images", type=int, default=16)
    args = ap.parse_args()

    from models.bundle import load_bundle
    from models.keypoints import KeypointSpec
    from models.pairs import Pair, PairSplit, candidate_pairs
    from service.pipeline import PosePipeline
    from training.data.coco import CocoKeypoints
    from training.evaluate import (
        EvalOptions,
        bootstrap_ap,
        coco_stats,
        eval_items,
        keypoint_accuracy,
        match_predictions,
        person_boxes,
        to_coco_results,
    )
    from training.progress import progress

    split = make_split(args.work, args.split, args.images)
    ann = split / "person_keypoints.json"
    pipe = PosePipeline(load_bundle(args.bundle), device="cpu", pair_split=False)
    spec: KeypointSpec = pipe.spec
    coco = CocoKeypoints(ann, spec)
    ids = coco.image_ids
    # one backbone pass over the split, kept without the feature maps (SCIO stays off)
    # as `scio-pose evaluate --boxes gt` asks the pipeline (AP's OKS-NMS threshold)
    opts, boxes = EvalOptions(), person_boxes(coco, ids, "gt")
    passes = []
    chunks = [ids[i : i + args.batch_images] for i in range(0, len(ids), args.batch_images)]
    for chunk in progress(chunks, desc="backbone"):
        items = eval_items(coco, list(chunk), split / "images", opts, boxes)
        bp = pipe.backbone_pass(items)
        passes.append((chunk, items, replace(bp, features=bp.features[:0])))

    def score(settings: PairSplit | None) -> dict[str, Any]:
        preds: dict[int, Any] = {}
        split_count = 0
        for chunk_ids, items, bp in passes:
            split_bp = pipe.with_pair_split(bp, settings)
            split_count += int(np.sum(np.any(split_bp.coords != bp.coords, axis=-1)))
            for image_id, res in zip(chunk_ids, pipe.finish(items, split_bp), strict=True):
                preds[image_id] = res.persons
        results = to_coco_results(preds)
        stats = coco_stats(ann, results, spec, ids)
        acc = keypoint_accuracy(match_predictions(coco, preds, spec), spec)
        return {"stats": stats, "accuracy": acc, "split": split_count, "_results": results}

    candidates = candidate_pairs(spec)
    names = spec.keypoint_names
    label = {p: f"{names[p[0]]} / {names[p[1]]} by {names[p[2]]} / {names[p[3]]}"
             for p in candidates}  # fmt: skip
    base = score(None)
    rows: list[dict[str, Any]] = []
    best: tuple[float, PairSplit | None] = (-1.0, None)
    for t in progress(THRESHOLDS, desc="thresholds"):
        alone: dict[Pair, float] = {}
        for p in candidates:
            r = score(PairSplit(pairs=(p,), min_second=t))
            rows.append({"threshold": t, "pairs": [label[p]], **r})
            alone[p] = r["stats"]["AP"]
        gaining = tuple(p for p in candidates if alone[p] >= base["stats"]["AP"] + MIN_GAIN)
        if len(gaining) > 1:
            r = score(PairSplit(pairs=gaining, min_second=t))
            rows.append({"threshold": t, "pairs": [label[p] for p in gaining], **r})
            together = r["stats"]["AP"]
        else:
            together = alone[gaining[0]] if gaining else -1.0
        if gaining and together > best[0]:
            best = (together, PairSplit(pairs=gaining, min_second=t))
    chosen = best[1]
    # the split that matters here against none, paired over images: the bundle's, where it has
    # one (a held-out report), else the one the tuning split chose (never one chosen held out)
    compared = pipe.bundle.manifest.pose.pair_split or (chosen if args.split == "tune" else None)
    bootstrap = None
    if compared is not None:
        bootstrap = bootstrap_ap(
            ann,
            {"none": base["_results"], "split": score(compared)["_results"]},
            spec,
            ids,
        )["variants"]["split"]
        bootstrap["settings"] = compared.to_dict()
    for r in [base, *rows]:
        del r["_results"]
    report: dict[str, Any] = {
        "command": "python benchmarks/pair_split.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "bundle": str(args.bundle),
        "split": {"name": args.split, "seed": SPLITS[args.split], "images": args.images},
        "persons": int(sum(len(bp.coords) for _, _, bp in passes)),
        "baseline": base,
        "rows": rows,
        "rule": CHOICE_RULE,
        "chosen": chosen.to_dict() if chosen else None,
        "bootstrap": bootstrap,
        "bundle_pair_split": (
            pipe.bundle.manifest.pose.pair_split.to_dict()
            if pipe.bundle.manifest.pose.pair_split
            else None
        ),
    }
    if args.choose is not None:
        args.choose.write_text(
            json.dumps({"pair_split": report["chosen"], "split": str(ann)}, indent=1) + "\n"
        )
    write_results(args.name, report, markdown(report, candidates, names))
    return 0


def markdown(r: dict[str, Any], candidates: Any, names: tuple[str, ...]) -> str:
    lines = md_header("Left/right pairs decoded on one spot, split by their anchors", r)
    shown = sorted({n for c in candidates for n in (names[c[0]], names[c[1]])}, key=names.index)
    b = r["baseline"]
    lines += [
        f"Bundle `{r['bundle']}`; split: synthetic seed {r['split']['seed']} "
        f"({r['split']['name']}), {r['split']['images']} images, {r['persons']} persons, "
        "ground-truth boxes, the bundle's flip test and decoding, SCIO off. A pair is split "
        "where its two keypoints decode within 1 heatmap px of each other and their averaged "
        "map has a second peak of at least the threshold times its maximum (models.pairs). "
        "Accuracy: the mean OKS term of the labelled keypoints (as `scio-pose evaluate` "
        "reports it).",
        "",
        "| threshold | pairs | persons split | AP | AP50 | " + " | ".join(shown) + " |",
        "|---|---|---|---|---|" + "---|" * len(shown),
        f"| – | none | 0 | {100 * b['stats']['AP']:.2f} | {100 * b['stats']['AP50']:.2f} | "
        + " | ".join(f"{b['accuracy'][n]:.3f}" for n in shown)
        + " |",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['threshold']} | {'; '.join(row['pairs'])} | {row['split']} | "
            f"{100 * row['stats']['AP']:.2f} | {100 * row['stats']['AP50']:.2f} | "
            + " | ".join(f"{row['accuracy'][n]:.3f}" for n in shown)
            + " |"
        )
    lines.append("")
    bs = r["bootstrap"]
    if bs is not None:
        lo, hi = bs["minus_none_95"]
        lines += [
            f"`{json.dumps(bs['settings'])}` against no split, paired bootstrap over the images "
            f"(1000 resamples): AP {100 * bs['minus_none_mean']:+.2f} points, 95% interval "
            f"[{100 * lo:+.2f}, {100 * hi:+.2f}], above 0 in "
            f"{100 * bs['minus_none_share_above_0']:.0f}% of resamples.",
            "",
        ]
    if r["split"]["name"] == "tune":
        lines.append(f"Choice ({r['rule']}): `{json.dumps(r['chosen'])}`.")
    else:
        lines.append(
            f"The build chooses on the tuning split; the same rule here would choose "
            f"`{json.dumps(r['chosen'])}`."
        )
    if r["bundle_pair_split"] is not None:
        lines.append(f"The bundle ships `{json.dumps(r['bundle_pair_split'])}`.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
