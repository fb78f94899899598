"""SCIO ablation and cost, the way the paper measures it (issue: SCIO refinement engine).

    python benchmarks/scio_ablation.py --bundle bundles/demo [--proximal-bundle B] [--quick]

1. Settings are chosen on a tuning split (synthetic seed 2001), never on the validation split.
2. On the validation split (seed 3001, different from training's seed 1): the paper's Table 4
   (Baseline / +SCL / +SCL+SCO: AP, AP50, AP75, AR, with ground-truth boxes and with the
   split's simulated detections), Table 5 (accuracy of each distal keypoint), Fig. 6b (the
   self-constraint loss against keypoint accuracy over every refined keypoint, with a scatter
   plot) and, with --proximal-bundle, the other group assignment.
3. Cost on this CPU: SCO time per person against backbone time per person, batched against one
   candidate per Γ call, descent against grid, and accuracy against the number of candidates.

Writes benchmarks/results/scio_ablation.{json,md} and PNG plots, and says which targets it met.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from benchmarks._common import (  # noqa: E402
    RESULTS,
    git_commit,
    machine,
    md_header,
    md_targets,
    timed,
    write_results,
)
from models.bundle import load_bundle  # noqa: E402
from models.scio_search import ScioSearchConfig, refine  # noqa: E402
from service.pipeline import PosePipeline  # noqa: E402
from service.results import PoseOptions  # noqa: E402
from training.evaluate import (  # noqa: E402
    EvalOptions,
    bootstrap_ap,
    evaluate_variants,
    load_rgb,
    xyxy,
)

log = logging.getLogger("scio_ablation")
SPLITS = {"tune": 2001, "val": 3001}
TABLE4 = ("AP", "AP50", "AP75", "AR")


def split_arguments(ap: argparse.ArgumentParser, split: str, name: str) -> argparse.ArgumentParser:
    """The options every split-based SCIO benchmark shares: the bundle, which synthetic split
    and how many images, where splits are generated, and the result file's name."""
    ap.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "demo")
    ap.add_argument("--split", choices=sorted(SPLITS), default=split)
    ap.add_argument("--images", type=int, default=400, help="images in the split")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument("--name", default=name, help="result file name")
    return ap


def split_report(args: argparse.Namespace) -> dict[str, Any]:
    """The head of a split-based benchmark's result file: the command, the machine, the code
    and which split (`split_arguments`' --split and --images)."""
    return {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "code": git_commit(),
        "split": args.split,
        "seed": SPLITS[args.split],
        "images": args.images,
    }


def make_split(work: Path, name: str, images: int) -> Path:
    from training.synth.generate import generate_dataset

    d = work / f"synth-{name}-{SPLITS[name]}-{images}"
    if not (d / "person_keypoints.json").exists():
        generate_dataset(d, images=images, seed=SPLITS[name], size=(256, 256), persons=(1, 4))
    return d


def prior_candidates(base: ScioSearchConfig, sigma: float) -> dict[str, ScioSearchConfig]:
    """The backbone's D and Φ's priors, each without search steps: Φ's map alone or fused with
    the backbone's at three weights, decoded anywhere (the paper) or within one σ of the
    backbone's D (Φ refines the backbone's peak). `sigma`: the heatmap Gaussian's σ in px, for
    a `base` whose lengths are in px."""
    one_sigma = 1.0 if base.unit == "sigma" else sigma
    none = replace(base, prior="backbone", strategy="descent", iterations=0)
    out = {"backbone": none}
    for near in (0.0, one_sigma):
        where = " within 1σ" if near else ""
        out[f"phi{where}"] = replace(none, prior="phi", prior_radius=near)
        for w in (0.5, 0.7, 0.85):
            out[f"fusion {w:g}{where}"] = replace(
                none, prior="fusion", fusion_weight=w, prior_radius=near
            )
    return out


