"""Service benchmarks on this machine (issue: inference service).

    python benchmarks/service_bench.py [--bundle bundles/demo] [--quick]

1. Per-stage latency of the pipeline for 1, 5 and 20 persons, refinement on and off.
2. A load test of the real HTTP service (uvicorn subprocess): concurrency 1, 4, 16; p50/p99,
   throughput, status codes (there must be no 5xx).
3. End-to-end /pose latency for a one-person image against the sum of its model inference
   times (detector + backbone + SCIO networks, timed on the same sessions): target <= 1.15x;
   on the demo bundle, on the same image as a 12-megapixel photo, and on an HRNet-W32-sized
   bundle (untrained weights, built here) to see the overhead next to a real backbone; and the
   service alone (the real app answering with a replay of the pipeline's result), to split the
   demo bundle's time into models, service and pipeline work around the models.
4. Efficiency: HRNet-W32 256x192 on ONNX Runtime (CPU) as a fraction of this machine's measured
   fp32 matrix-multiply rate (target >= 50%), and ONNX Runtime against PyTorch eager on the same
   weights (target >= 1.5x faster).

Writes benchmarks/results/service_bench.{json,md}. GPU numbers need a GPU machine; without one
the report says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import (  # noqa: E402
    machine,
    md_header,
    md_targets,
    timed,
    write_results,
)
from models.bundle import load_bundle  # noqa: E402
from service.pipeline import PosePipeline, with_mirrored  # noqa: E402
from service.results import PoseOptions  # noqa: E402


def synth_image(
    persons: int, work: Path, size: tuple[int, int] = (640, 480)
) -> tuple[np.ndarray, np.ndarray, bytes]:
    """A synthetic image with about `persons` people, its ground-truth boxes, and its JPEG."""
    from PIL import Image

    from training.synth.generate import generate_dataset

    d = work / f"bench-{persons}-{size[0]}x{size[1]}"
    if not (d / "person_keypoints.json").exists():
        lo = max(1, persons)
        generate_dataset(d, images=8, seed=77 + persons, size=size, persons=(lo, lo))
    ann = json.loads((d / "person_keypoints.json").read_text())
    by_image: dict[int, list[list[float]]] = {}
    for a in ann["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    # the image with the most persons (crowded, truncated ones may have lost their annotation)
    image_id = max(by_image, key=lambda k: len(by_image[k]))
    im = next(i for i in ann["images"] if i["id"] == image_id)
    path = d / "images" / im["file_name"]
    xywh = np.array(by_image[image_id], dtype=np.float64)[:persons]
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"))
    return rgb, boxes, path.read_bytes()


def stage_latency(pipe: PosePipeline, work: Path, reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in (1, 5, 20):
        img, boxes, _ = synth_image(n, work)
        for refine in (False, True):
            opts = PoseOptions(boxes=boxes, refine=refine)
            pipe.estimate(img, opts)  # warm
            runs = [pipe.estimate(img, opts).timings_ms for _ in range(reps)]
            med = {k: float(np.median([r.get(k, 0.0) for r in runs])) for k in runs[0]}
            med["persons"] = float(len(boxes))
            out[f"{n} persons, refine {'on' if refine else 'off'}"] = med
    return out


def model_timer(pipe: PosePipeline, img: np.ndarray) -> Callable[[], dict[str, float]]:
    """One request's models timed once per call (ms): ONNX Runtime alone, on the pipeline's own
    sessions, with the inputs that request gives them."""
    from models.geometry import affine_matrices, box_to_center_scale, warp_affine
    from models.preprocess import to_network_input

    det = pipe.detector
    assert det is not None
    x_det, _, _ = det.network_input(img)
    boxes, _ = det([img])[0]
    assert len(boxes), "the detector found nobody in the one-person image"
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
    c, s = box_to_center_scale(xywh, pipe.codec.input_hw[1] / pipe.codec.input_hw[0])
    crops = warp_affine(img, affine_matrices(c, s, None, pipe.codec.input_hw), pipe.codec.input_hw)
    # the request's default: the mirrored crops too when the bundle runs the flip test
    x = with_mirrored(to_network_input(crops, pipe.norm), np.full(len(crops), pipe.flips(None)))
    items = [(img, PoseOptions(boxes=boxes))]
    bp = pipe.backbone_pass(items)  # SCIO's input, once

    def once() -> dict[str, float]:
        t = time.perf_counter()
        det.model.run(**{det.model.input_names[0]: x_det})
        t_det = time.perf_counter() - t
        t = time.perf_counter()
        pipe.pose.run(image=x)
        t_pose = time.perf_counter() - t
        t_scio = scio_network_seconds(pipe, items, bp) if pipe.verifier is not None else 0.0
        return {"detector": 1000 * t_det, "backbone": 1000 * t_pose, "scio": 1000 * t_scio}

    return once


class _Timed:
    """Wraps Γ or Φ and records when each of their ONNX Runtime calls ran (into `spans`, shared
    by the wrappers of one pass)."""

    def __init__(self, inner: Any, spans: list[tuple[float, float]]) -> None:
        self.inner = inner
        self.spans = spans

    def _call(self, fn: Any, *args: Any) -> Any:
        t = time.perf_counter()
        out = fn(*args)
        self.spans.append((t, time.perf_counter()))
        return out

    def context(self, *args: Any) -> Any:
        return self._call(self.inner.context, *args)

    def head(self, *args: Any) -> Any:
        return self._call(self.inner.head, *args)

    def __call__(self, *args: Any) -> Any:
        return self._call(self.inner, *args)


def covered_seconds(spans: list[tuple[float, float]]) -> float:
    """How long at least one of the (start, end) spans was running: Φ and Γ's context run side
    by side (`PosePipeline`), and their overlap counts once."""
    total, reach = 0.0, -np.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def scio_network_seconds(
    pipe: PosePipeline, items: list[tuple[np.ndarray, PoseOptions]], bp: Any
) -> float:
    """The SCIO stage of one pass as the service runs it (`PosePipeline.finish`, the bundle's
    settings), counting only the time its network calls (Γ context/head, Φ) were running."""
    spans: list[tuple[float, float]] = []
    gamma = _Timed(pipe.verifier, spans)
    phi: Any = _Timed(pipe.predictor, spans) if pipe.predictor is not None else None
    saved = pipe.verifier, pipe.predictor
    pipe.verifier, pipe.predictor = gamma, phi  # type: ignore[assignment]
    try:
        pipe.finish(items, bp)
    finally:
        pipe.verifier, pipe.predictor = saved
    return covered_seconds(spans)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_service(
    bundle: Path, settings: dict[str, str] | None = None, command: list[str] | None = None
) -> Iterator[str]:
    """`scio-pose serve` (or `command`) on the CPU in a subprocess on a free port with these
    `SCIO_*` settings, until ready; its base URL. SIGTERM on the way out (a graceful drain)."""
    with service_process(bundle, settings, command) as (base, _):
        yield base


@contextlib.contextmanager
def service_process(
    bundle: Path, settings: dict[str, str] | None = None, command: list[str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`running_service`, also handing out the process (for its /proc entries)."""
    import httpx

    port = free_port()
    env = {
        **os.environ,
        "SCIO_BUNDLE": str(bundle),
        "SCIO_PORT": str(port),
        "SCIO_LOG_LEVEL": "warning",
        "SCIO_DEVICE": "cpu",
        **(settings or {}),
    }
    proc = subprocess.Popen(
        command or [sys.executable, "-m", "service.cli", "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited with {proc.returncode}")
            time.sleep(0.5)
        else:
            raise RuntimeError("the service did not become ready in 120 s")
        yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def load_test(bundle: Path, jpeg: bytes, seconds: float, levels: tuple[int, ...]) -> dict[str, Any]:
    with running_service(bundle, {"SCIO_MAX_QUEUE": "64"}) as base:
        return {f"concurrency {c}": asyncio.run(_hammer(base, jpeg, c, seconds)) for c in levels}


async def _hammer(base: str, jpeg: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    import httpx

    lat: list[float] = []
    codes: dict[int, int] = {}
    stop = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            r = await client.post(
                f"{base}/pose", content=jpeg, headers={"content-type": "image/jpeg"}
            )
            lat.append(time.perf_counter() - t)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    ok = [v for v in lat]
    return {
        "requests": len(lat),
        "throughput_rps": len(lat) / wall,
        "p50_ms": 1000 * float(np.percentile(ok, 50)),
        "p99_ms": 1000 * float(np.percentile(ok, 99)),
        "status": {str(k): v for k, v in sorted(codes.items())},
        "server_errors": sum(v for k, v in codes.items() if k >= 500),
    }


def end_to_end(
    bundle: Path,
    pipe: PosePipeline,
    img: np.ndarray,
    jpeg: bytes,
    reps: int,
    lean_client: bool = False,
    **settings: str,
) -> dict[str, Any]:
    """Client-side /pose latency of a one-person image (sequential) against model time. Each
    request follows one timing of its models in this process, so that both see the same load on
    this shared machine (timed minutes apart, they need not). `lean_client`: the standard
    library's http.client instead of httpx, whose own time per request is not the service's."""
    models_once = model_timer(pipe, img)
    models_once()
    runs: list[dict[str, float]] = []
    lat, server, last = sequential_posts(
        bundle,
        jpeg,
        reps,
        settings=settings,
        before_each=lambda: runs.append(models_once()),
        lean_client=lean_client,
    )
    models = {k: float(np.median([m[k] for m in runs])) for k in runs[0]}
    e2e = float(np.median(lat))
    model_sum = sum(models.values())
    return {
        "end_to_end_ms": e2e,
        "models_ms": models,
        "models_sum_ms": model_sum,
        "ratio": e2e / model_sum,
        "persons_found": len(last["persons"]),
        "image": f"{img.shape[1]}x{img.shape[0]} JPEG of {len(jpeg)} bytes",
        "server_timings_ms": {k: float(np.median([t[k] for t in server])) for k in server[0]},
    }


class ReplayEstimator:
    """The pipeline's answer for one image, computed once and handed back for every request
    without running anything: the service around a pipeline that takes no time."""

    def __init__(self, pipe: PosePipeline, image: np.ndarray) -> None:
        self.spec = pipe.spec
        self.refine_available = pipe.refine_available
        self._info = pipe.info
        self._result = pipe.estimate(image, PoseOptions())

    @property
    def info(self) -> dict[str, Any]:
        return self._info

    def warmup(self) -> None:
        pass

    def estimate_many(self, items: Any) -> list[Any]:
        return [copy.deepcopy(self._result) for _ in items]


def serve_replay(jpeg_path: Path) -> int:
    """The real app and server (`SCIO_*` settings) on a `ReplayEstimator` of the bundle's
    pipeline for this image; runs until SIGTERM."""
    from service.imageio import decode_image
    from service.serve import serve
    from service.settings import Settings

    settings = Settings()
    decoded = decode_image(
        jpeg_path.read_bytes(), allowed=settings.allowed_formats, max_pixels=settings.max_pixels
    )
    replay = ReplayEstimator(PosePipeline.from_path(settings.bundle, device="cpu"), decoded.rgb)
    serve(settings, lambda _: replay)
    return 0


def service_alone(
    bundle: Path, jpeg: bytes, work: Path, reps: int, lean_client: bool = False
) -> dict[str, Any]:
    """Client-side /pose latency when the pipeline costs nothing: the same request answered by
    a replay of the pipeline's result (same persons, same JSON), sequential. `lean_client`: as
    in `end_to_end`."""
    path = work / "replay.jpg"
    path.write_bytes(jpeg)
    command = [sys.executable, str(Path(__file__).resolve()), "--replay-server", str(path)]
    # a few ms each: more repetitions for a stable median
    lat, server, last = sequential_posts(
        bundle, jpeg, max(reps, 50), command=command, lean_client=lean_client
    )
    return {
        "end_to_end_ms": float(np.median(lat)),
        "persons": len(last["persons"]),
        "server_timings_ms": {
            k: float(np.median([t[k] for t in server])) for k in ("decode_ms", "total_ms")
        },
    }


def sequential_posts(
    bundle: Path,
    jpeg: bytes,
    reps: int,
    settings: dict[str, str] | None = None,
    command: list[str] | None = None,
    before_each: Callable[[], object] | None = None,
    lean_client: bool = False,
) -> tuple[list[float], list[dict[str, float]], dict[str, Any]]:
    """POST /pose `reps` times, one at a time, to a service started as `running_service` does
    (after three warm-up requests): client-side latencies (ms), the server's `timings_ms` of
    each, and the last response. `before_each` runs before each timed request; `lean_client`:
    http.client (one kept-alive connection) instead of httpx."""
    import http.client

    import httpx

    lat, server = [], []
    headers = {"content-type": "image/jpeg"}
    with running_service(bundle, settings, command) as base, httpx.Client(timeout=60) as c:
        conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=60)

        def post() -> tuple[int, dict[str, Any]]:
            if not lean_client:
                r = c.post(f"{base}/pose", content=jpeg, headers=headers)
                return r.status_code, r.json()
            conn.request("POST", "/pose", body=jpeg, headers=headers)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())

        for _ in range(3):
            post()
        for _ in range(reps):
            if before_each is not None:
                before_each()
            t = time.perf_counter()
            status, body = post()
            lat.append(1000 * (time.perf_counter() - t))
            assert status == 200, body
            server.append(body["timings_ms"])
        conn.close()
    return lat, server, body


