"""`scio-pose evaluate`: the COCO keypoint protocol on a bundle, through the service's pipeline.

The pipeline object is the one `scio-pose serve` runs (service.pipeline.PosePipeline), so the AP
reported here is the AP the service delivers. Protocol (DESIGN.md): person boxes from the ground
truth (cleaned, as the official code does) or from a detections file (raw); flip test with the
bundle's shift (`pose.flip_shift`: the official one pixel for converted checkpoints, the exact
(s - 1) / s for the stride in bundles `export` writes); person score = box score × mean
keypoint score above 0.2; OKS-NMS at 0.9 (the official value, whatever the bundle's detector
sets for `/pose`: AP ranks every answer by score, so the duplicates a lower threshold removes
for the API's users cost it nothing, and the people it would also drop gain it a little: demo
bundle, held out, 38.6 at 0.9, 38.3 at 0.5); pycocotools COCOeval, or xtcocotools' crowd
evaluation for CrowdPose.

Per-keypoint accuracy: for each labelled ground-truth keypoint, the OKS similarity
exp(-d² / (2 s² k²)) of the prediction matched to its person (greedy, by OKS), 0 when no
prediction matched: the per-keypoint term the OKS metric averages, reported per keypoint name.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from models.bundle import load_bundle
from models.geometry import clean_gt_boxes
from models.keypoints import KeypointSpec
from models.postprocess import OKS_THRE
from models.scio_search import ScioSearchConfig
from service.pipeline import PosePipeline
from service.results import PersonPose, PoseOptions
from training.data.coco import CocoKeypoints, ImageRecord, PersonAnn, load_detections
from training.progress import progress

log = logging.getLogger(__name__)
F64 = npt.NDArray[np.float64]
REFINE_MODES = ("none", "scl", "sco")
COCO_STATS = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
CROWD_STATS = ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard")


@dataclass(frozen=True)
class EvalOptions:
    boxes: str = "gt"  # "gt", "detector" (the bundle's own), or a COCO results file of boxes
    refine: str = "none"  # none: baseline; scl: Φ prior only; sco: Φ prior + the search
    flip: bool | None = None  # None: the bundle's default (bundle.json pose.flip_test)
    device: str = "cpu"
    precision: str = "auto"  # backbone graph (service.pipeline.backbone_precision)
    batch_images: int = 8  # images per pipeline call
    limit: int | None = None  # evaluate only the first N images (smoke runs)
    scio_config: ScioSearchConfig | None = None  # override the bundle's search settings
    keep_refinements: bool = False  # add one row per refined keypoint ("refinement_rows")
    keep_results: bool = False  # add the COCO results list ("coco_results"), for bootstraps
    # "official": the official HRNet code's protocol exactly: its GT-box filter, keypoints not
    # clipped to the image, OKS-NMS ties broken as its argsort does; "service": as /pose answers
    # (clipped keypoints), but with the official OKS-NMS threshold (see the module's docstring)
    protocol: str = "service"
    # the bundle's left/right pair split (bundle.json pose.pair_split, models.pairs) after
    # decoding; False: the backbone's own decoding (what the split adds)
    pair_split: bool = True
    head_view: bool = False  # the head view (PoseOptions.head_view) for every person


def scio_config_for(mode: str, bundle_config: ScioSearchConfig) -> ScioSearchConfig:
    """`scl`: the bundle's prior with no search steps; `sco`: the bundle's settings."""
    if mode == "scl":
        prior = bundle_config.prior if bundle_config.prior != "backbone" else "fusion"
        return replace(bundle_config, prior=prior, strategy="descent", iterations=0)
    return bundle_config


def evaluate(
    bundle_path: str | Path, ann_file: str | Path, images_dir: str | Path, opts: EvalOptions
) -> dict[str, Any]:
    """One evaluation, `opts.refine` choosing the ablation row."""
    if opts.refine not in REFINE_MODES:
        raise ValueError(f"refine must be one of {REFINE_MODES}, not {opts.refine!r}")
    pipe = PosePipeline(
        load_bundle(bundle_path),
        device=opts.device,
        precision=opts.precision,
        pair_split=opts.pair_split,
    )
    scio_cfg = None
    if opts.refine != "none":
        if not pipe.refine_available:
            raise ValueError(f"--refine {opts.refine}: the bundle has no SCIO networks")
        scio_cfg = scio_config_for(opts.refine, opts.scio_config or pipe.scio_config)
    variants = {opts.refine: scio_cfg}
    return evaluate_variants(bundle_path, ann_file, images_dir, opts, variants, pipe)[opts.refine]


def evaluate_variants(
    bundle_path: str | Path,
    ann_file: str | Path,
    images_dir: str | Path,
    opts: EvalOptions,
    variants: dict[str, ScioSearchConfig | None],
    pipe: PosePipeline | None = None,
) -> dict[str, dict[str, Any]]:
    """Several SCIO settings (None: no refinement) scored on one backbone pass per image chunk,
    so the rows of an ablation differ only by what SCIO does. `pipe`: the bundle's pipeline, if
    the caller has one already."""
    pipe = pipe or PosePipeline(
        load_bundle(bundle_path),
        device=opts.device,
        precision=opts.precision,
        pair_split=opts.pair_split,
    )
    bundle = pipe.bundle
    spec = bundle.manifest.spec
    coco = CocoKeypoints(ann_file, spec)
    if any(v is not None for v in variants.values()) and not pipe.refine_available:
        raise ValueError("SCIO variants asked for, but the bundle has no SCIO networks")
    image_ids = coco.image_ids[: opts.limit] if opts.limit else coco.image_ids
    if opts.boxes == "detector" and pipe.detector is None:
        raise ValueError("--boxes detector: the bundle has no detector")
    official = opts.protocol == "official"
    boxes = (
        person_boxes(coco, image_ids, opts.boxes, official) if opts.boxes != "detector" else None
    )
    predictions: dict[str, dict[int, list[PersonPose]]] = {v: {} for v in variants}
    seconds = dict.fromkeys(variants, 0.0)
    chunks = [
        image_ids[i : i + opts.batch_images] for i in range(0, len(image_ids), opts.batch_images)
    ]
    for chunk in progress(chunks, desc="evaluate"):
        items = eval_items(coco, chunk, Path(images_dir), opts, boxes)
        t = time.perf_counter()
        bp = pipe.backbone_pass(items)
        shared = time.perf_counter() - t
        for name, cfg in variants.items():
            t = time.perf_counter()
            v_items = [(im, replace(o, refine=cfg is not None)) for im, o in items]
            # the refinement rows report Γ's loss for every refined keypoint
            results = pipe.finish(v_items, bp, cfg, all_losses=opts.keep_refinements)
            seconds[name] += shared + time.perf_counter() - t
            for image_id, res in zip(chunk, results, strict=True):
                predictions[name][image_id] = res.persons
    out = {}
    for name, cfg in variants.items():
        preds = predictions[name]
        matches = match_predictions(coco, preds, spec)
        result: dict[str, Any] = {
            "bundle": {
                "name": bundle.manifest.name,
                "version": bundle.manifest.version,
                "path": str(bundle_path),
            },
            "ann": str(ann_file),
            "boxes": opts.boxes,
            "protocol": opts.protocol,
            "refine": name,
            "flip": pipe.flips(opts.flip),
            "head_view": opts.head_view and pipe.head_view_available,
            "pair_split": pipe.pair_split.to_dict() if pipe.pair_split else None,
            "scio_config": cfg.to_dict() if cfg else None,
            "images": len(image_ids),
            "persons": int(sum(len(p) for p in preds.values())),
            "seconds": seconds[name],
            "stats": coco_stats(Path(ann_file), to_coco_results(preds), spec, image_ids),
            "keypoint_accuracy": keypoint_accuracy(matches, spec),
            "distal_keypoints": [spec.keypoint_names[g.d] for g in spec.groups],
            "scio": refinement_summary(matches, spec) if cfg is not None else None,
        }
        if opts.keep_refinements and cfg is not None:
            result["refinement_rows"] = refinement_rows(matches, spec)
        if opts.keep_results:
            result["coco_results"] = to_coco_results(preds)
            result["image_ids"] = list(image_ids)
        out[name] = result
    return out


def provenance_evaluation(result_files: list[Path]) -> dict[str, Any]:
    """`scio-pose evaluate --out` result files as a bundle's provenance records them (the build
    script's `evaluation.results`, and `scio-pose rebundle --evaluation`): per "boxes=B
    refine=R", the COCO stats, the distal keypoints' accuracy and SCIO's counts."""
    out: dict[str, Any] = {}
    for p in result_files:
        r = json.loads(Path(p).read_text())
        out[f"boxes={r['boxes']} refine={r['refine']}"] = {
            "stats": r["stats"],
            "distal_keypoint_accuracy": {
                k: r["keypoint_accuracy"][k] for k in r["distal_keypoints"]
            },
            "scio": r["scio"],
        }
    return out