def tune(
    bundle: Path, split: Path, base: ScioSearchConfig, sigma: float, limit: int | None
) -> dict[str, Any]:
    """Choose the settings in three stages on the tuning split, each stage on one backbone pass:
    the prior (backbone, Φ, fusion; judged without search steps, so that the search cannot hide
    which prior is better), then the search (strategy, radius, steps, or none), then the guards
    (acceptance margin, skipping confident keypoints). Within a stage the best AP wins, except
    that a cheaper setting within 0.2 AP points of the best is preferred (cost is a target too).

    Three answers: `config`, the best settings overall (what a bundle ships), `search_config`,
    the best settings that do search (the +SCL+SCO row of Table 4), which differ when no search
    beats every search, and `scl_config`, the best of Φ's priors without search (the +SCL row).
    `sigma`: the bundle's heatmap Gaussian σ in heatmap px (for lengths in base's units)."""
    history: dict[str, Any] = {}

    def stage(name: str, cands: dict[str, ScioSearchConfig]) -> dict[str, Any]:
        res = evaluate_variants(
            bundle,
            split / "person_keypoints.json",
            split / "images",
            EvalOptions(limit=limit),
            {"none": None, **cands},
        )
        rows = {k: {"AP": v["stats"]["AP"], "seconds": v["seconds"]} for k, v in res.items()}
        history[name] = {"rows": rows}
        return rows

    def pick(rows: dict[str, Any], names: list[str]) -> str:
        best_ap = max(rows[k]["AP"] for k in names)
        near = [k for k in names if rows[k]["AP"] >= best_ap - 0.002]
        return min(near, key=lambda k: rows[k]["seconds"])

    priors = prior_candidates(base, sigma)
    rows = stage("prior", priors)
    history["prior"]["picked"] = p_pick = pick(rows, list(priors))
    # the +SCL row of Table 4: the best of Φ's priors, whether or not it beats the backbone
    history["prior"]["scl"] = scl_pick = max(
        (k for k in priors if k != "backbone"), key=lambda k: rows[k]["AP"]
    )
    cfg = priors[p_pick]
    log.info("tuning prior: picked %s (%s); SCL's %s", p_pick, rows[p_pick], scl_pick)

    # lengths in units of the heatmap Gaussian's σ (so the shipped settings mean the same at
    # any heatmap resolution): the paper's first step 1.5 px and radius 4 px at σ 2
    sig = replace(
        cfg,
        unit="sigma",
        step=0.75,
        min_step=0.1875,
        grid_step=0.5,
        prior_radius=cfg.prior_radius if cfg.unit == "sigma" else cfg.prior_radius / sigma,
    )
    searches = {
        "descent50 r2σ": replace(sig, strategy="descent", iterations=50, radius=2.0),
        "descent50 r1σ": replace(sig, strategy="descent", iterations=50, radius=1.0),
        "descent5 r2σ": replace(sig, strategy="descent", iterations=5, radius=2.0),
        "grid r1σ": replace(sig, strategy="grid", radius=1.0),
        "grid r2σ": replace(sig, strategy="grid", radius=2.0),
        "no search": replace(sig, strategy="descent", iterations=0, radius=2.0),
    }
    rows = stage("search", searches)
    s_pick = pick(rows, list(searches))
    s_search = pick(rows, [k for k in searches if k != "no search"])
    history["search"].update(picked=s_pick, picked_with_search=s_search)
    log.info("tuning search: picked %s; best search %s", s_pick, s_search)

    guards: dict[str, ScioSearchConfig] = {}
    branches = {"": searches[s_pick], "search: ": searches[s_search]}
    for prefix, c in branches.items():
        if prefix and s_pick == s_search:
            continue
        margins = (0.0,) if c.iterations == 0 and c.strategy == "descent" else (0.0, 0.05, 0.1, 0.3)
        for m in margins:
            for d in (1.0, 0.6):
                name = f"{prefix}margin {m:g}, skip D above {d:g}"
                guards[name] = replace(c, min_improvement=m, max_distal_confidence=d)
    rows = stage("guards", guards)
    g_pick = pick(rows, [k for k in guards if not k.startswith("search: ")])
    g_search = (
        g_pick
        if s_pick == s_search
        else pick(rows, [k for k in guards if k.startswith("search: ")])
    )
    history["guards"].update(picked=g_pick, picked_with_search=g_search)
    log.info("tuning guards: picked %s; with search %s", g_pick, g_search)
    return {
        "stages": history,
        "best": " | ".join((p_pick, s_pick, g_pick)),
        "config": guards[g_pick].to_dict(),
        "best_with_search": " | ".join((p_pick, s_search, g_search.removeprefix("search: "))),
        "search_config": guards[g_search].to_dict(),
        "scl": scl_pick,
        "scl_config": priors[scl_pick].to_dict(),
    }


