"""Where a bundle's AP50 goes on a split (GT boxes): which people its answers miss (OKS < 0.5) by
visible keypoints and by height, and how much better ranking could buy: AP and AP50 with the
answers as scored, with each answer's true OKS as its score (the most any person score could
give), and with a ridge regression of OKS on pose features fitted on the tuning split (seed 2001)
and applied to the split (a learned rescoring, as some bottom-up methods use).

    python benchmarks/ap50_misses.py --bundle bundles/demo [--split val] [--name NAME]

The split's answers come from `scio-pose evaluate`'s pipeline (the bundle's defaults, GT boxes);
the OKS of an answer is pycocotools' against the person it overlaps most. Writes
benchmarks/results/NAME.{json,md} (default ap50_misses).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import git_commit, machine, md_header, write_results  # noqa: E402
from benchmarks.scio_ablation import make_split  # noqa: E402
from training.evaluate import keypoint_eval  # noqa: E402

RIDGE = 100.0  # the regression's L2 weight (standardised features)
VISIBLE_BINS = ((0, 4, "0-4"), (5, 8, "5-8"), (9, 12, "9-12"), (13, 17, "13-17"))
HEIGHT_BINS = ((0, 32, "0-32"), (32, 64, "32-64"), (64, 128, "64-128"), (128, 1e9, "128+"))


def answer_oks(ev: Any, rows: list[dict[str, Any]]) -> np.ndarray:
    """Each answer's OKS with the person it overlaps most (pycocotools' matrix, whose rows are an
    image's answers in its score order)."""
    out = np.zeros(len(rows))
    by_image: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_image.setdefault(r["image_id"], []).append(i)
    for image_id, idx in by_image.items():
        m = ev.ious.get((image_id, 1))
        if m is None or len(m) == 0:
            continue
        order = [idx[j] for j in np.argsort([-rows[i]["score"] for i in idx], kind="mergesort")]
        for k, i in enumerate(order[: m.shape[0]]):
            out[i] = float(np.max(m[k]))
    return out


def person_oks(ev: Any) -> dict[int, float]:
    """Each labelled person's best OKS over the answers in its image."""
    out: dict[int, float] = {}
    for (image_id, _), m in ev.ious.items():
        gts = ev._gts[(image_id, 1)]
        for j, g in enumerate(gts):
            out[g["id"]] = float(np.max(m[:, j])) if len(m) else 0.0
    return out


def features(rows: list[dict[str, Any]]) -> np.ndarray:
    """Pose features of each answer: its keypoint scores as given and sorted, the log of its box
    area, its score, and the mean and share of its keypoint scores above 0.2."""
    x = []
    for r in rows:
        s = np.asarray(r["keypoints"], dtype=np.float64).reshape(-1, 3)[:, 2]
        w, h = r["bbox"][2:]
        above = s > 0.2
        x.append(
            np.concatenate(
                [
                    s,
                    np.sort(s),
                    [
                        np.log(max(w * h, 1.0)),
                        r["score"],
                        s.mean(),
                        s[above].mean() if above.any() else 0.0,
                        above.mean(),
                    ],
                ]
            )
        )
    return np.asarray(x)


