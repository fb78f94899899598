"""Hostile clients against a real uvicorn process (the fake estimator, so only the service's own
costs count): slow uploads do not take admission slots, and decoding big images stays within
the decode budget, with RSS read from /proc."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.support import png_of, rgb_pattern, server_process, uvicorn_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")


@contextlib.contextmanager
def _server(**settings: str) -> Iterator[tuple[str, int, list[str]]]:
    command = [sys.executable, "-m", "tests.service.serve_fake", "0.02"]
    env = {**os.environ, "PYTHONPATH": str(REPO), **settings}
    with server_process(command, cwd=REPO, env=env) as (proc, lines):
        port = uvicorn_port(proc, lines, timeout_s=20.0)
        base = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 20
        while httpx.get(f"{base}/health/ready").status_code != 200:
            assert time.monotonic() < end
            time.sleep(0.05)
        yield base, proc.pid, lines


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def _trickle(port: int, stop: threading.Event, answers: list[bytes]) -> None:
    """Headers of a 1000-byte PNG upload, then one byte every 0.5 s until the server answers."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(
            b"POST /pose HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        s.settimeout(0.5)
        data = b""
        while not stop.is_set():
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                with contextlib.suppress(OSError):  # the server may have answered and closed
                    s.sendall(b"\x89")
                continue
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        answers.append(data)


def test_slow_uploads_hold_no_admission_slot_and_get_408() -> None:
    with _server(SCIO_BODY_TIMEOUT_S="3") as (base, _, _lines):
        port = int(base.rsplit(":", 1)[1])
        stop = threading.Event()
        answers: list[bytes] = []
        slow = [threading.Thread(target=_trickle, args=(port, stop, answers)) for _ in range(34)]
        for t in slow:
            t.start()
        time.sleep(0.5)
        png = png_of(rgb_pattern(64, 48))
        with httpx.Client(base_url=base, timeout=10) as c:
            codes = [
                c.post("/pose", content=png, headers={"content-type": "image/png"}).status_code
                for _ in range(20)
            ]
            metrics = c.get("/metrics").text
        assert codes == [200] * 20
        assert "scio_pose_queue_depth 0.0" in metrics  # trickling bodies are not queued work
        end = time.monotonic() + 10
        while len(answers) < 34 and time.monotonic() < end:
            time.sleep(0.1)
        stop.set()
        for t in slow:
            t.join(timeout=5)
        assert len(answers) == 34
        assert all(a.startswith(b"HTTP/1.1 408") and b"body_timeout" in a for a in answers), (
            answers[:2]
        )
        with httpx.Client(base_url=base, timeout=10) as c:
            assert (
                'scio_pose_rejections_total{reason="body_timeout"} 34.0' in c.get("/metrics").text
            )


@pytest.fixture(scope="module")
def big_png(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 36-megapixel RGBA PNG (6000x6000), under a megabyte on the wire."""
    a = np.zeros((6000, 6000, 4), np.uint8)
    a[..., 3] = 128
    a[::7, ::5, 0] = 200
    path = tmp_path_factory.mktemp("big") / "big.png"
    Image.fromarray(a).save(path, "PNG", compress_level=1)
    return path.read_bytes()


def test_four_36_megapixel_pngs_stay_within_the_decode_budget(big_png: bytes) -> None:
    with _server() as (base, pid, lines):
        png = png_of(rgb_pattern(64, 48))
        with httpx.Client(base_url=base, timeout=60) as c:
            for _ in range(3):
                c.post("/pose", content=png, headers={"content-type": "image/png"})
        before = _kib(pid, "VmRSS")

        def post() -> int:
            r = httpx.post(
                f"{base}/pose", content=big_png, headers={"content-type": "image/png"}, timeout=60
            )
            return r.status_code

        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: post(), range(4)))
        peak = _kib(pid, "VmHWM")
        time.sleep(10)
        after = _kib(pid, "VmRSS")
        with httpx.Client(base_url=base, timeout=10) as c:
            metrics = c.get("/metrics").text
    assert codes == [200] * 4, "".join(lines[-20:])
    # measured: a 36 MP RGBA PNG cost 1.0-1.35 GB to decode before the budget and the row-block
    # conversion; four at once went over 3 GB
    assert peak < 1.5 * 1024 * 1024, f"peak RSS {peak / 1024:.0f} MB"
    assert after - before < 200 * 1024, f"RSS {before / 1024:.0f} -> {after / 1024:.0f} MB"
    assert "scio_pose_decode_bytes_held 0.0" in metrics
    assert "scio_pose_decodes_running 0.0" in metrics


def test_an_image_larger_than_the_whole_budget_is_413(big_png: bytes) -> None:
    with _server(SCIO_DECODE_MEMORY_MB="128") as (base, _, _lines):
        r = httpx.post(
            f"{base}/pose", content=big_png, headers={"content-type": "image/png"}, timeout=60
        )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "image_too_large_to_decode"
    assert "SCIO_DECODE_MEMORY_MB" in r.json()["error"]["message"]


def _raw(port: int, payload: bytes, wait_s: float = 5.0) -> bytes:
    """Send `payload` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(payload)
        s.settimeout(wait_s)
        data = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(4096):
                data += chunk
        return data


def _json_error(answer: bytes) -> tuple[int, str]:
    import json

    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert b"content-type: application/json" in head.lower(), answer
    return status, json.loads(body)["error"]["code"]


def test_connection_limits_and_malformed_http_answer_json() -> None:
    with _server(SCIO_HEADER_TIMEOUT_S="1", SCIO_MAX_CONNECTIONS="20") as (base, _, _lines):
        port = int(base.rsplit(":", 1)[1])
        # half a request line, then nothing: 408 after the header timeout, connection closed
        t = time.monotonic()
        assert _json_error(_raw(port, b"POST /pose HTT")) == (408, "header_timeout")
        assert time.monotonic() - t < 4
        # an idle connection that never sent a byte is closed without an answer
        assert _raw(port, b"") == b""
        # over-long request line, negative Content-Length: JSON 400s
        long_line = b"GET /" + b"a" * 40000  # no end in sight past SCIO_MAX_HEADER_BYTES
        assert _json_error(_raw(port, long_line)) == (400, "bad_http_request")
        neg = b"POST /pose HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"
        assert _json_error(_raw(port, neg)) == (400, "bad_http_request")
        # idle half-open connections: past the cap each new one gets a JSON 503
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(25)]
        try:
            for s in held:
                s.sendall(b"GET /health/li")
            time.sleep(0.3)
            refused = _raw(port, b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _json_error(refused) == (503, "too_many_connections")
            time.sleep(1.5)  # the header timeout closes the half-open ones
            assert httpx.get(f"{base}/health/live").status_code == 200
        finally:
            for s in held:
                s.close()