def load_rgb(images_dir: Path, im: ImageRecord) -> npt.NDArray[np.uint8]:
    with Image.open(images_dir / im.file_name) as img:
        return np.asarray(img.convert("RGB"))


def eval_items(
    coco: CocoKeypoints,
    image_ids: list[int],
    images_dir: Path,
    opts: EvalOptions,
    boxes: dict[int, tuple[F64, F64]] | None,
) -> list[tuple[npt.NDArray[np.uint8], PoseOptions]]:
    """The pipeline's items for `image_ids` as an evaluation asks for them: refinement off (the
    variants switch it), AP's OKS-NMS threshold, every person whatever its score, the given
    `boxes` (`person_boxes`) or, with None, the bundle's detector."""
    official = opts.protocol == "official"
    items = []
    for image_id in image_ids:
        b, s = (None, None)  # the service's path: the bundle's detector finds the persons
        if boxes is not None:
            b, s = boxes.get(image_id, (np.zeros((0, 4)), np.zeros(0)))
        o = PoseOptions(
            refine=False,
            flip=opts.flip,
            boxes=b,
            box_scores=s,
            oks_nms=True,
            oks_nms_threshold=OKS_THRE,  # AP's protocol, not the bundle's
            min_score=0.0,  # AP ranks every answer: none is dropped by its score
            official=official,
            head_view=opts.head_view,
        )
        items.append((load_rgb(images_dir, coco.images[image_id]), o))
    return items