def table4(
    bundle: Path,
    split: Path,
    scl_cfg: ScioSearchConfig,
    search_cfg: ScioSearchConfig,
    boxes: str,
    limit: int | None,
) -> dict[str, Any]:
    """Baseline; +SCL: the best of Φ's priors without search; +SCL+SCO: the best settings that
    search."""
    opts = EvalOptions(boxes=boxes, limit=limit, keep_refinements=True, keep_results=True)
    return evaluate_variants(
        bundle,
        split / "person_keypoints.json",
        split / "images",
        opts,
        {"baseline": None, "+SCL": scl_cfg, "+SCL+SCO": search_cfg},
    )


def correlation(rows: list[dict[str, Any]]) -> dict[str, float]:
    loss = np.array([r["loss_after"] for r in rows])
    acc = np.array([r["accuracy"] for r in rows])

    def rank(v: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(v)).astype(float)

    return {
        "n": float(len(rows)),
        "pearson": float(np.corrcoef(loss, acc)[0, 1]),
        "spearman": float(np.corrcoef(rank(loss), rank(acc))[0, 1]),
    }


def gamma_as_selector(
    bundle: Path,
    split: Path,
    scl_cfg: ScioSearchConfig,
    scl_rows: list[dict[str, Any]],
    limit: int | None,
) -> dict[str, Any]:
    """The smallest search there is: for each distal keypoint, two candidates (the backbone's
    position and the SCL prior's, whose rows Table 4's +SCL evaluation already has), and Γ's
    loss picks one. If Γ cannot pick the better of two positions that are often pixels apart, a
    search steered by it cannot find the best of many close ones."""
    res = evaluate_variants(
        bundle,
        split / "person_keypoints.json",
        split / "images",
        EvalOptions(limit=limit, keep_refinements=True),
        {"backbone": replace(scl_cfg, prior="backbone")},
    )

    def by_key(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
        return {(r["image_id"], r["ann_id"], r["keypoint"]): r for r in rows}

    bb, phi = by_key(res["backbone"]["refinement_rows"]), by_key(scl_rows)
    keys = sorted(set(bb) & set(phi))
    acc_b = np.array([bb[k]["accuracy"] for k in keys])
    acc_p = np.array([phi[k]["accuracy"] for k in keys])
    pick_p = np.array([phi[k]["loss_before"] < bb[k]["loss_before"] for k in keys], dtype=bool)
    differ = np.abs(acc_p - acc_b) > 0.05  # the two positions differ in accuracy
    right = ((acc_p > acc_b) == pick_p)[differ]
    return {
        "prior": scl_cfg.prior,
        "keypoints": len(keys),
        "accuracy_backbone": float(acc_b.mean()),
        "accuracy_scl_prior": float(acc_p.mean()),
        "accuracy_chosen_by_gamma": float(np.where(pick_p, acc_p, acc_b).mean()),
        "accuracy_oracle": float(np.maximum(acc_p, acc_b).mean()),
        "pairs_that_differ": int(differ.sum()),
        "gamma_picks_the_better": float(right.mean()) if len(right) else float("nan"),
    }


def cost(
    bundle: Path,
    split: Path,
    cfg: ScioSearchConfig,
    search_cfg: ScioSearchConfig,
    images: int,
    precision: str = "auto",
) -> dict[str, Any]:
    """Per-person times on this CPU, from warm sessions over the first `images` images: the
    chosen (shipped) settings, the best searching settings, and descent and grid variants.
    `precision`: the backbone graph (auto: as the service runs it on the CPU)."""

    from training.data.coco import CocoKeypoints

    b = load_bundle(bundle)
    pipe = PosePipeline(b, device="cpu", scio_config=cfg, precision=precision)
    coco = CocoKeypoints(split / "person_keypoints.json", b.manifest.spec)
    items = []
    for image_id in coco.image_ids[:images]:
        ps = coco.labelled_persons(image_id)
        if not ps:
            continue
        boxes = xyxy(np.stack([p.bbox_xywh for p in ps]))
        items.append((load_rgb(split / "images", coco.images[image_id]), PoseOptions(boxes=boxes)))
    pipe.estimate_many(items[:2])  # warm-up
    bp = pipe.backbone_pass(items)
    n = len(bp.persons.item)
    reps = 3
    t_bb = min(timed(lambda: pipe.backbone_pass(items)) for _ in range(reps))
    out: dict[str, Any] = {"persons": n, "images": len(items), "precision": pipe.precision}
    out["backbone_ms_per_person"] = 1000 * t_bb / n
    for name, c in (
        ("default", cfg),
        ("search", search_cfg),
        ("descent50", replace(search_cfg, strategy="descent", iterations=50)),
        ("grid", replace(search_cfg, strategy="grid")),
    ):
        t = min(timed(partial(pipe.finish, items, bp, c)) for _ in range(reps))
        t0 = min(
            timed(lambda: pipe.finish([(im, replace(o, refine=False)) for im, o in items], bp))
            for _ in range(reps)
        )
        out[f"sco_{name}_ms_per_person"] = 1000 * (t - t0) / n
    out["sco_over_backbone"] = out["sco_default_ms_per_person"] / out["backbone_ms_per_person"]
    out["search_over_backbone"] = out["sco_search_ms_per_person"] / out["backbone_ms_per_person"]
    searched = sum(len(p.refinements) for r in pipe.finish(items, bp, cfg) for p in r.persons)
    out["searched_keypoints_per_person"] = searched / n
    # batched against one candidate per Γ call, on the same rows (the search result is equal)
    sub = slice(0, min(n, 12))
    verifier = pipe.verifier
    assert verifier is not None, "the bundle has no Γ"
    # every group searched here (no confidence guards), so both sides do the same, real work
    c = replace(search_cfg, strategy="grid", min_confidence=0.0, max_distal_confidence=1.0)

    def run(batched: bool) -> None:
        refine(
            bp.heatmaps[sub],
            bp.features[sub],
            bp.coords[sub],
            bp.scores[sub],
            b.manifest.spec.groups,
            verifier,
            c,
            phi=pipe.predictor,
            sigma=pipe.codec.sigma,
            batched=batched,
        )

    tb = min(timed(lambda: run(True)) for _ in range(reps))
    t1 = timed(lambda: run(False))
    out["batched_speedup"] = t1 / tb
    out["batched_ms"], out["one_at_a_time_ms"] = 1000 * tb, 1000 * t1
    return out


def paper_scale_cost(
    cfg: ScioSearchConfig, search_cfg: ScioSearchConfig, reps: int
) -> dict[str, Any]:
    """The cost ratio at the scale the paper's target was set for: HRNet-W32 at 256x192
    (heatmaps 64x48, 32 feature channels) against the SCIO networks at that size, with the
    cpu-small and the paper widths. Untrained weights: the time does not depend on them. Every
    group of every person is searched (no confidence guard), so this is the most SCIO can cost."""
    import tempfile

    import torch

    from models.keypoints import COCO17
    from models.scio_nets import ScioNet, export_onnx
    from models.zoo import build_backbone, get_config
    from service.runtime import OnnxModel
    from service.scio_onnx import OnnxPredictor, OnnxVerifier
    from training.config import SCIO_PRESETS
    from training.onnx_export import (
        export_backbone,
        fold_sum_batchnorm_file,
        gather_features_by_person_file,
    )
    from training.scio_export import export_phi
    from training.train_scio import net_config

    hw, persons, sigma = (64, 48), 8, 2.0
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    out: dict[str, Any] = {"persons": persons, "heatmap_hw": list(hw)}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        export_backbone(build_backbone(get_config("hrnet_w32")), t / "w32.onnx")
        pose = OnnxModel.load(t / "w32.onnx", "cpu")
        x = rng.standard_normal((persons, 3, 256, 192)).astype(np.float32)
        pose.run(image=x)
        t_bb = min(timed(partial(pose.run, image=x)) for _ in range(reps))
        out["backbone_ms_per_person"] = 1000 * t_bb / persons
        heatmaps = rng.random((persons, 17, *hw), dtype=np.float32)
        feats = rng.standard_normal((persons, 32, *hw)).astype(np.float32)
        coords = np.tile(np.array([hw[1] / 2, hw[0] / 2]), (persons, 17, 1))
        scores = np.ones((persons, 17))
        for preset in ("cpu-small", "paper"):
            net_cfg = net_config(SCIO_PRESETS[preset], feature_channels=32)
            phi_path = export_phi(ScioNet(net_cfg).eval(), t / f"{preset}-phi.onnx", hw)
            ctx, head = t / f"{preset}-ctx.onnx", t / f"{preset}-head.onnx"
            export_onnx(ScioNet(net_cfg).eval(), ctx, head, hw)
            for path in (phi_path, ctx):  # as the bundle's exporter writes them
                fold_sum_batchnorm_file(path)
                gather_features_by_person_file(path)
            verifier = OnnxVerifier(OnnxModel.load(ctx, "cpu"), OnnxModel.load(head, "cpu"))
            predictor = OnnxPredictor(OnnxModel.load(phi_path, "cpu"))
            for name, c in (("chosen", cfg), ("searching", search_cfg)):
                c = replace(c, min_confidence=0.0, max_distal_confidence=1.0)
                run = partial(
                    refine,
                    heatmaps,
                    feats,
                    coords,
                    scores,
                    COCO17.groups,
                    verifier,
                    c,
                    phi=predictor,
                    sigma=sigma,
                )
                run()
                t_s = min(timed(run) for _ in range(reps))
                ms = 1000 * t_s / persons
                out[f"{preset} widths, {name} settings"] = {
                    "ms_per_person": ms,
                    "over_backbone": ms / out["backbone_ms_per_person"],
                }
    return out


def accuracy_vs_cost(
    bundle: Path, split: Path, cfg: ScioSearchConfig, limit: int | None
) -> list[dict[str, Any]]:
    """AP against the number of candidates per group: grids of growing radius and spacing,
    and descent with a growing number of iterations."""
    variants: dict[str, ScioSearchConfig] = {}
    for r, step in ((1.0, 1.0), (2.0, 1.0), (3.0, 1.0), (4.0, 1.0), (2.0, 0.5), (4.0, 0.5)):
        variants[f"grid r{r:g} s{step:g}"] = replace(
            cfg, strategy="grid", radius=r, grid_step=step, unit="px"
        )
    for it in (1, 2, 5, 10, 50):
        variants[f"descent {it}"] = replace(cfg, strategy="descent", iterations=it)
    variants["no search"] = replace(cfg, strategy="descent", iterations=0)  # SCL alone
    res = evaluate_variants(
        bundle,
        split / "person_keypoints.json",
        split / "images",
        EvalOptions(limit=limit),
        {"none": None, **variants},
    )
    rows = []
    from models.scio_search import grid_offsets

    for k, c in variants.items():
        # at most this many Γ head evaluations per group (descent: 8 directions per step)
        cands = (
            len(grid_offsets(c.radius, c.grid_step))
            if c.strategy == "grid"
            else 1 + 8 * c.iterations
        )
        rows.append(
            {
                "variant": k,
                "candidates_max": cands,
                "AP": res[k]["stats"]["AP"],
                "seconds": res[k]["seconds"] - 0.0,
            }
        )
    rows.append(
        {
            "variant": "none",
            "candidates_max": 0,
            "AP": res["none"]["stats"]["AP"],
            "seconds": res["none"]["seconds"],
        }
    )
    return rows


def plots(report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = [r["loss_after"] for r in rows]
    acc = [r["accuracy"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(loss, acc, s=4, alpha=0.3)
    c = report["fig6b"]
    ax.set_title(
        f"Self-constraint loss vs keypoint accuracy (n={int(c['n'])}, r={c['pearson']:.2f})"
    )
    ax.set_xlabel("self-constraint loss after refinement")
    ax.set_ylabel("keypoint accuracy (OKS term)")
    fig.tight_layout()
    fig.savefig(RESULTS / "scio_loss_vs_accuracy.png", dpi=110)
    plt.close(fig)

    rows_c = report["accuracy_vs_cost"]
    base = next(r for r in rows_c if r["variant"] == "none")
    scl = next(r for r in rows_c if r["variant"] == "no search")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, key, label in (
        (axes[0], "candidates_max", "Γ evaluations per group, at most (log scale)"),
        (axes[1], "seconds", "evaluation seconds (backbone + SCIO) on the tuning split"),
    ):
        for kind, marker in (("grid", "o"), ("descent", "s")):
            pts = [r for r in rows_c if r["variant"].startswith(kind)]
            ax.plot([p[key] for p in pts], [p["AP"] for p in pts], marker=marker, label=kind)
            for p in pts:
                ax.annotate(p["variant"].split(" ", 1)[1], (p[key], p["AP"]), fontsize=7)
        ax.axhline(base["AP"], color="grey", ls="--", label="baseline (no SCIO)")
        ax.axhline(scl["AP"], color="green", ls=":", label="SCL alone (1 evaluation)")
        ax.set_xlabel(label)
        if key == "candidates_max":
            ax.set_xscale("log")
    axes[0].set_ylabel("AP")
    axes[0].legend()
    fig.suptitle("SCO accuracy against cost (tuning split)")
    fig.tight_layout()
    fig.savefig(RESULTS / "scio_accuracy_vs_cost.png", dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "demo")
    ap.add_argument(
        "--proximal-bundle", type=Path, help="the same backbone with proximal-group Φ/Γ"
    )
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument("--images", type=int, default=400, help="images per split")
    ap.add_argument("--quick", action="store_true", help="a smoke run on few images")
    ap.add_argument(
        "--tune-only",
        type=Path,
        metavar="FILE",
        help="only choose the settings on the tuning split; write them to FILE (for export)",
    )
    ap.add_argument(
        "--cost-only",
        action="store_true",
        help="re-measure only the cost sections of the last report (its settings, its splits)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.cost_only:
        return cost_only(args)
    limit = 20 if args.quick else None
    tune_split = make_split(args.work, "tune", args.images)
    val_split = None if args.tune_only else make_split(args.work, "val", args.images)
    bundle = load_bundle(args.bundle)
    pipe = PosePipeline(bundle, device="cpu")
    base = pipe.scio_config

    t0 = time.perf_counter()
    tuning = tune(args.bundle, tune_split, base, pipe.codec.sigma, limit)
    chosen = ScioSearchConfig.from_dict(tuning["config"])
    searching = ScioSearchConfig.from_dict(tuning["search_config"])
    scl = ScioSearchConfig.from_dict(tuning["scl_config"])
    log.info("chosen on the tuning split: %s", tuning["best"])
    log.info("best with search: %s", tuning["best_with_search"])
    if args.tune_only:
        args.tune_only.parent.mkdir(parents=True, exist_ok=True)
        args.tune_only.write_text(json.dumps(tuning["config"], indent=2) + "\n")
        args.tune_only.with_suffix(".tuning.json").write_text(json.dumps(tuning, indent=2) + "\n")
        return 0
    report: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python", *sys.argv]),
        "bundle": str(args.bundle),
        "flip_test": bundle.manifest.pose.flip_test,
        "tuning": tuning,
    }
    assert val_split is not None
    t4 = {}
    for boxes in ("gt", str(val_split / "detections.json")):
        key = "gt boxes" if boxes == "gt" else "detections"
        res = table4(args.bundle, val_split, scl, searching, boxes, limit)
        t4[key] = {row: {k: r["stats"][k] for k in TABLE4} for row, r in res.items()}
        results = {row: r.pop("coco_results") for row, r in res.items()}
        if boxes == "gt":
            image_ids = res["baseline"]["image_ids"]
            ann = val_split / "person_keypoints.json"
            # paired over images: +SCL+SCO and baseline against +SCL
            report["bootstrap_gt"] = bootstrap_ap(
                ann,
                {k: results[k] for k in ("+SCL", "+SCL+SCO", "baseline")},
                bundle.manifest.spec,
                image_ids,
                samples=1000,
            )
            names = res["baseline"]["distal_keypoints"]
            report["table5"] = {
                row: {n: res[row]["keypoint_accuracy"][n] for n in names}
                for row in ("baseline", "+SCL", "+SCL+SCO")
            }
            rows = res["+SCL+SCO"].pop("refinement_rows")
            scl_rows = res["+SCL"].pop("refinement_rows")
            report["fig6b"] = correlation(rows)
            report["scio_summary"] = res["+SCL+SCO"]["scio"]
    report["table4"] = t4
    report["gamma_as_selector"] = gamma_as_selector(args.bundle, val_split, scl, scl_rows, limit)
    report["cost"] = cost(args.bundle, val_split, chosen, searching, 40 if not args.quick else 6)
    report["paper_scale_cost"] = paper_scale_cost(chosen, searching, 2 if args.quick else 5)
    report["accuracy_vs_cost"] = accuracy_vs_cost(args.bundle, tune_split, searching, limit)
    if args.proximal_bundle:
        alt = table4(args.proximal_bundle, val_split, scl, searching, "gt", limit)
        report["proximal_groups"] = {
            row: {k: r["stats"][k] for k in TABLE4} for row, r in alt.items()
        }
    report["targets"] = targets(report)
    report["seconds"] = time.perf_counter() - t0
    write_results("scio_ablation", report, markdown(report))
    plots(report, rows)
    return 0


def cost_only(args: argparse.Namespace) -> int:
    """The cost sections of the last report measured again (after a speed-up, or on a quiet
    machine), with the settings that report chose; the accuracy sections stay as they were."""
    path = RESULTS / "scio_ablation.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run the whole ablation first")
    report = json.loads(path.read_text())
    chosen = ScioSearchConfig.from_dict(report["tuning"]["config"])
    searching = ScioSearchConfig.from_dict(report["tuning"]["search_config"])
    val_split = make_split(args.work, "val", args.images)
    report["cost"] = cost(args.bundle, val_split, chosen, searching, 6 if args.quick else 40)
    report["paper_scale_cost"] = paper_scale_cost(chosen, searching, 2 if args.quick else 5)
    report["cost_measured"] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "code": git_commit(),
    }
    report["targets"] = targets(report)
    write_results("scio_ablation", report, markdown(report))
    return 0


def targets(r: dict[str, Any]) -> dict[str, Any]:
    g = r["table4"]["gt boxes"]
    t5 = r["table5"]

    def up(row: str) -> bool:
        return all(t5[row][k] > t5["baseline"][k] for k in t5["baseline"])

    b = r["bootstrap_gt"]["variants"]["+SCL+SCO"]
    return {
        "AP(+SCL) > AP(Baseline), GT boxes": g["+SCL"]["AP"] > g["baseline"]["AP"],
        "AP(+SCL+SCO) > AP(+SCL), GT boxes": g["+SCL+SCO"]["AP"] > g["+SCL"]["AP"],
        "AP(+SCL+SCO) - AP(+SCL) >= +1.0 AP points, GT boxes": g["+SCL+SCO"]["AP"] - g["+SCL"]["AP"]
        >= 0.01,
        "its 95% bootstrap interval over images above 0": b["minus_+SCL_95"][0] > 0,
        "every distal keypoint's accuracy improved by +SCL": up("+SCL"),
        "every distal keypoint's accuracy improved by +SCL+SCO": up("+SCL+SCO"),
        "SCIO <= 25% of backbone time per person, chosen settings": r["cost"]["sco_over_backbone"]
        <= 0.25,
        "SCIO <= 25% of backbone time per person, best searching settings": r["cost"][
            "search_over_backbone"
        ]
        <= 0.25,
        "batching >= 10x faster than one candidate per call": r["cost"]["batched_speedup"] >= 10,
        "SCIO <= 25% of HRNet-W32's time per person at paper scale, cpu-small widths, chosen "
        "settings": r["paper_scale_cost"]["cpu-small widths, chosen settings"]["over_backbone"]
        <= 0.25,
    }


def _ap_table(rows: dict[str, dict[str, float]]) -> list[str]:
    """Table 4's columns, one row per variant, in percent."""
    head = ["| | " + " | ".join(TABLE4) + " |", "|---|" + "---|" * len(TABLE4)]
    return head + [
        f"| {row} | " + " | ".join(f"{v[k] * 100:.1f}" for k in TABLE4) + " |"
        for row, v in rows.items()
    ]


def markdown(r: dict[str, Any]) -> str:
    L = [
        *md_header("SCIO ablation and cost", r),
        f"Bundle: `{r['bundle']}`; settings chosen on the tuning split (synthetic seed 2001): "
        f"`{r['tuning']['best']}` (what a bundle ships); the best settings that search: "
        f"`{r['tuning']['best_with_search']}` (the +SCL+SCO row); results on the validation "
        f"split (seed 3001). Flip test {'on' if r.get('flip_test') else 'off'} (the bundle's "
        "default) in every row.",
        "",
    ]
    for key, t in r["table4"].items():
        L += [f"## Table 4 ({key})", "", *_ap_table(t), ""]
    bs = r["bootstrap_gt"]
    sco, base = bs["variants"]["+SCL+SCO"], bs["variants"]["baseline"]
    L += [
        f"Paired bootstrap over the {bs['images']} validation images ({bs['samples']} "
        "resamples, GT boxes), in AP points: AP(+SCL+SCO) - AP(+SCL) "
        f"{100 * sco['minus_+SCL_mean']:+.2f}, 95% interval "
        f"[{100 * sco['minus_+SCL_95'][0]:+.2f}, {100 * sco['minus_+SCL_95'][1]:+.2f}], above 0 "
        f"in {sco['minus_+SCL_share_above_0']:.0%} of resamples; AP(+SCL) - AP(baseline) "
        f"{-100 * base['minus_+SCL_mean']:+.2f}, 95% interval "
        f"[{-100 * base['minus_+SCL_95'][1]:+.2f}, {-100 * base['minus_+SCL_95'][0]:+.2f}].",
        "",
    ]
    names = list(r["table5"]["baseline"])
    L += [
        "## Table 5: distal keypoint accuracy (GT boxes)",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    L += [
        f"| {row} | " + " | ".join(f"{v[n]:.4f}" for n in names) + " |"
        for row, v in r["table5"].items()
    ]
    c = r["fig6b"]
    L += [
        "",
        f"## Fig. 6b: loss vs accuracy over {int(c['n'])} refined keypoints",
        "",
        f"Pearson {c['pearson']:.3f}, Spearman {c['spearman']:.3f} (the paper: -0.85). "
        "Plot: `scio_loss_vs_accuracy.png`.",
        "",
    ]
    g = r["gamma_as_selector"]
    L += [
        "## Γ as a selector between two candidates",
        "",
        f"Over {g['keypoints']} distal keypoints, mean accuracy (OKS term) at the backbone's "
        f"position {g['accuracy_backbone']:.4f}, at the SCL prior's ({g['prior']}) "
        f"{g['accuracy_scl_prior']:.4f}, at the one of "
        f"the two with the lower self-constraint loss {g['accuracy_chosen_by_gamma']:.4f}, at "
        f"the better one (oracle) {g['accuracy_oracle']:.4f}. Where the two differ by more "
        f"than 0.05 ({g['pairs_that_differ']} keypoints) Γ picks the better one "
        f"{g['gamma_picks_the_better']:.0%} of the time (50% is chance).",
        "",
    ]
    k = r["cost"]
    again = r.get("cost_measured")
    L += [
        "## Cost on this CPU",
        "",
        *(
            [
                f"Measured again by `{again['command']}` (code at {again['code']}, "
                f"{again['machine']}), with the settings above; the accuracy sections are "
                "from the whole run.",
                "",
            ]
            if again
            else []
        ),
        f"- backbone ({k.get('precision', 'fp32')}, as the service runs it on the CPU) "
        f"{k['backbone_ms_per_person']:.2f} ms/person; SCIO at the chosen settings "
        f"{k['sco_default_ms_per_person']:.2f} ms/person, ratio {k['sco_over_backbone']:.2f} "
        f"({k['searched_keypoints_per_person']:.2f} distal keypoints refined per person)",
        f"- SCIO at the best searching settings {k['sco_search_ms_per_person']:.2f} ms/person, "
        f"ratio {k['search_over_backbone']:.2f}",
        f"- descent with 50 steps {k['sco_descent50_ms_per_person']:.2f} ms/person, "
        f"grid {k['sco_grid_ms_per_person']:.2f} ms/person",
        f"- batched Γ calls {k['batched_ms']:.1f} ms vs one candidate per call "
        f"{k['one_at_a_time_ms']:.1f} ms: {k['batched_speedup']:.1f}x",
        "- accuracy against cost: `scio_accuracy_vs_cost.png`",
        "",
    ]
    ps = r["paper_scale_cost"]
    L += [
        "At the scale the paper's target was set for (HRNet-W32 256x192, heatmaps 64x48, "
        f"{ps['persons']} persons per call, untrained weights, every group of every person "
        f"refined): backbone {ps['backbone_ms_per_person']:.1f} ms/person; SCIO:",
        "",
    ]
    L += [
        f"- {k}: {v['ms_per_person']:.2f} ms/person, ratio {v['over_backbone']:.2f}"
        for k, v in ps.items()
        if isinstance(v, dict)
    ]
    L.append("")
    if "proximal_groups" in r:
        L += [
            "## Other group assignment (A = the torso joint)",
            "",
            *_ap_table(r["proximal_groups"]),
            "",
        ]
    L += md_targets(r["targets"])
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
