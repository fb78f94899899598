"""Shared by the deploy tests: repository paths, lock-file parsing, the service's setting names."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"gpu": REPO / "docker" / "Dockerfile", "cpu": REPO / "docker" / "Dockerfile.cpu"}
LOCKS = {
    "gpu": REPO / "requirements" / "serve-gpu.lock",
    "cpu": REPO / "requirements" / "serve-cpu.lock",
}
BUILD_LOCK = REPO / "requirements" / "build.lock"
CONSTRAINTS = REPO / "requirements" / "constraints.txt"


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]


def normalize(name: str) -> str:
    """PEP 503: Typing_Extensions, typing.extensions and typing-extensions are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, Pin]:
    """Pins from `name==version \\` lines and the `--hash=sha256:...` lines after them."""
    pins: dict[str, Pin] = {}
    entries = re.split(r"\n(?=[A-Za-z0-9])", path.read_text())
    for entry in entries:
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", entry)
        if m:
            hashes = tuple(re.findall(r"--hash=(sha256:[0-9a-f]{64})", entry))
            pins[normalize(m[1])] = Pin(m[2], hashes)
    return pins


def read_constraints() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if m:
            out[normalize(m[1])] = m[2]
    return out


def pyproject() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((REPO / "pyproject.toml").read_text())
    return project


def setting_env_names() -> set[str]:
    """Every environment variable the service reads: SCIO_ + a Settings field."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def python_for(minor: str) -> str:
    """A working `python<minor>` (pyenv shims exist but fail), else this interpreter."""
    found = shutil.which(f"python{minor}")
    if found:
        probe = subprocess.run([found, "-c", "import sys, venv"], capture_output=True)
        if probe.returncode == 0:
            return found
    return sys.executable


def settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the service builds from exactly this environment (validating every value)."""
    for name in [n for n in os.environ if n.startswith("SCIO_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def scaled_object(overlay: Path) -> dict[str, Any]:
    """The overlay's KEDA ScaledObject, freshly rendered."""
    from tests.deploy.kustomize_lite import render

    (scaled,) = [o for o in render(overlay) if o["kind"] == "ScaledObject"]
    return scaled
