"""The image lock files (scripts/lock-serving): complete for the base install, hashed, no torch,
and in step with requirements/constraints.txt."""

from __future__ import annotations

from typing import Any

import pytest
from packaging.requirements import Requirement

from tests.deploy.support import (
    BUILD_LOCK,
    LOCKS,
    normalize,
    pyproject,
    read_constraints,
    read_lock,
)

# Never in a serving image: the training stack and the CUDA wheels torch pulls in (the GPU image
# takes CUDA from its base image).
FORBIDDEN = {"torch", "torchvision", "triton", "ultralytics", "onnx", "opencv-python"}


def _project() -> dict[str, Any]:
    project: dict[str, Any] = pyproject()["project"]  # type: ignore[assignment]
    return project


def _wanted(variant: str) -> list[Requirement]:
    """What the image must hold: the base install; onnxruntime-gpu for onnxruntime on the GPU."""
    project = _project()
    base = [Requirement(r) for r in project["dependencies"]]
    if variant == "cpu":
        return base
    gpu = [Requirement(r) for r in project["optional-dependencies"]["gpu"]]
    return [r for r in base if normalize(r.name) != "onnxruntime"] + gpu


@pytest.mark.parametrize("variant", sorted(LOCKS))
def test_lock_pins_every_base_dependency_with_hashes(variant: str) -> None:
    pins = read_lock(LOCKS[variant])
    for req in _wanted(variant):
        pin = pins.get(normalize(req.name))
        assert pin is not None, f"{LOCKS[variant].name} does not pin {req.name}"
        assert req.specifier.contains(pin.version, prereleases=True), (req, pin.version)
    for name, pin in pins.items():
        assert pin.hashes, f"{name} has no hash: pip --require-hashes would refuse the lock"


@pytest.mark.parametrize("variant", sorted(LOCKS))
def test_lock_holds_no_torch_and_one_onnxruntime(variant: str) -> None:
    pins = set(read_lock(LOCKS[variant]))
    assert not pins & FORBIDDEN, pins & FORBIDDEN
    assert not {p for p in pins if p.startswith("nvidia-")}, "CUDA comes from the base image"
    runtimes = pins & {"onnxruntime", "onnxruntime-gpu"}
    assert runtimes == {"onnxruntime" if variant == "cpu" else "onnxruntime-gpu"}


@pytest.mark.parametrize("lock", [*LOCKS.values(), BUILD_LOCK], ids=lambda p: p.name)
def test_lock_agrees_with_the_constraints(lock: Any) -> None:
    constraints = read_constraints()
    pins = read_lock(lock)
    differ = {
        name: (pin.version, constraints[name])
        for name, pin in pins.items()
        if name in constraints and constraints[name] != pin.version
    }
    assert not differ, f"{lock.name} vs constraints.txt (lock, constraint): {differ}"


def test_build_lock_pins_the_build_backend() -> None:
    pins = read_lock(BUILD_LOCK)
    build: dict[str, Any] = pyproject()["build-system"]  # type: ignore[assignment]
    for req in map(Requirement, build["requires"]):
        pin = pins.get(normalize(req.name))
        assert pin is not None, f"build.lock does not pin {req.name}"
        assert req.specifier.contains(pin.version), (req, pin.version)
        assert pin.hashes
