"""The head view (`/pose?head_view=true`, `scio-pose evaluate --head-view`) against the plain
pipeline: keypoint AP with GT boxes and with the bundle's detector, the face keypoints'
accuracy (mean OKS term), a paired bootstrap over images, and the evaluation's wall time.

    python benchmarks/head_view.py --split val --name head_view_val

The view itself: the backbone run again on the official half-body crop around the first pass's
upper-body joints; its nose, eyes and ears replace the first crop's (service.pipeline). Chosen
on the tuning split with benchmarks/second_view.py (which keypoints it improves); report it on
the held-out one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import (  # noqa: E402
    md_header,
    shown_path,
    write_results,
)
from benchmarks.scio_ablation import make_split, split_arguments, split_report  # noqa: E402
from models.bundle import load_bundle  # noqa: E402
from service.pipeline import HEAD_VIEW_REPLACES, PosePipeline  # noqa: E402
from training.evaluate import EvalOptions, bootstrap_ap, evaluate_variants  # noqa: E402

BOXES = ("gt", "detector")


def measure(bundle: Path, split: Path) -> dict[str, Any]:
    pipe = PosePipeline(load_bundle(bundle), device="cpu")
    if not pipe.head_view_available:
        raise SystemExit(f"{bundle}: its keypoints have no face keypoints, no head view")
    ann, images = split / "person_keypoints.json", split / "images"
    face = [
        pipe.spec.keypoint_names[i] for i in np.flatnonzero(pipe.spec.named(HEAD_VIEW_REPLACES))
    ]
    out: dict[str, Any] = {"face_keypoints": face, "boxes": {}}
    for boxes in BOXES:
        if boxes == "detector" and pipe.detector is None:
            continue
        rows, results = {}, {}
        for name, on in (("plain", False), ("head view", True)):
            opts = EvalOptions(boxes=boxes, head_view=on, keep_results=True)
            r = evaluate_variants(bundle, ann, images, opts, {name: None}, pipe=pipe)[name]
            results[name] = r["coco_results"]
            rows[name] = {
                "AP": r["stats"]["AP"],
                "AP50": r["stats"]["AP50"],
                "persons": r["persons"],
                "seconds": r["seconds"],
                "face": {n: r["keypoint_accuracy"][n] for n in face},
            }
            ids = r["image_ids"]
        bs = bootstrap_ap(ann, results, pipe.spec, ids)["variants"]["head view"]
        out["boxes"][boxes] = {"rows": rows, "bootstrap": bs}
    return out


def markdown(r: dict[str, Any]) -> str:
    lines = md_header("The head view against the plain pipeline", r)
    lines += [
        "",
        f"Bundle `{r['bundle']}`, synthetic seed {r['seed']} ({r['split']}, {r['images']} "
        "images), no SCIO refinement, the bundle's flip test (in the view too) and pair split. "
        "AP in %; the face columns are each face keypoint's accuracy (mean OKS term); seconds: "
        "the whole evaluation's pipeline time.",
        "",
    ]
    face = r["face_keypoints"]
    for boxes, b in r["boxes"].items():
        title = "GT boxes" if boxes == "gt" else "The bundle's detector"
        lines += [
            f"## {title}",
            "",
            "| pipeline | AP | AP50 | persons | seconds | " + " | ".join(face) + " |",
            "|---|---|---|---|---|" + "---|" * len(face),
        ]
        for name, row in b["rows"].items():
            acc = " | ".join(f"{row['face'][n]:.3f}" for n in face)
            lines.append(
                f"| {name} | {100 * row['AP']:.2f} | {100 * row['AP50']:.2f} | "
                f"{row['persons']} | {row['seconds']:.1f} | {acc} |"
            )
        bs = b["bootstrap"]
        lo, hi = bs["minus_plain_95"]
        lines += [
            "",
            f"Paired bootstrap over images (1000 resamples): AP(head view) − AP(plain) "
            f"{100 * bs['minus_plain_mean']:+.2f}, 95% interval [{100 * lo:+.2f}, "
            f"{100 * hi:+.2f}], above 0 in {bs['minus_plain_share_above_0']:.0%} of resamples.",
            "",
        ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    split_arguments(ap, "val", "head_view")
    args = ap.parse_args()
    if not (args.bundle / "bundle.json").is_file():
        ap.error(f"{args.bundle} is not a bundle (no bundle.json)")
    split = make_split(args.work, args.split, args.images)
    report: dict[str, Any] = {
        **split_report(args),
        "bundle": shown_path(args.bundle),
        **measure(args.bundle, split),
    }
    write_results(args.name, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
