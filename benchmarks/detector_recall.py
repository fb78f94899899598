"""The person detector's recall and precision against ground-truth boxes (issue 12: recall >= 0.85
at the service's score threshold), through the service's own detector (letterbox, ONNX Runtime,
the bundle's input size).

    python benchmarks/detector_recall.py --bundle bundles/demo \
        --ann runs/ablation/synth-tune-2001-400/person_keypoints.json \
        --images runs/ablation/synth-tune-2001-400/images [--detector RUN/detector] [--name NAME]
        [--precision auto|fp32|int8]

`--detector` measures a `scio-pose train detector` output folder (detector.onnx and detector.json)
instead of the bundle's. A bundle's detector is the graph the service runs (`--precision auto`: its
INT8 copy where the INT8 backbone runs), or the one asked for. A person counts as found when a
detection at or above the threshold overlaps its box with IoU >= 0.5, one detection per person,
best overlaps first. Persons without labelled keypoints and crowd regions are not counted (the pose
metrics ignore them too), and detections that match nobody are not held against the detector where
they overlap them. Recall is also broken down by box height, by how many keypoints are labelled
(v > 0) and how many are visible (v = 2), where the misses are, and NAME_misses.png shows the
largest people it missed (their box red, the detection that overlaps them most at any score
yellow, with its score). Writes benchmarks/results/NAME.{json,md,_misses.png} (default
detector_recall).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import (  # noqa: E402
    RESULTS,
    git_commit,
    machine,
    md_header,
    md_targets,
    write_results,
)

THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
HEIGHT_BINS = (0, 32, 64, 96, 128, 192, 10_000)  # GT box height, image px
LABELLED_BINS = (0, 4, 8, 12, 17)  # labelled keypoints of the person (v > 0)
# keypoints marked visible (v = 2; v = 1 is labelled but hidden): a person whose box is a sliver
# of someone behind another figure, or mostly outside the image, has few
VISIBLE_BINS = (-1, 0, 4, 8, 12, 17)
MOSTLY_VISIBLE = 5  # visible keypoints from which a person counts as in view (a report, no target)
MISS_TILES = 24  # the largest missed persons shown in NAME_misses.png
RECALL_TARGET = 0.85


def match(gt: np.ndarray, det: np.ndarray, iou_min: float = 0.5) -> np.ndarray:
    """Which GT boxes (N, 4) a detection (M, 4) covers, one detection each, the highest
    overlaps first (x1, y1, x2, y2)."""
    from service.tracking import box_iou, greedy_pairs

    found = np.zeros(len(gt), dtype=bool)
    if len(gt) and len(det):
        for i, _ in greedy_pairs(box_iou(gt, det), iou_min):
            found[i] = True
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "demo")
    ap.add_argument("--detector", type=Path, help="a `train detector` output folder instead")
    ap.add_argument("--ann", type=Path, required=True, help="COCO-format person annotations")
    ap.add_argument("--images", type=Path, required=True, help="their image folder")
    ap.add_argument("--name", default="detector_recall")
    ap.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "int8"),
        help="with a bundle: which detector graph, as the service picks it (auto: the INT8 copy "
        "where the INT8 backbone runs)",
    )
    args = ap.parse_args()

    from PIL import Image

    from models.bundle import DetectorInfo, load_bundle
    from service.detector import PersonDetector
    from service.runtime import OnnxModel

    if args.detector is not None:
        meta = json.loads((args.detector / "detector.json").read_text())
        info = DetectorInfo.from_dict(meta)
        model = OnnxModel.load(args.detector / "detector.onnx", device="cpu")
        source = str(args.detector)
    else:
        from service.pipeline import PosePipeline

        pipe = PosePipeline(load_bundle(args.bundle), device="cpu", precision=args.precision)
        if pipe.detector is None:
            raise SystemExit(f"{args.bundle} has no detector")
        info, model = pipe.detector.info, pipe.detector.model
        bundle_name = (
            args.bundle.relative_to(ROOT) if args.bundle.is_relative_to(ROOT) else args.bundle
        )
        source = f"{bundle_name}, {pipe.detector_precision} detector"
    detector = PersonDetector(model, info)
    ann = json.loads(args.ann.read_text())
    # per image: box, labelled keypoints, visible keypoints
    gts: dict[int, list[tuple[list[float], int, int]]] = {}
    for a in ann["annotations"]:
        if a.get("iscrowd") or a.get("num_keypoints", 0) == 0:
            continue
        x, y, w, h = a["bbox"]
        v2 = sum(1 for v in a.get("keypoints", [])[2::3] if v == 2)
        gts.setdefault(a["image_id"], []).append(
            ([x, y, x + w, y + h], int(a["num_keypoints"]), v2)
        )
    thresholds = sorted({*THRESHOLDS, info.score_threshold})  # the service's own among them
    floor = min(thresholds)
    found: dict[float, list[bool]] = {t: [] for t in thresholds}  # per threshold, per GT box
    detections = dict.fromkeys(thresholds, 0)
    matched = dict.fromkeys(thresholds, 0)
    heights: list[float] = []
    labelled: list[int] = []
    visible: list[int] = []
    misses: list[Miss] = []
    for im in ann["images"]:
        rgb = np.asarray(Image.open(args.images / im["file_name"]).convert("RGB"))
        ((boxes, scores),) = detector([rgb], min_score=floor)
        people = gts.get(im["id"], [])
        gt = np.array([b for b, _, _ in people], dtype=np.float64).reshape(-1, 4)
        heights.extend((gt[:, 3] - gt[:, 1]).tolist())
        labelled.extend(n for _, n, _ in people)
        visible.extend(v for _, _, v in people)
        for t in thresholds:
            det = boxes[scores >= t]
            f = match(gt, det)
            found[t].extend(f.tolist())
            detections[t] += len(det)
            matched[t] += int(f.sum())
            if t == info.score_threshold:
                misses += [Miss(im["file_name"], gt[i], boxes, scores) for i in np.flatnonzero(~f)]
    h = np.array(heights)
    rows = []
    for t in thresholds:
        f = np.array(found[t], dtype=bool)
        rows.append(
            {
                "threshold": t,
                "recall": float(f.mean()) if len(f) else float("nan"),
                "precision": matched[t] / max(detections[t], 1),
                "detections_per_person": detections[t] / max(len(f), 1),
            }
        )
    thr = info.score_threshold
    at = np.array(found[thr], dtype=bool)
    by_height: list[dict[str, Any]] = []
    for lo, hi in itertools.pairwise(HEIGHT_BINS):
        m = (h > lo) & (h <= hi)
        if m.any():
            by_height.append(
                {"height": [lo, hi], "persons": int(m.sum()), "recall": float(at[m].mean())}
            )

    def by_count(counts: list[int], bins: tuple[int, ...]) -> list[dict[str, Any]]:
        n = np.array(counts)
        out = []
        for lo, hi in itertools.pairwise(bins):
            m = (n > lo) & (n <= hi)
            if m.any():
                out.append({"keypoints": [lo + 1, hi], "persons": int(m.sum()),
                            "recall": float(at[m].mean())})  # fmt: skip
        return out

    by_labelled = by_count(labelled, LABELLED_BINS)
    by_visible = by_count(visible, VISIBLE_BINS)
    seen = np.array(visible) >= MOSTLY_VISIBLE
    recall_visible = float(at[seen].mean()) if seen.any() else float("nan")
    recall = float(at.mean())
    picture = RESULTS / f"{args.name}_misses.png"
    shown = draw_misses(misses, args.images, picture)
    report: dict[str, Any] = {
        "command": "python benchmarks/detector_recall.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "code": git_commit(),
        "detector": source,
        "annotations": str(args.ann),
        "images": len(ann["images"]),
        "persons": len(at),
        "score_threshold": thr,
        "recall": recall,
        "by_threshold": rows,
        "by_height": by_height,
        "by_labelled_keypoints": by_labelled,
        "by_visible_keypoints": by_visible,
        "recall_at_least_visible": {
            "visible_keypoints": MOSTLY_VISIBLE,
            "persons": int(seen.sum()),
            "recall": recall_visible,
        },
        "misses_picture": picture.name if shown else None,
        "targets": {
            f"recall >= {RECALL_TARGET} at the service's threshold {thr}": recall >= RECALL_TARGET
        },
    }
    lines = md_header(f"Person detector recall ({source})", report)
    lines += [
        "",
        f"{report['persons']} persons with labelled keypoints in {report['images']} images of "
        f"`{args.ann}`. Found: a detection with IoU >= 0.5, one per person.",
        "",
        "| score threshold | recall | precision | detections per person |",
        "|---|---|---|---|",
        *[
            f"| {r['threshold']:.2f}{' (service)' if r['threshold'] == thr else ''} | "
            f"{r['recall']:.3f} | {r['precision']:.3f} | {r['detections_per_person']:.2f} |"
            for r in rows
        ],
        "",
        f"Recall at the service's threshold {thr} by ground-truth box height (image px):",
        "",
        "| height | persons | recall |",
        "|---|---|---|",
        *[
            f"| {b['height'][0]}-{b['height'][1]} | {b['persons']} | {b['recall']:.3f} |"
            for b in by_height
        ],
        "",
        "By labelled keypoints of the person (v > 0, hidden ones included):",
        "",
        "| labelled keypoints | persons | recall |",
        "|---|---|---|",
        *[
            f"| {b['keypoints'][0]}-{b['keypoints'][1]} | {b['persons']} | {b['recall']:.3f} |"
            for b in by_labelled
        ],
        "",
        "By visible keypoints (v = 2; few: a sliver of someone behind another figure or outside "
        "the image):",
        "",
        "| visible keypoints | persons | recall |",
        "|---|---|---|",
        *[f"| {_span(b['keypoints'])} | {b['persons']} | {b['recall']:.3f} |" for b in by_visible],
        "",
        f"People with at least {MOSTLY_VISIBLE} visible keypoints ({int(seen.sum())} of "
        f"{len(at)}): recall {recall_visible:.3f} at {thr} (a report; the target counts everyone).",
        "",
        *(
            [
                f"The {shown} largest people it missed: `{picture.name}` (their box red; yellow, "
                "the detection that overlaps them most at any score, with its score and IoU).",
                "",
            ]
            if shown
            else []
        ),
        *md_targets(report["targets"]),
        "",
    ]
    write_results(args.name, report, "\n".join(lines))
    return 0


def _span(bounds: list[int]) -> str:
    lo, hi = bounds
    return str(hi) if lo == hi else f"{lo}-{hi}"


@dataclass
class Miss:
    """A person the detector missed at the service's threshold, with every detection of its
    image down to the lowest threshold measured."""

    file_name: str
    box: np.ndarray  # (4,) x1, y1, x2, y2
    det_boxes: np.ndarray  # (M, 4)
    det_scores: np.ndarray  # (M,)


def draw_misses(misses: list[Miss], images: Path, out: Path, tiles: int = MISS_TILES) -> int:
    """A grid of the `tiles` tallest misses (a crop around each, 160 px high), written to `out`;
    how many it shows."""
    import cv2

    from service.tracking import box_iou

    chosen = sorted(misses, key=lambda m: -(m.box[3] - m.box[1]))[:tiles]
    size, cols = 160, 6
    grid = np.full((size * -(-len(chosen) // cols), size * cols, 3), 255, np.uint8)
    for k, m in enumerate(chosen):
        bgr = cv2.imread(str(images / m.file_name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(images / m.file_name)
        x1, y1, x2, y2 = m.box
        side = max(x2 - x1, y2 - y1) * 1.3 + 8
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        scale = size / side
        # the square around the person, scaled to the tile (OpenCV, bilinear, grey outside)
        mat = np.array([[scale, 0, size / 2 - cx * scale], [0, scale, size / 2 - cy * scale]])
        tile = cv2.warpAffine(
            bgr, mat, (size, size), flags=cv2.INTER_LINEAR, borderValue=(128, 128, 128)
        )

        label = f"h{y2 - y1:.0f}px"
        if len(m.det_boxes):
            iou = box_iou(m.box[None], m.det_boxes)[0]
            j = int(np.argmax(iou))
            if iou[j] > 0:
                cv2.rectangle(tile, *_corners(m.det_boxes[j], mat), (0, 215, 255), 1)
                label += f" {m.det_scores[j]:.2f}/{iou[j]:.2f}"
        cv2.rectangle(tile, *_corners(m.box, mat), (0, 0, 255), 1)
        cv2.putText(tile, label, (3, size - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 2)
        cv2.putText(tile, label, (3, size - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        r, c = divmod(k, cols)
        grid[r * size : (r + 1) * size, c * size : (c + 1) * size] = tile
    if chosen:
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), grid)
    return len(chosen)


def _corners(box: np.ndarray, mat: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """A box's corners through a scale-and-shift affine matrix (2, 3), as OpenCV points."""
    p = (box.reshape(2, 2) * np.diag(mat[:, :2]) + mat[:, 2]).round().astype(int)
    return (int(p[0, 0]), int(p[0, 1])), (int(p[1, 0]), int(p[1, 1]))


if __name__ == "__main__":
    raise SystemExit(main())
