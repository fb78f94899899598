"""Helpers for the service tests: a ready TestClient on a fake, and images built in memory."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from fastapi.testclient import TestClient
from PIL import Image

from service.app import EstimatorFactory, create_app
from service.settings import Settings
from tests.service.fakes import FakeEstimator, factory_for


def wait_ready(client: TestClient, timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while client.get("/health/ready").status_code != 200:
        if time.monotonic() > end:
            raise AssertionError(f"not ready: {client.get('/health/ready').json()}")
        time.sleep(0.005)


@contextmanager
def serve(
    estimator: FakeEstimator | None = None,
    *,
    factory: EstimatorFactory | None = None,
    ready: bool = True,
    raise_server_exceptions: bool = True,
    **settings: Any,
) -> Iterator[TestClient]:
    """A running app (lifespan entered) on the fake, waited until ready unless `ready=False`."""
    app = create_app(Settings(**settings), factory or factory_for(estimator or FakeEstimator()))
    with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
        if ready:
            wait_ready(client)
        yield client


@contextmanager
def bundle_client(bundle: Path) -> Iterator[TestClient]:
    """The real app on a bundle's real pipeline (CPU), waited until ready."""
    with TestClient(create_app(Settings(bundle=bundle, device="cpu"))) as client:
        wait_ready(client, timeout_s=30.0)
        yield client


def rgb_pattern(w: int = 64, h: int = 48) -> npt.NDArray[np.uint8]:
    """A deterministic RGB image with different values in every channel and position."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 4) % 256, (y * 5) % 256, (x * 3 + y * 7) % 256], axis=2).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_of(array: npt.NDArray[np.uint8]) -> bytes:
    return encode(Image.fromarray(array), "PNG")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h (8-bit RGB) with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def png_bomb(w: int, h: int) -> bytes:
    """A real, valid w x h 8-bit grey PNG of zeros: tiny on the wire, w*h bytes decoded."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" * (w + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def post_image(client: TestClient, data: bytes, ctype: str = "image/png", **params: Any) -> Any:
    return client.post("/pose", content=data, headers={"content-type": ctype}, params=params)


@contextmanager
def server_process(
    command: list[str], **popen: Any
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """A server subprocess with its output collected line by line; killed if still running."""
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)


def uvicorn_port(proc: subprocess.Popen[str], lines: list[str], timeout_s: float) -> int:
    """The port uvicorn says it listens on (127.0.0.1), once it says so."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and proc.poll() is None:
        for line in list(lines):
            if m := re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line):
                return int(m[1])
        time.sleep(0.02)
    raise AssertionError("the server did not start:\n" + "".join(lines))
