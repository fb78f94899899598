"""Hostile clients and normal traffic at once against `scio-pose serve` (issue 14).

For `--seconds` (default 30), on loopback, default settings, the real bundle:
- 34 slow clients, each sending the headers of a 1,000-byte upload and then one byte every 2 s
  (reconnecting when answered);
- decompression-bomb-sized images: 36-megapixel RGBA PNGs (under 1 MB each on the wire), four
  at a time, again and again;
- normal traffic: 2 clients posting a 640x480 JPEG with a few people in a loop.

Reports the normal requests' success rate and p50/p99, every status seen per kind, whether any
5xx came as plain text, the server's peak RSS (VmHWM) and RSS before and 10 s after the burst.

    python benchmarks/hostile_mix.py [--bundle bundles/demo] [--seconds 30]

Writes benchmarks/results/hostile_mix.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, md_header, md_targets, write_results  # noqa: E402
from benchmarks.service_bench import service_process  # noqa: E402


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def bomb_png() -> bytes:
    from PIL import Image

    a = np.zeros((6000, 6000, 4), np.uint8)
    a[..., 3] = 128
    a[::7, ::5, 0] = 200
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def normal_jpeg() -> bytes:
    from PIL import Image

    from training.synth.generate import SynthConfig, make_sample

    sample = make_sample(SynthConfig(width=640, height=480, persons=(3, 3), seed=5), 0)
    buf = io.BytesIO()
    Image.fromarray(sample.image).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def slow_client(port: int, stop: threading.Event, statuses: list[int]) -> None:
    import socket

    while not stop.is_set():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                b"POST /pose HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000\r\n\r\n"
            )
            s.settimeout(2.0)
            data = b""
            while not stop.is_set():
                try:
                    chunk = s.recv(4096)
                except TimeoutError:
                    with contextlib.suppress(OSError):
                        s.sendall(b"\x00")
                    continue
                if not chunk:
                    break
                data += chunk
            if data.startswith(b"HTTP/1.1 "):
                statuses.append(int(data.split()[1]))


async def loop_posts(
    base: str, body: bytes, ctype: str, stop: float, out: list[tuple[int, float, bool]]
) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=120) as client:
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                r = await client.post(f"{base}/pose", content=body, headers={"content-type": ctype})
                is_json = r.headers.get("content-type", "").startswith("application/json")
                out.append((r.status_code, time.perf_counter() - t, is_json))
            except httpx.HTTPError:
                out.append((0, time.perf_counter() - t, False))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "demo")
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    import httpx

    bomb, jpeg = bomb_png(), normal_jpeg()
    with service_process(args.bundle) as (base, proc):
        port = int(base.rsplit(":", 1)[1])
        for _ in range(3):
            httpx.post(f"{base}/pose", content=jpeg, headers={"content-type": "image/jpeg"})
        before = _kib(proc.pid, "VmRSS")

        stop_slow = threading.Event()
        slow_statuses: list[int] = []
        slow = [
            threading.Thread(target=slow_client, args=(port, stop_slow, slow_statuses))
            for _ in range(34)
        ]
        for t in slow:
            t.start()
        normal: list[tuple[int, float, bool]] = []
        bombs: list[tuple[int, float, bool]] = []
        stop = time.monotonic() + args.seconds

        async def traffic() -> None:
            await asyncio.gather(
                *(loop_posts(base, jpeg, "image/jpeg", stop, normal) for _ in range(2)),
                *(loop_posts(base, bomb, "image/png", stop, bombs) for _ in range(4)),
            )

        asyncio.run(traffic())
        stop_slow.set()
        for t in slow:
            t.join(timeout=10)
        peak = _kib(proc.pid, "VmHWM")
        time.sleep(10)
        after = _kib(proc.pid, "VmRSS")

    ok = [lat for code, lat, _ in normal if code == 200]
    plain_5xx = sum(1 for code, _, js in normal + bombs if code >= 500 and not js)
    report: dict[str, Any] = {
        "command": "python benchmarks/hostile_mix.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "seconds": args.seconds,
        "normal": {
            "requests": len(normal),
            "success_rate": len(ok) / max(len(normal), 1),
            "p50_ms": 1000 * float(np.percentile(ok, 50)) if ok else None,
            "p99_ms": 1000 * float(np.percentile(ok, 99)) if ok else None,
            "status": _count(code for code, _, _ in normal),
        },
        "bombs": {"requests": len(bombs), "status": _count(code for code, _, _ in bombs)},
        "slow_clients": {"answers": len(slow_statuses), "status": _count(slow_statuses)},
        "plain_text_5xx": plain_5xx,
        "rss_mb": {"before": before / 1024, "peak": peak / 1024, "after_10s": after / 1024},
    }
    report["targets"] = {
        ">= 95% of normal requests answered 200 while 34 slow clients trickle": report["normal"][
            "success_rate"
        ]
        >= 0.95,
        "peak RSS <= 1.5 GB": peak / 1024 <= 1536,
        "RSS within 200 MB of its pre-burst value 10 s after": (after - before) / 1024 <= 200,
        "zero plain-text 5xx": plain_5xx == 0,
    }
    write_results("hostile_mix", report, markdown(report))
    return 0


def _count(codes: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in codes:
        out[str(c)] = out.get(str(c), 0) + 1
    return dict(sorted(out.items()))


def markdown(r: dict[str, Any]) -> str:
    n, rss = r["normal"], r["rss_mb"]
    lines = md_header("Hostile clients and normal traffic at once", r)
    lines += [
        "",
        f"{r['seconds']:g} s on loopback, default settings: 34 slow uploads (1 byte / 2 s), four "
        "36-megapixel RGBA PNGs at a time, and 2 clients posting a 640x480 JPEG.",
        "",
        "| what | value |",
        "|---|---|",
        f"| normal requests | {n['requests']}, {100 * n['success_rate']:.1f}% answered 200, "
        f"status {n['status']} |",
        f"| normal p50 / p99 | {n['p50_ms']:.0f} / {n['p99_ms']:.0f} ms |"
        if n["p50_ms"] is not None
        else "| normal p50 / p99 | - |",
        f"| 36 MP PNGs | {r['bombs']['requests']}, status {r['bombs']['status']} |",
        f"| slow clients' answers | {r['slow_clients']['answers']}, status "
        f"{r['slow_clients']['status']} |",
        f"| plain-text 5xx | {r['plain_text_5xx']} |",
        f"| server RSS before / peak / 10 s after | {rss['before']:.0f} / {rss['peak']:.0f} / "
        f"{rss['after_10s']:.0f} MB |",
        "",
    ]
    lines += md_targets(r["targets"])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
