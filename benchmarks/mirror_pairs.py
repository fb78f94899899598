"""Whether a bundle's backbone tells left from right: for each left/right keypoint pair, how alike
its two heatmaps are, how alike the two output channels of the final layer are, how often both
sides are decoded on one spot although the true points lie apart, and each side's accuracy as
the backbone decodes it and as the service returns it (the bundle's pair split of keypoints
decoded on one spot, models.pairs, then SCIO refinement at the bundle's settings).
Ground-truth boxes on a synthetic split, the flip test as the bundle's default.

    python benchmarks/mirror_pairs.py [--bundle bundles/demo] [--split val] [--images 400]

Writes benchmarks/results/mirror_pairs.{json,md} (`--name` overrides).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import git_commit, machine, md_header, write_results  # noqa: E402
from benchmarks.scio_ablation import SPLITS, make_split, split_arguments  # noqa: E402
from models.bundle import POSE, load_bundle  # noqa: E402
from models.geometry import heatmap_to_image  # noqa: E402
from models.pairs import PairSplit  # noqa: E402
from service.pipeline import PosePipeline  # noqa: E402
from training.data.coco import CocoKeypoints  # noqa: E402
from training.evaluate import oks_terms  # noqa: E402
from training.probes import OKS_CORRECT, gt_batches, mirror_pair_stats, refine_pass  # noqa: E402

F64 = npt.NDArray[np.float64]


def final_layer_difference(pose_onnx: Path, pairs: list[tuple[int, int]]) -> list[float]:
    """‖w_l − w_r‖ / ‖w_l‖ of each pair's two output channels in the convolution that makes the
    `heatmaps` output (0: the network computes the same map for both sides)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(pose_onnx))
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer["heatmaps"]
    while node.op_type != "Conv":  # through a reshape or activation, if the export has one
        node = producer[node.input[0]]
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    w = w.reshape(len(w), -1)
    return [float(np.linalg.norm(w[a] - w[b]) / np.linalg.norm(w[a])) for a, b in pairs]


def collect(
    pipe: PosePipeline, split: Path, pair_split: PairSplit | None = None
) -> dict[str, npt.NDArray[Any]]:
    """Heatmaps, decoded and served positions (heatmap px), the truth (heatmap px), which
    keypoints are labelled inside the crop, and the OKS terms of both decodings. `pipe` decodes
    without a pair split; the served positions apply `pair_split` (the bundle's), then SCIO."""
    spec = pipe.spec
    hw = pipe.codec.heatmap_hw
    coco = CocoKeypoints(split / "person_keypoints.json", spec)
    keys = ("heat", "coords", "truth", "ok", "base", "served")
    parts: dict[str, list[Any]] = {k: [] for k in keys}
    for b in gt_batches(pipe, coco, coco.image_ids, split / "images", desc="mirror pairs"):
        bp, p = b.bp, b.bp.persons
        as_served = pipe.with_pair_split(bp, pair_split)
        served = as_served.coords.astype(np.float64).copy()
        if pipe.verifier is not None:
            res = refine_pass(pipe, as_served)
            served[res.person, np.array([g.d for g in spec.groups])[res.group]] = res.end
        area = np.array([max(a.area, 1.0) for a in b.anns])[:, None]
        sigmas = spec.sigmas_array[None]
        parts["heat"].append(bp.heatmaps)
        parts["coords"].append(bp.coords.astype(np.float64))
        parts["truth"].append(b.truth)
        parts["ok"].append(b.ok)
        for key, pos in (("base", bp.coords.astype(np.float64)), ("served", served)):
            img = heatmap_to_image(pos, p.centers, p.scales, hw)
            parts[key].append(oks_terms(img, b.gt[:, :, :2], area, sigmas))
    return {k: np.concatenate(v) for k, v in parts.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    split_arguments(ap, split="val", name="mirror_pairs")
    args = ap.parse_args()
    split = make_split(args.work, args.split, args.images)
    bundle = load_bundle(args.bundle)
    pipe = PosePipeline(bundle, device="cpu", pair_split=False)  # the backbone's own decoding
    spec = pipe.spec
    pairs = [(int(a), int(b)) for a, b in spec.flip_pairs]
    names = spec.keypoint_names
    data = collect(pipe, split, bundle.manifest.pose.pair_split)
    stats = mirror_pair_stats(data["heat"], data["coords"], data["truth"], data["ok"], pairs)
    weights = final_layer_difference(pipe.bundle.path(POSE), pairs)  # type: ignore[arg-type]
    rows: list[dict[str, Any]] = []
    for (a, b), s, w in zip(pairs, stats, weights, strict=True):
        both = data["ok"][:, a] & data["ok"][:, b]
        apart = both & (np.linalg.norm(data["truth"][:, a] - data["truth"][:, b], axis=-1) >= 2)
        decoded_px = np.linalg.norm(data["coords"][:, a] - data["coords"][:, b], axis=-1)
        together = apart & (decoded_px < 1)
        right = {k: data[k][:, [a, b]] >= OKS_CORRECT for k in ("base", "served")}
        rows.append(
            {
                "pair": f"{names[a]} / {names[b]}",
                **s,
                "final_layer_difference": w,
                # of the persons decoded with both sides on one spot: exactly one side right
                "together_one_right": float(np.mean(right["base"][together].sum(1) == 1))
                if together.any()
                else float("nan"),
                "accuracy": {
                    k: [float(right[k][data["ok"][:, c], j].mean()) for j, c in enumerate((a, b))]
                    for k in right
                },
            }
        )
    report = {
        "command": "python benchmarks/mirror_pairs.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "code": git_commit(),
        "bundle": str(args.bundle),
        "precision": pipe.precision,
        "split": {"name": args.split, "seed": SPLITS[args.split], "images": args.images},
        "persons": len(data["ok"]),
        "pairs": rows,
    }
    lines = md_header("Left and right: does the backbone tell them apart?", report)
    lines += [
        f"Bundle `{args.bundle}` (backbone {pipe.precision}); synthetic {args.split} split "
        f"(seed {SPLITS[args.split]}), {args.images} images, {len(data['ok'])} persons, "
        "ground-truth boxes, flip test as the bundle's default.",
        "",
        "| pair | persons | heatmap corr. | final-layer diff. | true distance (px) | "
        "decoded on one spot | of those, one side right | accuracy l / r | served l / r |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc, srv = r["accuracy"]["base"], r["accuracy"]["served"]
        lines.append(
            f"| {r['pair']} | {r['persons']} | {r['heatmap_correlation']:.3f} | "
            f"{r['final_layer_difference']:.3f} | {r['true_distance_px']:.1f} | "
            f"{r['together']:.3f} | {r['together_one_right']:.3f} | "
            f"{acc[0]:.3f} / {acc[1]:.3f} | {srv[0]:.3f} / {srv[1]:.3f} |"
        )
    lines += [
        "",
        "- heatmap corr.: median Pearson correlation of the pair's two heatmaps over the persons "
        "with both labelled (1: one map for both sides).",
        "- final-layer diff.: ‖w_l − w_r‖ / ‖w_l‖ of the two output channels of the last "
        "convolution (0: the network computes the same map for both).",
        "- decoded on one spot: of the persons whose two true points are at least 2 heatmap px "
        "apart, the share whose two decoded points are within 1 px; then how many of those have "
        "exactly one side right (OKS term >= 0.5).",
        "- accuracy: share of labelled points with OKS term >= 0.5, as decoded by the backbone "
        "(no pair split) and as the service returns them (the bundle's pair split, then SCIO at "
        "the bundle's settings).",
    ]
    write_results(args.name, report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