def person_boxes(
    coco: CocoKeypoints, image_ids: list[int], source: str, official: bool = False
) -> dict[int, tuple[F64, F64]]:
    """{image_id: (boxes x1y1x2y2 (n, 4), scores (n,))}."""
    out: dict[int, tuple[F64, F64]] = {}
    if source == "gt":
        for image_id, (boxes, persons) in gt_persons(coco, image_ids, official).items():
            out[image_id] = (boxes, np.ones(len(persons)))
        return out
    dets = load_detections(source, set(image_ids))
    for image_id, rows in dets.items():
        xywh = np.stack([b for b, _ in rows])
        out[image_id] = (xyxy(xywh), np.array([s for _, s in rows]))
    return out


def gt_persons(
    coco: CocoKeypoints, image_ids: list[int], official: bool = False
) -> dict[int, tuple[F64, list[PersonAnn]]]:
    """{image_id: (cleaned ground-truth boxes x1y1x2y2 (n, 4), their annotations)}: the persons
    that `--boxes gt` evaluates (`CocoKeypoints.training_instances`)."""
    by_image: dict[int, list[PersonAnn]] = {}
    for im, p in coco.training_instances(official):
        by_image.setdefault(im.image_id, []).append(p)
    out: dict[int, tuple[F64, list[PersonAnn]]] = {}
    for image_id in image_ids:
        persons = by_image.get(image_id, [])
        if persons:
            im = coco.images[image_id]
            xywh = clean_gt_boxes(np.stack([p.bbox_xywh for p in persons]), (im.height, im.width))
            out[image_id] = (xyxy(xywh), persons)
    return out


