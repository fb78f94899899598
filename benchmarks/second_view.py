"""A second, zoomed view of each person as evidence about the distal keypoints D that the first
crop's feature map does not hold (issue 13): the backbone run again on the official half-body
crop (the joints' box x1.5, which the backbone saw in training) of the upper body and of the
lower body, placed around the backbone's own decoded joints. Each variant takes some keypoints
from a view; keypoint AP with GT boxes and every keypoint's accuracy (Table 5's mean OKS term)
against the backbone alone, with the extra backbone time.

    python benchmarks/second_view.py --split tune --name second_view_tune
    python benchmarks/second_view.py --split val --bootstrap "upper view" \
        "upper view, head only" "Γ picks D" --name second_view_val
    python benchmarks/second_view.py --split tune --no-view-flip --name second_view_tune_noflip

Variants: a view's keypoints replace the first crop's for its half ("upper view": nose to
wrists; "lower view": hips to ankles; "both views"; "upper view, head only": nose, eyes and
ears, the keypoints the upper view improved by more than 0.02 on the tuning split); "max
score": per keypoint the higher heatmap peak of the first crop and the view of its half; "Γ
picks D": for the SCIO groups' D only, the position where the bundle's verifier Γ gives the
lower self-constraint loss (the search's own criterion; its loss compares Γ's prediction with
the first crop's H_A); "closer (oracle)": per keypoint the one of the two nearer the truth, the
most any rule choosing between them could reach (not a result).
No SCIO prior or search; the bundle's flip test (in the views too, unless --no-view-flip) and
pair split run in every pass.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
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
from models.geometry import (  # noqa: E402
    affine_matrices,
    center_scale_to_box,
    half_body_box,
    heatmap_to_image,
    transform_points,
)
from models.scio_search import refine  # noqa: E402
from service.pipeline import (  # noqa: E402
    HEAD_VIEW_PLACED_BY,
    HEAD_VIEW_REPLACES,
    BackbonePass,
    PosePipeline,
)
from training.data.coco import CocoKeypoints  # noqa: E402
from training.evaluate import (  # noqa: E402
    EvalOptions,
    bootstrap_ap,
    coco_stats,
    eval_items,
    gt_persons,
    keypoint_accuracy,
    match_predictions,
    to_coco_results,
)
from training.progress import progress  # noqa: E402

F64 = np.ndarray
# the upper body's joints (which place the upper view and which it replaces) and the face, as the
# pipeline's head view names them
UPPER = HEAD_VIEW_PLACED_BY
HEAD = HEAD_VIEW_REPLACES
VARIANTS = (
    "backbone",
    "upper view",
    "upper view, head only",
    "lower view",
    "both views",
    "max score",
    "Γ picks D",
    "closer (oracle)",
)


def view_pass(
    pipe: PosePipeline, items: list[Any], bp: BackbonePass, joints: np.ndarray, flip: bool = True
) -> tuple[F64, F64, float]:
    """The backbone on the half-body crop of `joints` (N, M, 2, image pixels) of each person
    of `bp`: its decoded keypoints in the first crop's heatmap pixels (N, K, 2), their peaks
    (N, K) and the pass's backbone milliseconds. `flip`: the items' flip test (else none)."""
    p = bp.persons
    aspect = pipe.codec.input_hw[1] / pipe.codec.input_hw[0]
    boxes = center_scale_to_box(*half_body_box(joints, aspect))
    view_items = [
        (
            im,
            replace(
                o,
                boxes=boxes[p.item == i],
                box_scores=np.ones(int((p.item == i).sum())),
                flip=o.flip if flip else False,
            ),
        )
        for i, (im, o) in enumerate(items)
    ]
    v = pipe.backbone_pass(view_items)
    if len(v.persons.item) != len(p.item):
        raise RuntimeError("a half-body crop was dropped: an empty box")
    hw = pipe.codec.heatmap_hw
    image = heatmap_to_image(v.coords, v.persons.centers, v.persons.scales, hw)
    first = transform_points(image, affine_matrices(p.centers, p.scales, None, hw))
    return first, v.scores, v.timings["backbone_ms"]


def gamma_prefers(pipe: PosePipeline, bp: BackbonePass, other: F64) -> np.ndarray:
    """(N, K): where the bundle's Γ gives the SCIO groups' D a lower self-constraint loss at
    `other` (N, K, 2) than at the first crop's D; every person's every group (no confidence
    guards), no search steps."""
    gamma = pipe.verifier
    if gamma is None:
        raise ValueError("the bundle has no Γ")
    config = replace(
        pipe.scio_config, iterations=0, hypotheses=(), min_confidence=0.0, max_distal_confidence=1.0
    )

    def loss(coords: F64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r = refine(
            bp.heatmaps, bp.features, coords, bp.scores, pipe.spec.groups, gamma,
            config, phi=pipe.predictor, decode=pipe.bundle.manifest.pose.decode,
            sigma=pipe.codec.sigma, flip_index=pipe.spec.flip_index,
        )  # fmt: skip
        return r.person, r.keypoint, r.loss_before

    d = [g.d for g in pipe.spec.groups]
    moved = bp.coords.copy()
    moved[:, d] = other[:, d]
    person, keypoint, here = loss(bp.coords)
    _, _, there = loss(moved)
    out = np.zeros(bp.scores.shape, bool)
    out[person, keypoint] = there < here
    return out


def variants(
    pipe: PosePipeline,
    bp: BackbonePass,
    views: dict[str, tuple[F64, F64]],
    upper: np.ndarray,
    head: np.ndarray,
    truth: F64,
    labelled: np.ndarray,
) -> dict[str, tuple[F64, F64]]:
    """{variant: (coords (N, K, 2) in the first crop's heatmap pixels, peaks (N, K))}."""
    c0, s0 = bp.coords, bp.scores
    half = np.where(upper[None, :, None], views["upper"][0], views["lower"][0])
    half_s = np.where(upper[None, :], views["upper"][1], views["lower"][1])

    def take(mask: np.ndarray) -> tuple[F64, F64]:
        return np.where(mask[..., None], half, c0), np.where(mask, half_s, s0)

    n = len(c0)
    closer = labelled & (
        np.linalg.norm(half - truth, axis=-1) < np.linalg.norm(c0 - truth, axis=-1)
    )
    return {
        "backbone": (c0, s0),
        "upper view": take(np.broadcast_to(upper, (n, len(upper)))),
        "upper view, head only": take(np.broadcast_to(head, (n, len(head)))),
        "lower view": take(np.broadcast_to(~upper, (n, len(upper)))),
        "both views": (half, half_s),
        "max score": take(half_s > s0),
        "Γ picks D": take(gamma_prefers(pipe, bp, half)),
        "closer (oracle)": take(closer),
    }


def measure(
    bundle: Path, split: Path, bootstrap: list[str], view_flip: bool = True
) -> dict[str, Any]:
    pipe = PosePipeline(load_bundle(bundle), device="cpu")
    if pipe.verifier is None:
        raise SystemExit(f"{bundle}: no Φ/Γ in this bundle")
    spec = pipe.spec
    ann = split / "person_keypoints.json"
    coco = CocoKeypoints(ann, spec)
    ids = coco.image_ids
    gts = gt_persons(coco, ids)
    boxes = {i: (b, np.ones(len(b))) for i, (b, _) in gts.items()}
    upper = spec.named(UPPER)
    head = spec.named(HEAD)
    opts = EvalOptions()
    preds: dict[str, dict[int, Any]] = {v: {} for v in VARIANTS}
    ms = {"first crop": 0.0, "upper view": 0.0, "lower view": 0.0}
    persons = 0
    hw = pipe.codec.heatmap_hw
    chunks = [ids[i : i + 16] for i in range(0, len(ids), 16)]
    for chunk in progress(chunks, desc="second view"):
        items = eval_items(coco, chunk, split / "images", opts, boxes)
        bp = pipe.backbone_pass(items)
        p = bp.persons
        persons += len(p.item)
        ms["first crop"] += bp.timings["backbone_ms"]
        joints = heatmap_to_image(bp.coords, p.centers, p.scales, hw)
        views = {}
        for name, sel in (("upper", upper), ("lower", ~upper)):
            coords, peaks, t = view_pass(pipe, items, bp, joints[:, sel], view_flip)
            views[name] = (coords, peaks)
            ms[f"{name} view"] += t
        anns = [a for i in chunk for a in gts.get(i, (None, []))[1]]
        gt_img = np.stack([a.keypoints[:, :2] for a in anns])
        truth = transform_points(gt_img, affine_matrices(p.centers, p.scales, None, hw))
        labelled = np.stack([a.keypoints[:, 2] > 0 for a in anns])
        for name, (coords, peaks) in variants(
            pipe, bp, views, upper, head, truth, labelled
        ).items():
            res = pipe.finish(items, replace(bp, coords=coords, scores=peaks), None)
            for image_id, r in zip(chunk, res, strict=True):
                preds[name][image_id] = r.persons
    rows: dict[str, Any] = {}
    results = {}
    for name in VARIANTS:
        results[name] = to_coco_results(preds[name])
        stats = coco_stats(ann, results[name], spec, ids)
        acc = keypoint_accuracy(match_predictions(coco, preds[name], spec), spec)
        rows[name] = {"AP": stats["AP"], "AP50": stats["AP50"], "accuracy": acc}
    out: dict[str, Any] = {
        "bundle": shown_path(bundle),
        "view_flip": view_flip,
        "persons": persons,
        "backbone_ms_per_person": {k: v / max(persons, 1) for k, v in ms.items()},
        "distal_keypoints": [spec.keypoint_names[g.d] for g in spec.groups],
        "rows": rows,
    }
    if bootstrap:
        out["bootstrap"] = bootstrap_ap(
            ann, {k: results[k] for k in ("backbone", *bootstrap)}, spec, ids
        )["variants"]
        del out["bootstrap"]["backbone"]
    return out


def markdown(r: dict[str, Any]) -> str:
    lines = md_header("A second, zoomed view: evidence about D beyond the first crop?", r)
    rows = r["rows"]
    names = list(rows["backbone"]["accuracy"])
    distal = r["distal_keypoints"]
    t = r["backbone_ms_per_person"]
    lines += [
        "",
        f"Bundle `{r['bundle']}`, synthetic seed {r['seed']} ({r['split']}, {r['images']} "
        f"images, {r['persons']} persons), GT boxes, no SCIO prior or search (Γ runs only "
        "for its row). Backbone time per person "
        f"(this run; flip test in the first crop, {'and' if r['view_flip'] else 'not'} in the "
        f"views): first crop {t['first crop']:.2f} ms, upper view "
        f"{t['upper view']:.2f} ms, lower view {t['lower view']:.2f} ms, each "
        f"{t['upper view'] / t['first crop']:.0%} of the first crop's (SCIO's budget is 25%).",
        "",
        "AP in %; the keypoint columns are each keypoint's accuracy (mean OKS term) minus the "
        "backbone's; distal keypoints (the SCIO groups' D) in bold.",
        "",
        "| variant | AP | vs backbone | AP50 | "
        + " | ".join(f"**{n}**" if n in distal else n for n in names)
        + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    base = rows["backbone"]
    for k, row in rows.items():
        acc = " | ".join(
            f"{row['accuracy'][n]:.3f}" if k == "backbone"
            else f"{row['accuracy'][n] - base['accuracy'][n]:+.3f}"
            for n in names
        )  # fmt: skip
        lines.append(
            f"| {k} | {100 * row['AP']:.2f} | {100 * (row['AP'] - base['AP']):+.2f} "
            f"| {100 * row['AP50']:.2f} | {acc} |"
        )
    for name, bs in r.get("bootstrap", {}).items():
        lo, hi = bs["minus_backbone_95"]
        lines += [
            "",
            f"Paired bootstrap over images (1000 resamples): AP({name}) − AP(backbone) "
            f"{100 * bs['minus_backbone_mean']:+.2f}, 95% interval [{100 * lo:+.2f}, "
            f"{100 * hi:+.2f}], above 0 in {bs['minus_backbone_share_above_0']:.0%} of "
            "resamples.",
        ]
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    split_arguments(ap, "tune", "second_view")
    ap.add_argument(
        "--bootstrap",
        nargs="+",
        default=[],
        metavar="VARIANT",
        choices=VARIANTS[1:],
        help="paired bootstrap over images of these variants against the backbone",
    )
    ap.add_argument(
        "--no-view-flip",
        action="store_true",
        help="the views without the flip test (half the cost)",
    )
    args = ap.parse_args()
    if not (args.bundle / "bundle.json").is_file():
        ap.error(f"{args.bundle} is not a bundle (no bundle.json)")
    split = make_split(args.work, args.split, args.images)
    t = time.perf_counter()
    report: dict[str, Any] = {
        **split_report(args),
        **measure(args.bundle, split, args.bootstrap, not args.no_view_flip),
    }
    report["seconds"] = time.perf_counter() - t
    write_results(args.name, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
