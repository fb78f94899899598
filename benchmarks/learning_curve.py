"""Held-out AP against samples seen, from a backbone run's log (`log.jsonl`).

    python benchmarks/learning_curve.py --run RUN_DIR --name learning_curve_cpu_testbed

The run's own validation (ground-truth boxes, argmax + quarter-pixel decoding, no flip, one
prediction per box) at each report; `scio-pose evaluate` gives the pipeline's numbers for the
finished model. A run trained with `ema_decay` also has its moving average of the weights scored
on the same images at each report: both curves are drawn and tabled. Writes
benchmarks/results/NAME.{png,json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import RESULTS, machine, md_header, read_run, write_results  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="backbone run folder")
    ap.add_argument("--name", default="learning_curve")
    args = ap.parse_args()
    rows, points, cfg = read_run(args.run)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["samples"] / 1000 for r in points]
    ema = any("val_ema_AP" in r for r in points)
    curves = [("val_AP", "o-", "AP"), ("val_AP50", "s--", "AP50")]
    if ema:
        curves += [
            ("val_ema_AP", "o-", "AP, moving average"),
            ("val_ema_AP50", "s--", "AP50, moving average"),
        ]
    for key, style, label in curves:
        ys = [100 * r[key] if key in r else float("nan") for r in points]
        ax.plot(x, ys, style, label=label, color="tab:orange" if "ema" in key else "tab:blue")
    ax.set_xlabel("training samples seen (thousands)")
    ax.set_ylabel("held-out AP (GT boxes)")
    ax.set_title(f"{cfg['arch']} {cfg['input_hw'][0]}x{cfg['input_hw'][1]}")
    ax.grid(alpha=0.3)
    if any("lr" in r for r in points):  # the schedule: drops and restarts (extended runs)
        lr_ax = ax.twinx()
        lr_ax.step(x, [r.get("lr", float("nan")) for r in points], "k:", where="pre", lw=1)
        lr_ax.set_yscale("log")
        lr_ax.set_ylabel("learning rate (dotted)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / f"{args.name}.png", dpi=110)
    train_s = rows[-1].get("train_seconds_total", 0.0)
    report = {
        "command": "python benchmarks/learning_curve.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "arch": cfg["arch"],
        "input_hw": cfg["input_hw"],
        "train_samples": cfg.get("train_samples"),
        "train_seconds": train_s,
        "points": [
            {
                k: r.get(k)
                for k in (
                    "samples",
                    "val_AP",
                    "val_AP50",
                    "val_acc",
                    "samples_per_s",
                    "lr",
                    "val_lr_corr",
                    "val_lr_corr_pair",
                    "val_ema_AP",
                    "val_ema_AP50",
                )
            }
            for r in points
        ],
    }
    lines = md_header(f"Learning curve: {cfg['arch']}", report)
    lines += [
        f"Training wall time {train_s / 60:.1f} min (steps only, all sittings). "
        "Held-out split: the run's validation images, ground-truth boxes, no flip.",
        "",
        f"![learning curve]({args.name}.png)",
        "",
        "| samples | AP | AP50 | PCK@0.5 | samples/s | learning rate |",
        "|---|---|---|---|---|---|",
    ]
    if ema:
        lines[-2] += " AP, moving average | AP50, moving average |"
        lines[-1] += "---|---|"
    # runs logged since stop 36 also say which left/right pair's heatmaps are most alike (near
    # 1: the network no longer tells those two sides apart; benchmarks/mirror_pairs.py)
    pairs = any("val_lr_corr" in r for r in points)
    if pairs:
        lines[-2] += " most alike left/right pair (corr.) |"
        lines[-1] += "---|"
    for r in points:
        line = (
            f"| {r['samples']} | {100 * r['val_AP']:.1f} | {100 * r['val_AP50']:.1f} | "
            f"{r['val_acc']:.3f} | {r['samples_per_s']:.1f} | {r.get('lr', float('nan')):.2g} |"
        )
        if ema:
            line += "".join(
                f" {100 * r[k]:.1f} |" if k in r else " – |" for k in ("val_ema_AP", "val_ema_AP50")
            )
        if pairs:
            corr = r.get("val_lr_corr")
            line += f" {r['val_lr_corr_pair']} ({corr:.3f}) |" if corr is not None else " – |"
        lines.append(line)
    write_results(args.name, report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