def photo_sized(img: np.ndarray, size: tuple[int, int] = (4000, 3000)) -> tuple[np.ndarray, bytes]:
    """The image scaled up to a phone photo's size, and its JPEG (quality 90)."""
    from PIL import Image

    big = Image.fromarray(img).resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    return np.asarray(big), buf.getvalue()


def w32_bundle(work: Path, demo: Path) -> Path:
    """A bundle the size of a real one: HRNet-W32 at 256x192 with untrained weights (inference
    time does not depend on them) and the demo bundle's detector, no SCIO networks. For the
    end-to-end overhead next to a backbone of the size users serve."""
    from models.bundle import DETECTOR
    from models.keypoints import COCO17
    from models.zoo import build_backbone, get_config
    from training.bundle_export import BundleSpec, build_bundle

    out = work / "hrnet-w32-untrained"
    if (out / "bundle.json").exists():
        return out
    d = load_bundle(demo)
    det = d.path(DETECTOR)
    assert det is not None, "the demo bundle has no detector"
    build_bundle(
        out,
        build_backbone(get_config("hrnet_w32")),
        BundleSpec(
            name="hrnet-w32-untrained",
            version="bench",
            arch="hrnet_w32",
            spec=COCO17,
            sigma=2.0,
            detector_onnx=det,
            detector_info=d.manifest.detector,
            provenance={"purpose": "service_bench timing only; untrained weights"},
        ),
    )
    return out