def answers(bundle: Path, split: Path) -> list[dict[str, Any]]:
    from training.evaluate import EvalOptions, evaluate

    opts = EvalOptions(keep_results=True)
    rows: list[dict[str, Any]] = evaluate(
        bundle, split / "person_keypoints.json", split / "images", opts
    )["coco_results"]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "demo")
    ap.add_argument("--split", default="val", help="val (seed 3001) or tune (seed 2001)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument("--name", default="ap50_misses")
    args = ap.parse_args()
    from models.bundle import load_bundle

    sigmas = load_bundle(args.bundle).manifest.spec.sigmas_array
    tune = make_split(args.work, "tune", 400)
    split = make_split(args.work, args.split, 400)
    ann = split / "person_keypoints.json"
    rows = answers(args.bundle, split)
    ev = keypoint_eval(ann, rows, sigmas)
    oks = answer_oks(ev, rows)
    oracle = keypoint_eval(ann, [dict(r, score=float(o)) for r, o in zip(rows, oks, strict=True)],
                       sigmas)  # fmt: skip
    # the ridge rescoring, fitted on the tuning split's answers
    t_rows = rows if split == tune else answers(args.bundle, tune)
    t_oks = answer_oks(keypoint_eval(tune / "person_keypoints.json", t_rows, sigmas), t_rows)
    xt, xs = features(t_rows), features(rows)
    mu, sd = xt.mean(0), xt.std(0) + 1e-9
    xt, xs = np.c_[np.ones(len(xt)), (xt - mu) / sd], np.c_[np.ones(len(xs)), (xs - mu) / sd]
    w = np.linalg.solve(xt.T @ xt + RIDGE * np.eye(xt.shape[1]), xt.T @ t_oks)
    pred = np.clip(xs @ w, 1e-3, 1.0)
    ridge = keypoint_eval(ann, [dict(r, score=float(p)) for r, p in zip(rows, pred, strict=True)],
                      sigmas)  # fmt: skip

    best = person_oks(ev)
    people = [a for a in ev.cocoGt.dataset["annotations"] if a.get("num_keypoints", 0) > 0]

    def table(key: Any, bins: tuple[tuple[float, float, str], ...]) -> list[dict[str, Any]]:
        out = []
        for lo, hi, label in bins:
            group = [a for a in people if lo <= key(a) <= hi]
            ok = [best.get(a["id"], 0.0) >= 0.5 for a in group]
            out.append({"bin": label, "people": len(group), "reached": float(np.mean(ok)) if ok
                        else 0.0, "missed": int(len(ok) - sum(ok))})  # fmt: skip
        return out

    def visible(a: dict[str, Any]) -> int:
        return int(sum(v == 2 for v in a["keypoints"][2::3]))

    by_visible = table(visible, VISIBLE_BINS)
    by_height = table(lambda a: a["bbox"][3] - 1e-9, HEIGHT_BINS)
    stats = {
        "as scored": ev.stats[:2].tolist(),
        "true OKS as the score": oracle.stats[:2].tolist(),
        "ridge rescoring (tuning split)": ridge.stats[:2].tolist(),
    }
    missed = sum(r["missed"] for r in by_visible)
    bundle_name = args.bundle.relative_to(ROOT) if args.bundle.is_relative_to(ROOT) else args.bundle
    report: dict[str, Any] = {
        "command": "python benchmarks/ap50_misses.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "code": git_commit(),
        "bundle": str(bundle_name),
        "split": str(split),
        "people": len(people),
        "missed": missed,
        "ap_ap50": stats,
        "by_visible": by_visible,
        "by_height": by_height,
    }
    lines = md_header(f"Where AP50 goes ({bundle_name}, {split.name})", report)
    lines += [
        "",
        f"{len(people)} labelled people; GT boxes, the bundle's defaults. Reached: the share whose "
        f"best answer has OKS >= 0.5; {missed} people do not.",
        "",
        "| people by visible keypoints (v = 2) | people | reached | missed |",
        "|---|---|---|---|",
        *[
            f"| {r['bin']} | {r['people']} | {r['reached']:.3f} | {r['missed']} |"
            for r in by_visible
        ],
        "",
        "| people by box height (px) | people | reached | missed |",
        "|---|---|---|---|",
        *[
            f"| {r['bin']} | {r['people']} | {r['reached']:.3f} | {r['missed']} |"
            for r in by_height
        ],
        "",
        "| answers scored by | AP | AP50 |",
        "|---|---|---|",
        *[f"| {k} | {100 * v[0]:.2f} | {100 * v[1]:.2f} |" for k, v in stats.items()],
        "",
        "The true OKS as the score bounds what any person score (rescoring) can give these "
        "answers; the ridge rescoring is one such score, learned on the tuning split.",
        "",
    ]
    write_results(args.name, report, "\n".join(lines))
    return 0


def _rows(table: list[dict[str, Any]]) -> list[str]:
    return [f"| {r['bin']} | {r['people']} | {r['reached']:.3f} | {r['missed']} |" for r in table]


if __name__ == "__main__":
    raise SystemExit(main())
