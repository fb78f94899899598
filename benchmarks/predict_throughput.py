"""`scio-pose predict` throughput against the HTTP service, in one run on one machine (issue 16).

1. 200 synthetic images (640x480, 1-6 people) through `predict` (in-process, the bundle loaded
   once, `--batch` 1 and 4), with and without SCIO refinement: images/s.
2. A 300-frame synthetic video (640x360, a camera panning over several people) through
   `predict`: frames/s with and without refinement, with tracking (as every video run).
3. The same 200 images posted to `scio-pose serve` (uvicorn subprocess, default settings) by 4
   concurrent clients: images/s, p50/p99.

    python benchmarks/predict_throughput.py [--bundle bundles/demo] [--work runs/predict-bench]

Writes benchmarks/results/predict_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, md_header, write_results  # noqa: E402
from benchmarks.service_bench import running_service  # noqa: E402


def make_images(work: Path, n: int) -> Path:
    from training.synth.generate import generate_dataset

    folder = work / f"images-{n}"
    if not (folder / "person_keypoints.json").exists():
        generate_dataset(folder, images=n, seed=16, size=(640, 480), persons=(1, 6))
    return folder / "images"


def make_video(work: Path, frames: int) -> Path:
    import cv2

    from training.synth.generate import SynthConfig, make_sample

    path = work / f"pan-{frames}.mp4"
    if path.exists():
        return path
    w, h = 640, 360
    sample = make_sample(SynthConfig(width=w + frames, height=h, persons=(4, 6), seed=16), 0)
    tmp = path.with_name(".pan.partial.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), 30.0, (w, h))
    for t in range(frames):
        writer.write(np.ascontiguousarray(sample.image[:, t : t + w, ::-1]))
    writer.release()
    tmp.replace(path)
    return path


def predict_rate(pipeline: Any, source: Path, extra: list[str]) -> dict[str, Any]:
    from service.cli import build_parser
    from service.predict import Predictor
    from service.sources import expand_sources

    args = build_parser("predict").parse_args(["predict", str(source), "--quiet", *extra])
    sources = expand_sources([source])
    with open("/dev/null", "w") as sink:
        summary = Predictor(pipeline, args).run(sources, sink)
    return {
        "frames": summary.frames,
        "persons": summary.persons,
        "seconds": summary.seconds,
        "per_s": summary.frames / summary.seconds,
        "options": " ".join(extra),
    }


def service_rate(bundle: Path, images: list[bytes], concurrency: int) -> dict[str, Any]:
    import httpx

    lat: list[float] = []
    codes: dict[int, int] = {}

    async def run(base: str) -> float:
        queue = list(enumerate(images))

        async def worker(client: httpx.AsyncClient) -> None:
            while queue:
                _, data = queue.pop()
                t = time.perf_counter()
                r = await client.post(
                    f"{base}/pose", content=data, headers={"content-type": "image/jpeg"}
                )
                lat.append(time.perf_counter() - t)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        t0 = time.perf_counter()
        async with httpx.AsyncClient(timeout=120) as client:
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - t0

    with running_service(bundle) as base:
        asyncio.run(_warm(base, images[0]))
        wall = asyncio.run(run(base))
    return {
        "images": len(images),
        "concurrency": concurrency,
        "seconds": wall,
        "per_s": len(images) / wall,
        "p50_ms": 1000 * float(np.percentile(lat, 50)),
        "p99_ms": 1000 * float(np.percentile(lat, 99)),
        "status": {str(k): v for k, v in sorted(codes.items())},
    }


async def _warm(base: str, data: bytes) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=120) as client:
        for _ in range(3):
            await client.post(f"{base}/pose", content=data, headers={"content-type": "image/jpeg"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "demo")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "predict-bench")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--frames", type=int, default=300)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from service.pipeline import PosePipeline

    folder = make_images(args.work, args.images)
    video = make_video(args.work, args.frames)
    pipeline = PosePipeline.from_path(args.bundle, device="cpu")
    pipeline.warmup()
    runs = {
        "images, batch 1, refine": predict_rate(pipeline, folder, ["--batch", "1"]),
        "images, batch 4, refine": predict_rate(pipeline, folder, ["--batch", "4"]),
        "images, batch 4, no refine": predict_rate(
            pipeline, folder, ["--batch", "4", "--no-refine"]
        ),
        "video, batch 4, refine": predict_rate(pipeline, video, ["--batch", "4"]),
        "video, batch 4, no refine": predict_rate(pipeline, video, ["--batch", "4", "--no-refine"]),
    }
    images = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    service = service_rate(args.bundle, images, concurrency=4)
    report = {
        "command": "python benchmarks/predict_throughput.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "bundle": str(
            args.bundle.relative_to(ROOT) if args.bundle.is_relative_to(ROOT) else args.bundle
        ),
        "predict": runs,
        "service_concurrency_4": service,
    }
    write_results("predict_throughput", report, markdown(report))
    return 0


def markdown(r: dict[str, Any]) -> str:
    lines = md_header("scio-pose predict against the service", r)
    lines += [
        f"Bundle: `{r['bundle']}`; 640x480 synthetic images with 1-6 people; the video is 640x360, "
        "30 fps, a camera panning over 4-6 people. `predict` runs in-process with the bundle "
        "loaded once; the service is `scio-pose serve` with default settings, 4 clients.",
        "",
        "| run | images/frames | persons | seconds | per second |",
        "|---|---|---|---|---|",
    ]
    for name, v in r["predict"].items():
        lines.append(
            f"| predict: {name} | {v['frames']} | {v['persons']} | {v['seconds']:.1f} | "
            f"{v['per_s']:.1f} |"
        )
    s = r["service_concurrency_4"]
    lines.append(
        f"| service: /pose, 4 clients (p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms, "
        f"status {s['status']}) | {s['images']} | | {s['seconds']:.1f} | {s['per_s']:.1f} |"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
