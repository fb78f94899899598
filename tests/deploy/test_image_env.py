"""The CPU image's Python environment, built here as docker/Dockerfile.cpu builds it, runs the
image's own entrypoint on a bundle and answers /health/ready.

There is no Docker engine here, so the Dockerfile is replayed: its builder stage's COPY and RUN
instructions run as written (same lock files, same pip commands) with the image's absolute paths
(/opt, /src, /tmp) moved under a temporary root, then the runtime stage's ENTRYPOINT + CMD run with
its ENV. What this cannot see: the base image itself (OS packages, the user, file permissions,
the read-only root filesystem); the GPU image (onnxruntime-gpu is 250 MB and needs CUDA).
Slow (it installs the lock from the package index); skipped when the index is unreachable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from tests.deploy.dockerfile import Dockerfile, Instruction, Stage
from tests.deploy.support import (
    DOCKERFILES,
    LOCKS,
    REPO,
    normalize,
    python_for,
    read_lock,
    scaled_object,
)
from tests.service.support import server_process, uvicorn_port

pytestmark = pytest.mark.slow

DOCKERFILE = DOCKERFILES["cpu"]
# The image's paths that the build and the runtime use; and the image's `python`, not a venv's.
_ABSOLUTE = re.compile(r"(?<![\w.-])(/(?:opt|src|tmp)(?![\w.-])(?:/\S*)?)")
_PYTHON = re.compile(r"(?<![\w/.-])python3?(?=\s)")


def test_image_environment_runs_the_entrypoint_and_serves_a_bundle(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="the test bundle is built with onnx (train extra)")
    from tests.service.onnx_fakes import make_fake_bundle

    _index_or_skip()
    df = Dockerfile(DOCKERFILE)
    root = tmp_path / "image"  # stands for the image's filesystem
    minor = re.match(r"python:(\d+\.\d+)", df.base_image("builder"))
    assert minor, df.base_image("builder")
    python = python_for(minor[1])  # the image's Python where this machine has it
    _replay_builder(df, root, python)
    _replay_copies(df, df.stage("serve"), root)

    venv = root / "opt" / "venv"
    _check_venv(venv)

    bundle = make_fake_bundle(tmp_path / "bundle")  # built here, with the project's venv
    env = _runtime_env(df, root, bundle)
    command = [_in_root(arg, root) for arg in df.command("runtime")]
    assert Path(command[0]).is_file(), command
    # cwd: not the repository: the installed wheel must be what runs
    with server_process(command, cwd=root, env=env) as (proc, lines):
        port = uvicorn_port(proc, lines, timeout_s=60.0)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=5) as client:
            _until_ready(proc, client, lines)
            assert client.get("/health/live").status_code == 200
            metrics = client.get("/metrics").text
        for name in _autoscaling_metrics():
            assert re.search(rf"^{name}(\{{|\s)", metrics, re.M), f"{name} not on /metrics"
        healthcheck = [_in_root(a, root) for a in df.healthcheck("runtime")[1]]
        assert subprocess.run(healthcheck, env={**env, "SCIO_PORT": str(port)}).returncode == 0
        proc.send_signal(signal.SIGTERM)
        drain = int(env["SCIO_DRAIN_TIMEOUT_S"])
        assert proc.wait(timeout=drain + 10) == 0, "".join(lines)


def _index_or_skip() -> None:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        with urllib.request.urlopen(f"{index}/pip/", timeout=10):
            pass
    except OSError as e:
        pytest.skip(f"the package index {index} is unreachable: {e}")


def _in_root(text: str, root: Path) -> str:
    return _ABSOLUTE.sub(lambda m: f"{root}{m[1]}", text)


def _pip_env(df: Dockerfile) -> dict[str, str]:
    """The builder's environment: its ENV, and pip reading only the index, as in a docker build
    (no pip.conf find-links or local indexes). The pip cache stays on: it cannot change what a
    hash-checked install installs, and saves downloads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(df.env("builder"))
    env.pop("PIP_NO_CACHE_DIR", None)
    env["PIP_CONFIG_FILE"] = os.devnull
    if "PIP_INDEX_URL" in os.environ:
        env["PIP_INDEX_URL"] = os.environ["PIP_INDEX_URL"]
    return env


def _replay_copies(df: Dockerfile, stage: Stage, root: Path) -> None:
    for ins in stage.instructions:
        if ins.keyword == "COPY":
            _copy(df, stage, ins, root)


def _copy(df: Dockerfile, stage: Stage, ins: Instruction, root: Path) -> None:
    sources, destination, from_stage = df.copy_args(ins, stage)
    if from_stage is not None:  # from the builder: already in the same root
        for source in sources:
            assert (root / source.lstrip("/")).exists(), f"{source} missing for {ins}"
        return
    target = root / destination.lstrip("/")
    for source in sources:
        path = REPO / source
        if path.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(path, target, ignore=ignore, dirs_exist_ok=True)
        else:
            dest = target / path.name if destination.endswith("/") else target
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)


def _replay_builder(df: Dockerfile, root: Path, python: str) -> None:
    stage = df.stage("builder")
    env = _pip_env(df)
    for ins in stage.instructions:
        if ins.keyword == "COPY":
            _copy(df, stage, ins, root)
        elif ins.keyword == "RUN":
            script = _PYTHON.sub(python, _in_root(ins.args, root))
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                timeout=540,
            )
            assert result.returncode == 0, f"RUN {ins.args}\n{result.stdout}\n{result.stderr}"


def _check_venv(venv: Path) -> None:
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    installed = {normalize(p["name"]) for p in json.loads(listed.stdout)}
    locked = set(read_lock(LOCKS["cpu"]))
    # the lock, the project, and what `python -m venv` seeds (pip; setuptools before 3.12)
    assert installed - locked <= {"scio-pose", "pip", "setuptools"}, installed - locked
    assert locked <= installed
    assert "torch" not in installed
    no_torch = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
    assert subprocess.run([python, "-c", no_torch], env=env).returncode == 0
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stdout  # every requirement of every package is there


def _runtime_env(df: Dockerfile, root: Path, bundle: Path) -> dict[str, str]:
    """The runtime stage's ENV (paths under root), on the loopback and a port the OS picks; the
    image's SCIO_HOST=0.0.0.0 is checked in test_images.py."""
    env = {k: _in_root(v, root) for k, v in df.env("runtime").items()}
    env["PATH"] = env["PATH"].replace("$PATH", os.environ["PATH"])
    env.update(SCIO_BUNDLE=str(bundle), SCIO_HOST="127.0.0.1", SCIO_PORT="0")
    return env


def _autoscaling_metrics() -> set[str]:
    scaled = scaled_object(REPO / "k8s" / "overlays" / "cpu")
    return set(re.findall(r"\b(scio_pose_\w+)", scaled["spec"]["triggers"][0]["metadata"]["query"]))


def _until_ready(proc: subprocess.Popen[str], client: httpx.Client, lines: list[str]) -> None:
    end = time.monotonic() + 60
    while time.monotonic() < end and proc.poll() is None:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError(
        f"not ready: {client.get('/health/ready').text if proc.poll() is None else ''}\n"
        + "".join(lines)
    )