def matmul_gflops(threads: int, n: int, reps: int) -> dict[str, float]:
    """This machine's fp32 matrix-multiply rate on `threads` threads, by two BLAS libraries
    (PyTorch's, and ONNX Runtime's MatMul kernel); the better one is the reference."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    t_torch = min(timed(partial(torch.mm, a, b)) for _ in range(reps))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {"a": a.numpy(), "b": b.numpy()}
    sess.run(None, feeds)
    t_ort = min(timed(partial(sess.run, None, feeds)) for _ in range(reps))
    flop = 2 * n**3
    return {"torch_mm": flop / t_torch / 1e9, "ort_matmul": flop / t_ort / 1e9}


def hrnet_w32_efficiency(reps: int) -> dict[str, Any]:
    """HRNet-W32 256x192 on ONNX Runtime and on PyTorch eager, both on every core this process
    may use (set explicitly: OMP_NUM_THREADS would otherwise give the two different counts)."""
    import onnxruntime as ort
    import torch

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)

    from models.zoo import build_backbone, count_conv_macs, get_config
    from training.onnx_export import export_backbone

    model = build_backbone(get_config("hrnet_w32")).eval()
    x = torch.randn(1, 3, 256, 192)
    macs = count_conv_macs(model, lambda: model(x))
    out: dict[str, Any] = {"gmacs": macs / 1e9, "gflops": 2 * macs / 1e9}
    with tempfile.TemporaryDirectory() as tmp:
        path = export_backbone(model, Path(tmp) / "w32.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for batch in (1, 8):
            xb = np.random.default_rng(0).standard_normal((batch, 3, 256, 192)).astype(np.float32)
            sess.run(None, {"image": xb})
            t = min(timed(partial(sess.run, None, {"image": xb})) for _ in range(reps))
            out[f"ort_ms_per_image_b{batch}"] = 1000 * t / batch
            with torch.no_grad():
                tb = torch.from_numpy(xb)
                model(tb)
                tt = min(timed(partial(model, tb)) for _ in range(max(2, reps // 2)))
            out[f"torch_ms_per_image_b{batch}"] = 1000 * tt / batch
    # the best of two libraries and three sizes: the reference should be this machine's peak
    out["matmul"] = {
        f"{lib} n={n}": rate
        for n in (1024, 2048, 4096)
        for lib, rate in matmul_gflops(threads, n=n, reps=5).items()
    }
    out["matmul_gflops"] = max(out["matmul"].values())
    for batch in (1, 8):
        rate = out["gflops"] / (out[f"ort_ms_per_image_b{batch}"] / 1000)
        out[f"ort_gflops_b{batch}"] = rate
        out[f"fraction_of_matmul_b{batch}"] = rate / out["matmul_gflops"]
        out[f"ort_speedup_over_torch_b{batch}"] = (
            out[f"torch_ms_per_image_b{batch}"] / out[f"ort_ms_per_image_b{batch}"]
        )
    out["threads"] = threads
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "demo")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--replay-server", type=Path, help=argparse.SUPPRESS)  # internal
    args = ap.parse_args()
    if args.replay_server is not None:
        return serve_replay(args.replay_server)
    reps = 3 if args.quick else 15
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(args.bundle)
    pipe = PosePipeline(bundle, device="cpu")
    report: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python", *sys.argv]),
        "bundle": f"{bundle.manifest.name} {bundle.manifest.version}",
        "gpu": "not measured: no GPU in this environment",
    }
    report["stages"] = stage_latency(pipe, work, reps)
    img1, _, jpeg1 = synth_image(1, work, size=(256, 256))  # the size the detector knows
    report["end_to_end"] = end_to_end(args.bundle, pipe, img1, jpeg1, reps)
    report["service_alone"] = service_alone(args.bundle, jpeg1, work, reps)
    img_big, jpeg_big = photo_sized(img1)
    report["end_to_end_photo"] = end_to_end(args.bundle, pipe, img_big, jpeg_big, reps)
    report["end_to_end_photo_shrunk"] = end_to_end(
        args.bundle, pipe, img_big, jpeg_big, reps, SCIO_DECODE_MAX_SIDE="2000"
    )
    w32 = w32_bundle(work, args.bundle)
    report["end_to_end_w32"] = end_to_end(
        w32, PosePipeline(load_bundle(w32), device="cpu"), img1, jpeg1, reps
    )
    _, _, jpeg5 = synth_image(5, work)
    report["load"] = load_test(args.bundle, jpeg5, 5.0 if args.quick else 20.0, (1, 4, 16))
    report["hrnet_w32"] = hrnet_w32_efficiency(3 if args.quick else 8)
    report["targets"] = {
        "end-to-end <= 1.15x model inference (1 person), demo bundle": report["end_to_end"]["ratio"]
        <= 1.15,
        "end-to-end <= 1.15x model inference (1 person), HRNet-W32-sized bundle": report[
            "end_to_end_w32"
        ]["ratio"]
        <= 1.15,
        "no 5xx under load": all(v["server_errors"] == 0 for v in report["load"].values()),
        "HRNet-W32 ORT >= 50% of fp32 matmul rate (batch 8)": report["hrnet_w32"][
            "fraction_of_matmul_b8"
        ]
        >= 0.5,
        "ORT >= 1.5x PyTorch eager (batch 1)": report["hrnet_w32"]["ort_speedup_over_torch_b1"]
        >= 1.5,
    }
    write_results("service_bench", report, markdown(report))
    return 0


def markdown(r: dict[str, Any]) -> str:
    L = [
        *md_header("Service benchmarks", r),
        f"Bundle: {r['bundle']}. GPU: {r['gpu']}.",
        "",
        "## Pipeline stages (median ms)",
        "",
    ]
    keys = sorted({k for v in r["stages"].values() for k in v if k.endswith("_ms")})
    L += ["| | " + " | ".join(k[:-3] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    L += [
        f"| {name} | " + " | ".join(f"{v.get(k, 0):.1f}" for k in keys) + " |"
        for name, v in r["stages"].items()
    ]
    L += ["", "## End to end, one person", ""]
    for key, what in (
        ("end_to_end", "demo bundle"),
        ("end_to_end_photo", "demo bundle, the same image scaled to a 12-megapixel photo"),
        ("end_to_end_photo_shrunk", "the same photo with SCIO_DECODE_MAX_SIDE=2000"),
        ("end_to_end_w32", "HRNet-W32 256x192 with untrained weights, the demo detector, no SCIO"),
    ):
        e = r[key]
        L += [
            f"- {what}. Image: {e['image']}; persons found: {e['persons_found']}. "
            f"/pose {e['end_to_end_ms']:.1f} ms (client side, sequential) against model "
            f"inference {e['models_sum_ms']:.1f} ms ("
            + ", ".join(f"{k} {v:.1f}" for k, v in e["models_ms"].items())
            + f"): ratio {e['ratio']:.2f}. Server stages: "
            + ", ".join(f"{k[:-3]} {v:.1f}" for k, v in e["server_timings_ms"].items())
        ]
    a, e = r["service_alone"], r["end_to_end"]
    glue = e["end_to_end_ms"] - e["models_sum_ms"] - a["end_to_end_ms"]
    L += [
        f"- the service alone: the same 256x256 request answered by a replay of the demo "
        f"pipeline's result ({a['persons']} persons, the same JSON) instead of running it: "
        f"/pose {a['end_to_end_ms']:.1f} ms client side (server: decode "
        f"{a['server_timings_ms']['decode_ms']:.1f}, total {a['server_timings_ms']['total_ms']:.1f}"
        f"). So the demo bundle's {e['end_to_end_ms']:.1f} ms are {e['models_sum_ms']:.1f} of "
        f"models, {a['end_to_end_ms']:.1f} of service (HTTP, decoding, queueing, JSON, client) "
        f"and {glue:.1f} of pipeline work outside the models (letterbox, crops, SCIO "
        "bookkeeping, decoding heatmaps).",
    ]
    L += [
        "",
        "## Load test (5-person image)",
        "",
        "| | requests | req/s | p50 ms | p99 ms | status |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in r["load"].items():
        L.append(
            f"| {name} | {v['requests']} | {v['throughput_rps']:.1f} | {v['p50_ms']:.0f} | "
            f"{v['p99_ms']:.0f} | {v['status']} |"
        )
    h = r["hrnet_w32"]
    L += [
        "",
        "## HRNet-W32 256x192 on the CPU",
        "",
        f"{h['gflops']:.1f} GFLOP per image (convolutions). fp32 matmul on {h['threads']} "
        "threads (GFLOP/s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in h["matmul"].items())
        + f"; the best, {h['matmul_gflops']:.0f}, is the reference. Both runtimes below use the "
        "same threads.",
        "",
        "| batch | ORT ms/image | ORT GFLOP/s | share of matmul rate | torch eager ms/image "
        "| ORT speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for b in (1, 8):
        L.append(
            f"| {b} | {h[f'ort_ms_per_image_b{b}']:.1f} | {h[f'ort_gflops_b{b}']:.1f} | "
            f"{h[f'fraction_of_matmul_b{b}']:.0%} | {h[f'torch_ms_per_image_b{b}']:.1f} | "
            f"{h[f'ort_speedup_over_torch_b{b}']:.2f}x |"
        )
    L += ["", *md_targets(r["targets"])]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
