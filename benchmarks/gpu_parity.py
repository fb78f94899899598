"""The service's CUDA (or TensorRT) path against its CPU path: the same bundle, the same images,
the same options; how far apart the answers are, and each path's latency.

    python benchmarks/gpu_parity.py [--bundle bundles/demo] [--device cuda] [--images 8]

Synthetic 640x480 images of 1-5 people (seed 77 on), posed from their ground-truth boxes with
refinement on and the bundle's default flip test, then once more with its own detector on the
5-person image for the latency (median of 20 calls after 5 warm-ups). Reports the share of
keypoints whose position differs by at most 0.01 / 0.05 px, the largest difference, and the
largest score difference; exits 1 when fewer than 99% are within 0.05 px. `--device cpu` runs the
comparison CPU against CPU (the answers must be identical: the check of this script itself).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, require_bundles  # noqa: E402
from benchmarks.pipeline_latency import p50  # noqa: E402
from service.pipeline import PosePipeline  # noqa: E402
from service.results import PoseOptions, PoseResult  # noqa: E402
from training.synth.generate import SynthConfig, make_sample  # noqa: E402


def _sample(i: int, persons: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    sample = make_sample(SynthConfig(width=640, height=480, persons=persons, seed=77 + i), 0)
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (lab.bbox for lab in sample.labels)])
    return sample.image, boxes


def _keypoints(r: PoseResult) -> np.ndarray:
    return np.concatenate([p.keypoints for p in r.persons]) if r.persons else np.zeros((0, 3))


def compare(bundle: Path, device: str, images: int, timing: bool = True) -> dict[str, Any]:
    """Pose `images` synthetic images on the CPU and on `device`; the differences (and, with
    `timing`, both paths' p50 latency on the 5-person image). Both run the float backbone (the
    CPU would run a bundle's INT8 copy by default; CUDA never does)."""
    pipes = {
        name: PosePipeline.from_path(bundle, device=dev, precision="fp32")
        for name, dev in (("cpu", "cpu"), ("device", device))
    }
    for pipe in pipes.values():
        pipe.warmup()
    providers = pipes["device"].pose.providers
    if device != "cpu" and providers[0] == "CPUExecutionProvider":
        raise RuntimeError(f"ONNX Runtime fell back to the CPU for {device}: nothing to compare")
    moved, score_diff, n = [], 0.0, 0
    for i in range(images):
        image, boxes = _sample(i, (1, 5))
        options = PoseOptions(refine=True, boxes=boxes)
        a, b = (_keypoints(p.estimate(image, options)) for p in pipes.values())
        if a.shape != b.shape:
            raise AssertionError(f"image {i}: {len(a)} keypoints on the CPU, {len(b)} on {device}")
        moved.append(np.linalg.norm(a[:, :2] - b[:, :2], axis=1))
        score_diff = max(score_diff, float(np.abs(a[:, 2] - b[:, 2]).max(initial=0.0)))
        n += len(a)
    d = np.concatenate(moved) if moved else np.zeros(0)
    out: dict[str, Any] = {
        "device": device,
        "providers": providers,
        "keypoints": n,
        "within_0.01px": float((d <= 0.01).mean()) if n else 1.0,
        "within_0.05px": float((d <= 0.05).mean()) if n else 1.0,
        "max_px": float(d.max(initial=0.0)),
        "max_score_diff": score_diff,
    }
    if timing:
        image, boxes = _sample(0, (5, 5))
        for name, pipe in pipes.items():
            out[f"p50_ms_{name}_gt_boxes"] = p50(pipe, image, PoseOptions(boxes=boxes))[0]
            out[f"p50_ms_{name}_detector"] = p50(pipe, image, PoseOptions())[0]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "demo")
    ap.add_argument("--device", default="cuda", choices=("cuda", "tensorrt", "cpu"))
    ap.add_argument("--images", type=int, default=8, help="synthetic images compared")
    args = ap.parse_args()
    require_bundles(ap, [args.bundle])
    result = compare(args.bundle, args.device, args.images)
    print(json.dumps({"machine": machine(), "command": " ".join(sys.argv), **result}, indent=1))
    return 0 if result["within_0.05px"] >= 0.99 else 1


if __name__ == "__main__":
    raise SystemExit(main())
