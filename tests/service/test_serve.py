"""`scio-pose serve`: the verb's wiring, and a real uvicorn process draining on SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service import cli, serve
from tests.service.support import png_of, rgb_pattern, server_process, uvicorn_port

REPO = Path(__file__).resolve().parents[2]


def test_serve_verb_builds_the_app_from_settings_and_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    captured: dict[str, Any] = {}

    def fake_serve_app(app: Any, **kwargs: Any) -> None:
        captured.update(kwargs, app=app)

    monkeypatch.setenv("SCIO_DRAIN_TIMEOUT_S", "7")
    monkeypatch.setattr(serve, "serve_app", fake_serve_app)
    rc = cli.main(["serve", "--host", "0.0.0.0", "--port", "0", "--bundle", str(tmp_path)])
    assert rc == 0
    assert (captured["host"], captured["port"], captured["drain_timeout_s"]) == ("0.0.0.0", 0, 7)
    with TestClient(captured["app"]) as client:  # no bundle there: up, not ready, says why
        for _ in range(400):
            r = client.get("/health/ready")
            if r.json()["error"]["code"] == "load_failed":
                break
            time.sleep(0.01)
        assert client.get("/health/live").status_code == 200
    assert r.status_code == 503
    assert "BundleError" in r.json()["error"]["message"]
    assert str(tmp_path) not in r.json()["error"]["message"]  # server paths stay in the log


def test_sigterm_flips_readiness_drains_in_flight_requests_and_exits_0() -> None:
    command = [sys.executable, "-m", "tests.service.serve_fake", "1.0"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with server_process(command, cwd=REPO, env=env) as (proc, lines):
        base = f"http://127.0.0.1:{uvicorn_port(proc, lines, timeout_s=20.0)}"
        with httpx.Client(base_url=base, timeout=10) as c:
            _until(lambda: c.get("/health/ready").status_code == 200)
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(_post, base)
            with httpx.Client(base_url=base, timeout=10) as c:
                _until(lambda: "scio_pose_pipeline_calls_in_flight 1.0" in c.get("/metrics").text)
            proc.send_signal(signal.SIGTERM)
            response = in_flight.result(timeout=15)
        assert response.status_code == 200
        assert len(response.json()["persons"]) == 1
        assert proc.wait(timeout=15) == 0
    log = "".join(lines)
    drained = log.find("draining: /health/ready now answers 503")
    answered = log.find('"POST /pose HTTP/1.1" 200')
    assert 0 <= drained < answered, log  # readiness flipped while the request was in flight
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/health/live", timeout=2)


def test_the_drain_ends_with_json_503s_and_no_traceback() -> None:
    """Six requests on a 3 s pipeline with one slot, a 1 s drain: the one running when the drain
    ends and those still waiting are cancelled by uvicorn; each gets a JSON 503, not a 500."""
    command = [sys.executable, "-m", "tests.service.serve_fake", "3.0", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with server_process(command, cwd=REPO, env=env) as (proc, lines):
        base = f"http://127.0.0.1:{uvicorn_port(proc, lines, timeout_s=20.0)}"
        with httpx.Client(base_url=base, timeout=10) as c:
            _until(lambda: c.get("/health/ready").status_code == 200)
        with ThreadPoolExecutor(6) as pool:
            answers = [pool.submit(_post, base) for _ in range(6)]
            with httpx.Client(base_url=base, timeout=10) as c:

                def all_arrived() -> bool:  # two running, four admitted and waiting
                    text = c.get("/metrics").text
                    running = "scio_pose_pipeline_calls_in_flight 2.0" in text
                    return running and "scio_pose_queue_depth 4.0" in text

                _until(all_arrived, timeout_s=30.0)
            proc.send_signal(signal.SIGTERM)
            responses = [a.result(timeout=30) for a in answers]
        assert proc.wait(timeout=30) == 0
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 503}, codes
    assert 503 in codes
    for r in responses:
        if r.status_code == 503:
            assert r.headers["content-type"] == "application/json"
            assert r.json()["error"]["code"] == "shutting_down"
    log = "".join(lines)
    assert "Traceback" not in log, log
    assert "CancelledError" not in log, log


def _post(base: str) -> httpx.Response:
    data = png_of(rgb_pattern(32, 24))
    return httpx.post(
        f"{base}/pose", content=data, headers={"content-type": "image/png"}, timeout=15
    )


def _until(cond: Any, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.02)


def test_a_bad_setting_is_one_clear_line_per_setting_not_a_traceback() -> None:
    import subprocess

    env = {**os.environ, "SCIO_PORT": "abc", "SCIO_LOG_FORMAT": "xml"}
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert any(line.startswith("scio-pose serve: invalid setting SCIO_PORT:") for line in lines)
    assert any("SCIO_LOG_FORMAT" in line for line in lines)
