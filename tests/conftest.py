"""Shared test fixtures."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
MINI = SHARED / "data" / "coco-val-mini"  # 20 real COCO val2017 images with annotations
# every state-dict key and shape of the official checkpoints (../shared/reference/checkpoints)
MANIFESTS = SHARED / "reference" / "checkpoints"
# for tests that read them: skipped, like the coco-val-mini ones, where ../shared is not beside
needs_manifests = pytest.mark.skipif(
    not MANIFESTS.is_dir(), reason="no ../shared/reference/checkpoints"
)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module: on two cores shared with other jobs, two OpenMP
    threads spin-wait and run 10x slower. Restored afterwards. Use it with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mini_data_config() -> dict[str, Any]:
    """A training-config `data` table that trains and validates on coco-val-mini."""
    return {
        "root": str(MINI),
        "train_ann": "person_keypoints.json",
        "train_images": "images",
        "val_ann": "person_keypoints.json",
        "val_images": "images",
        "synthetic": None,
    }