def bootstrap_ap(
    ann_file: Path,
    results: dict[str, list[dict[str, Any]]],
    spec: KeypointSpec,
    image_ids: list[int],
    samples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """AP over images resampled with replacement, the same resamples for every variant (a
    paired bootstrap): each variant's 95% interval, and each variant's difference to the first
    one with its 95% interval and the share of resamples in which it is above 0.

    pycocotools matches each image once (`evaluate`); a resample only re-weights images, so each
    one re-runs `accumulate` on the resampled per-image records."""
    if spec.eval_iou_type == "keypoints_crowd":
        raise ValueError("the bootstrap is implemented for pycocotools' keypoints evaluation")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(seed)
    n = len(image_ids)
    draws = [rng.integers(0, n, n) for _ in range(samples)]
    aps: dict[str, list[float]] = {}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        gt = COCO(str(ann_file))
        for name, rows in results.items():
            ev = COCOeval(gt, gt.loadRes(rows) if rows else COCO(), "keypoints")
            ev.params.kpt_oks_sigmas = spec.sigmas_array
            ev.params.imgIds = list(image_ids)
            ev.evaluate()
            per_image = list(ev.evalImgs)
            areas = len(ev._paramsEval.areaRng)
            aps[name] = []
            for idx in draws:
                ev.evalImgs = [per_image[a * n + int(i)] for a in range(areas) for i in idx]
                ev._paramsEval.imgIds = ev.params.imgIds = list(range(n))
                ev.accumulate()
                ev.summarize()
                aps[name].append(float(ev.stats[0]))
    names = list(results)
    out: dict[str, Any] = {"samples": samples, "images": n, "variants": {}}
    for name in names:
        v = np.array(aps[name])
        out["variants"][name] = {
            "AP_95": [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
        }
        if name != names[0]:
            d = v - np.array(aps[names[0]])
            out["variants"][name].update(
                {
                    f"minus_{names[0]}_mean": float(d.mean()),
                    f"minus_{names[0]}_95": [
                        float(np.percentile(d, 2.5)),
                        float(np.percentile(d, 97.5)),
                    ],
                    f"minus_{names[0]}_share_above_0": float((d > 0).mean()),
                }
            )
    return out


def xyxy(xywh: F64) -> F64:
    """Boxes (n, 4) x, y, w, h -> x1, y1, x2, y2."""
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def to_coco_results(predictions: dict[int, list[PersonPose]]) -> list[dict[str, Any]]:
    rows = []
    for image_id, persons in predictions.items():
        for p in persons:
            x1, y1, x2, y2 = p.bbox
            rows.append(
                {
                    "image_id": int(image_id),
                    "category_id": 1,
                    "keypoints": [round(float(v), 3) for v in p.keypoints.reshape(-1)],
                    "score": float(p.score),
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                }
            )
    return rows


def coco_stats(
    ann_file: Path, results: list[dict[str, Any]], spec: KeypointSpec, image_ids: list[int]
) -> dict[str, float]:
    """pycocotools (COCO) or xtcocotools' crowd variant (CrowdPose) on the results."""
    crowd = spec.eval_iou_type == "keypoints_crowd"
    names = CROWD_STATS if crowd else COCO_STATS
    if not results:
        return dict.fromkeys(names, 0.0)
    if not crowd:
        ev = keypoint_eval(ann_file, results, spec.sigmas_array, image_ids)
    else:
        from xtcocotools.coco import COCO as XCOCO
        from xtcocotools.cocoeval import COCOeval as XCOCOeval

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            gt = XCOCO(str(ann_file))
            dt = gt.loadRes(results)
            ev = XCOCOeval(gt, dt, "keypoints_crowd", spec.sigmas_array, use_area=False)
            ev.params.imgIds = image_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        log.debug("%s", buf.getvalue())
    return {n: float(v) for n, v in zip(names, ev.stats, strict=False)}


def keypoint_eval(
    ann_file: Path,
    results: list[dict[str, Any]],
    sigmas: npt.NDArray[np.float64],
    image_ids: list[int] | None = None,
) -> Any:
    """pycocotools' keypoint evaluation of `results` (evaluated, accumulated and summarised,
    quietly): the COCOeval, whose `stats`, `ious` and `_gts` its callers read. `image_ids`:
    those images only (default: all of the annotations')."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(results), "keypoints")
        ev.params.kpt_oks_sigmas = sigmas
        if image_ids is not None:
            ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    log.debug("%s", buf.getvalue())
    return ev


@dataclass
class Match:
    """One ground-truth person and the prediction matched to it (None when unmatched)."""

    image_id: int
    gt: PersonAnn
    pred: PersonPose | None


def match_predictions(
    coco: CocoKeypoints, predictions: dict[int, list[PersonPose]], spec: KeypointSpec
) -> list[Match]:
    """Greedy OKS matching per image: predictions in score order take the unmatched labelled
    ground-truth person they overlap most (OKS > 0)."""
    matches: list[Match] = []
    for image_id, persons in predictions.items():
        gts = coco.labelled_persons(image_id)
        taken: dict[int, PersonPose] = {}
        for pred in sorted(persons, key=lambda q: -q.score):
            free = [i for i in range(len(gts)) if i not in taken]
            if not free:
                break
            sims = [person_oks(pred.keypoints, gts[i], spec.sigmas_array) for i in free]
            best = int(np.argmax(sims))
            if sims[best] > 0:
                taken[free[best]] = pred
        matches.extend(Match(image_id, g, taken.get(i)) for i, g in enumerate(gts))
    return matches


def person_oks(kp: F64, gt: PersonAnn, sigmas: F64) -> float:
    """OKS of a prediction against one ground-truth person, over its labelled keypoints."""
    vis = gt.keypoints[:, 2] > 0
    sim = oks_terms(kp[:, :2], gt.keypoints[:, :2], max(gt.area, 1.0), sigmas)
    return float(sim[vis].mean())


def oks_terms(pred: F64, gt: F64, area: float | F64, sigmas: F64) -> F64:
    """Per-keypoint OKS terms exp(-d² / (2 s² k²)) with s² = area and k = 2σ (COCO's form)."""
    d2 = ((pred - gt) ** 2).sum(-1)
    var = (2 * sigmas) ** 2
    out: F64 = np.exp(-d2 / var / (area + np.spacing(1)) / 2)
    return out


def keypoint_accuracy(matches: list[Match], spec: KeypointSpec) -> dict[str, float]:
    sums = np.zeros(spec.num_keypoints)
    counts = np.zeros(spec.num_keypoints)
    for m in matches:
        vis = m.gt.keypoints[:, 2] > 0
        counts += vis
        if m.pred is not None:
            sim = oks_terms(
                m.pred.keypoints[:, :2],
                m.gt.keypoints[:, :2],
                max(m.gt.area, 1.0),
                spec.sigmas_array,
            )
            sums += sim * vis
    acc = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return {n: float(a) for n, a in zip(spec.keypoint_names, acc, strict=True)}


def refinement_summary(matches: list[Match], spec: KeypointSpec) -> dict[str, Any]:
    """How the SCIO search did on matched persons: acceptance, and per refined keypoint the
    verification losses against the accuracy at the returned position."""
    rows = refinement_rows(matches, spec)
    if not rows:
        return {"refined": 0}
    # Γ's loss where it was run (see PosePipeline.finish's all_losses)
    scored = [r for r in rows if r["loss_after"] is not None]
    loss = np.array([r["loss_after"] for r in scored])
    acc = np.array([r["accuracy"] for r in scored])
    corr = (
        float(np.corrcoef(loss, acc)[0, 1])
        if len(scored) > 2 and loss.std() > 0 and acc.std() > 0
        else float("nan")
    )
    return {
        "refined": len(rows),
        "accepted": int(sum(r["accepted"] for r in rows)),
        "acceptance_rate": float(np.mean([r["accepted"] for r in rows])),
        "mean_displacement_px": float(np.mean([r["displacement_px"] for r in rows])),
        "loss_scored": len(scored),
        "loss_accuracy_correlation": corr,
    }


def refinement_rows(matches: list[Match], spec: KeypointSpec) -> list[dict[str, Any]]:
    """One row per refined keypoint of a matched person whose ground truth labels it."""
    rows = []
    for m in matches:
        if m.pred is None:
            continue
        for r in m.pred.refinements:
            k = r.keypoint
            if m.gt.keypoints[k, 2] <= 0:
                continue
            acc = oks_terms(
                m.pred.keypoints[k : k + 1, :2],
                m.gt.keypoints[k : k + 1, :2],
                max(m.gt.area, 1.0),
                spec.sigmas_array[k : k + 1],
            )[0]
            rows.append(
                {
                    "image_id": m.image_id,
                    "ann_id": m.gt.ann_id,
                    "keypoint": spec.keypoint_names[k],
                    "group": r.group,
                    "loss_before": r.loss_before,
                    "loss_after": r.loss_after,
                    "accepted": r.accepted,
                    "displacement_px": r.displacement_px,
                    "confidence": r.confidence,
                    "bbox_score": m.pred.bbox_score,
                    "accuracy": float(acc),
                }
            )
    return rows


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"bundle {r['bundle']['name']} {r['bundle']['version']} | boxes {r['boxes']} | "
        f"refine {r['refine']} | flip {r['flip']} | {r['images']} images, {r['persons']} persons, "
        f"{r['seconds']:.1f} s",
        "  ".join(f"{k} {v:.4f}" for k, v in r["stats"].items()),
        "distal keypoint accuracy: "
        + "  ".join(f"{n} {r['keypoint_accuracy'][n]:.4f}" for n in r["distal_keypoints"]),
    ]
    if r.get("scio"):
        s = r["scio"]
        lines.append(
            "SCIO: "
            + "  ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items()
            )
        )
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
