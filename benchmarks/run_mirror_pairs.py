"""Left/right pairs of training runs side by side: does a run's model tell the sides apart?

    python benchmarks/run_mirror_pairs.py --run RUN_A --run RUN_B ... --name NAME

For each run folder (`scio-pose train backbone --out RUN`): its finished model (`final.pt`, else
`last.pt`) on the run's own validation persons (ground-truth boxes, no augmentation), per
left/right keypoint pair the median over persons of the correlation between the two heatmaps
(models.codec.map_correlation; 1: the two sides are one map, as the shipped backbone's ankles,
benchmarks/results/mirror_pairs.md). Runs trained with the auxiliary limb loss
(`limb_loss_weight`) also get the same measure for their limb head's mirror-image limb maps (its
weights from `train_state.pt`). Beside them: the run's last validation AP and the most alike pair
at every report (`val_lr_corr` in log.jsonl). Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, md_header, read_run, write_results  # noqa: E402


def _pair_name(names: tuple[str, ...], edge: tuple[int, ...]) -> str:
    return "-".join(names[i].removeprefix("left_").removeprefix("right_") for i in edge)


def measure(run: Path, persons: int) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader, SequentialSampler

    from models.checkpoint import load_model
    from models.codec import pair_correlations
    from models.keypoints import get_spec
    from training.config import BackboneTrainConfig, from_dict
    from training.data.coco import CocoKeypoints
    from training.data.sources import resolve_data
    from training.data.topdown import TopDownDataset
    from training.train_backbone import LimbHead, codec_for, normalization_of

    rows, points, plain_cfg = read_run(run)
    cfg = from_dict(BackboneTrainConfig, plain_cfg)
    weights = run / "final.pt" if (run / "final.pt").exists() else run / "last.pt"
    model = load_model(weights).eval()
    spec = get_spec(cfg.data.spec)
    state = torch.load(run / "train_state.pt", map_location="cpu", weights_only=False)
    edges = spec.sided_edges
    head = None
    if "limb_head" in state:
        head = LimbHead(model, len(edges))
        head.load_state_dict(state["limb_head"])
        head.eval()
    paths = resolve_data(cfg.data, run / "data", is_main=False)
    if paths.val_ann is None or paths.val_images is None:
        raise SystemExit(f"{run}: the run has no validation split")
    val = TopDownDataset(
        CocoKeypoints(paths.val_ann, spec),
        paths.val_images,
        codec_for(cfg),
        normalization_of(model),
        limbs=edges if head is not None else (),
    )
    flip = spec.flip_index
    mirrored = {frozenset(e): k for k, e in enumerate(edges)}
    limb_pairs = []  # (left edge, its mirror image), each pair once
    for k, (i, j) in enumerate(edges):
        m = mirrored[frozenset((int(flip[i]), int(flip[j])))]
        if k < m:
            limb_pairs.append((k, m))
    kp_corr: list[list[np.ndarray]] = [[] for _ in spec.flip_pairs]
    limb_corr: list[list[np.ndarray]] = [[] for _ in limb_pairs]
    seen = 0
    loader = DataLoader(val, batch_size=32, sampler=SequentialSampler(val))
    with torch.no_grad():
        for batch in loader:
            heatmaps, features = model(batch["image"])
            hm = heatmaps.float().numpy()
            labelled = batch["target_weight"].numpy() > 0
            for n, corr in enumerate(pair_correlations(hm, labelled, spec.flip_pairs)):
                kp_corr[n].append(corr)
            if head is not None:
                maps = head(features).float().numpy()
                limb_ok = batch["limb_weight"].numpy() > 0
                for n, corr in enumerate(pair_correlations(maps, limb_ok, limb_pairs)):
                    limb_corr[n].append(corr)
            seen += len(hm)
            if seen >= persons:
                break

    def median(parts: list[np.ndarray]) -> float | None:
        v = np.concatenate(parts) if parts else np.zeros(0)
        return round(float(np.median(v)), 4) if len(v) else None

    names = spec.keypoint_names
    return {
        "run": str(run),
        "weights": weights.name,
        "seed": cfg.seed,
        "limb_loss_weight": cfg.limb_loss_weight,
        "samples": rows[-1].get("samples"),
        "val_AP": points[-1]["val_AP"],
        "persons": seen,
        "keypoint_pairs": {
            names[left].removeprefix("left_"): median(kp_corr[n])
            for n, (left, _) in enumerate(spec.flip_pairs)
        },
        "limb_pairs": {
            _pair_name(names, edges[a]): median(limb_corr[n]) for n, (a, _) in enumerate(limb_pairs)
        }
        if head is not None
        else {},
        "most_alike_by_report": [
            {"samples": r["samples"], "pair": r["val_lr_corr_pair"], "corr": r["val_lr_corr"]}
            for r in points
            if "val_lr_corr" in r
        ],
    }


def _short(run: str) -> str:
    """The run folder's last two parts (runs/limbs/s0 -> limbs/s0)."""
    return "/".join(Path(run).parts[-2:])


def markdown(report: dict[str, Any]) -> str:
    runs = report["runs"]
    lines = md_header("Left/right pairs of training runs", report)
    lines += [
        "",
        "Median over the run's validation persons of the correlation between a left/right pair's "
        "two heatmaps (1: one map for both sides). Limb maps: the auxiliary limb head's "
        "mirror-image limbs, for runs trained with it.",
        "",
    ]
    kp_names = list(runs[0]["keypoint_pairs"])
    head = ["run", "limb weight", "samples", "val AP", *kp_names]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        cells = [_short(r["run"]), f"{r['limb_loss_weight']:g}", str(r["samples"])]
        cells.append(f"{100 * r['val_AP']:.1f}")
        cells += [f"{r['keypoint_pairs'][k]:.3f}" for k in kp_names]
        lines.append("| " + " | ".join(cells) + " |")
    with_limbs = [r for r in runs if r["limb_pairs"]]
    if with_limbs:
        limb_names = list(with_limbs[0]["limb_pairs"])
        lines += ["", "Limb maps (left against right):", ""]
        lines += ["| run | " + " | ".join(limb_names) + " |", "|" + "---|" * (len(limb_names) + 1)]
        for r in with_limbs:
            vals = " | ".join(f"{r['limb_pairs'][k]:.3f}" for k in limb_names)
            lines.append(f"| {_short(r['run'])} | {vals} |")
    lines += ["", "Most alike pair at each report (the training log's `val_lr_corr`):", ""]
    for r in runs:
        seq = ", ".join(
            f"{round(p['samples'] / 1000)}k {p['pair']} {p['corr']:.3f}"
            for p in r["most_alike_by_report"]
        )
        lines.append(f"- {_short(r['run'])}: {seq or '(not logged)'}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, action="append", required=True, help="a run folder")
    ap.add_argument("--name", default="run_mirror_pairs")
    ap.add_argument(
        "--persons", type=int, default=400, help="validation persons per run (default 400)"
    )
    args = ap.parse_args()
    for run in args.run:
        if not (run / "log.jsonl").is_file() or not (run / "train_state.pt").is_file():
            ap.error(f"{run} is not a backbone run folder (no log.jsonl and train_state.pt)")
    import torch

    torch.set_num_threads(1)
    report: dict[str, Any] = {
        "command": "python benchmarks/run_mirror_pairs.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "runs": [measure(run, args.persons) for run in args.run],
    }
    write_results(args.name, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
