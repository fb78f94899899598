"""Backbone runs compared at equal training wall time (issue 12: 128x96 + deconvolution against
256x192 for the same 64x48 heatmaps), or at equal samples (fresh data against a small pool seen
over and over), from the runs' own logs.

    scio-pose train backbone --config benchmarks/configs/equal_time_128x96_deconv.toml --out A
    scio-pose train backbone --config benchmarks/configs/equal_time_256x192.toml --out B
    python benchmarks/equal_wall_time.py --run A --run B --name testbed_equal_wall_time

    scio-pose train backbone --config benchmarks/configs/fresh_vs_repeat_pool1000.toml --out C
    scio-pose train backbone --config benchmarks/configs/fresh_vs_repeat_pool30000.toml --out D
    python benchmarks/equal_wall_time.py --run C --run D --by samples --name testbed_fresh_vs_repeat

Each run's held-out points (its validation images, ground-truth boxes, no flip) against training
seconds (`--by time`) or samples seen (`--by samples`), and its throughput. For `--by time` run
them one after the other on an otherwise idle machine: the comparison is only as fair as their
wall times are; at equal samples the load does not matter. Writes
benchmarks/results/NAME.{png,json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import RESULTS, machine, md_header, read_run, write_results  # noqa: E402


def load_run(run: Path) -> dict[str, Any]:
    _, points, cfg = read_run(run)
    return {
        "run": str(run),
        "arch": cfg["arch"],
        "input_hw": cfg["input_hw"],
        "train_samples": cfg.get("train_samples"),
        "train_pool_images": (cfg["data"].get("synthetic") or {}).get("train_images"),
        "cpu_bf16": bool(cfg.get("cpu_bf16")),
        "channels_last": bool(cfg.get("channels_last")),
        "seed": cfg.get("seed", 0),
        "points": [
            {
                k: r.get(k)
                for k in (
                    "samples",
                    "train_seconds_total",
                    "val_AP",
                    "val_AP50",
                    "val_acc",
                    "samples_per_s",
                )
            }
            for r in points
        ],
    }


def label(r: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """Architecture and input; the training pool, precision, memory layout and seed too where
    the runs differ in them."""

    def differ(key: str) -> bool:
        return len({str(x[key]) for x in runs}) > 1

    out = f"{r['arch']} {r['input_hw'][0]}x{r['input_hw'][1]}"
    if differ("train_pool_images"):
        out += f", pool of {r['train_pool_images']} images"
    if differ("cpu_bf16"):
        out += ", bf16 autocast" if r["cpu_bf16"] else ", fp32"
    if differ("channels_last"):
        out += ", channels-last" if r["channels_last"] else ", contiguous"
    if differ("seed"):
        out += f", seed {r['seed']}"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, action="append", required=True, help="run folder")
    ap.add_argument("--name", default="equal_wall_time")
    ap.add_argument(
        "--by", choices=["time", "samples"], default="time", help="what the runs are equal in"
    )
    args = ap.parse_args()
    runs = [load_run(r) for r in args.run]
    by_time = args.by == "time"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in runs:
        pts = r["points"]
        t = [p["train_seconds_total"] / 60 if by_time else p["samples"] / 1000 for p in pts]
        ax1.plot(t, [100 * p["val_AP"] for p in pts], "o-", label=label(r, runs))
        ax2.plot(t, [p["val_acc"] for p in pts], "o-", label=label(r, runs))
    for ax, what in ((ax1, "held-out AP (GT boxes)"), (ax2, "held-out PCK@0.5")):
        ax.set_xlabel("training wall time (min)" if by_time else "samples seen (thousands)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / f"{args.name}.png", dpi=110)
    report: dict[str, Any] = {
        "command": "python benchmarks/equal_wall_time.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "runs": runs,
    }
    title = "training wall time" if by_time else "samples seen"
    lines = md_header(f"Backbones at equal {title}", report)
    lines += [
        "Held-out split: each run's validation images, ground-truth boxes, no flip. Wall time: "
        "training steps only (validation and data generation excluded).",
        "",
        f"![AP and PCK against {title}]({args.name}.png)",
        "",
        "| run | samples | training min | AP | AP50 | PCK@0.5 | samples/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        for p in r["points"]:
            lines.append(
                f"| {label(r, runs)} | {p['samples']} | {p['train_seconds_total'] / 60:.1f} | "
                f"{100 * p['val_AP']:.2f} | {100 * p['val_AP50']:.1f} | {p['val_acc']:.3f} | "
                f"{p['samples_per_s']:.1f} |"
            )
    final = [r["points"][-1] for r in runs]
    lines += [
        "",
        "At the end of each schedule: "
        + "; ".join(
            f"{label(r, runs)} AP {100 * p['val_AP']:.2f}, PCK {p['val_acc']:.3f} after "
            f"{p['train_seconds_total'] / 60:.1f} min ({p['samples']} samples, "
            f"{p['samples_per_s']:.1f} samples/s)"
            for r, p in zip(runs, final, strict=True)
        )
        + ".",
    ]
    write_results(args.name, report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
