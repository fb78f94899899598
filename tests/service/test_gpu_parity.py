"""benchmarks/gpu_parity.py: the service's CUDA path against its CPU path on the demo bundle."""

from pathlib import Path

import onnxruntime as ort
import pytest

from benchmarks.gpu_parity import compare

DEMO = Path(__file__).resolve().parents[2] / "bundles" / "demo"


def test_the_cpu_against_itself_is_identical() -> None:
    r = compare(DEMO, "cpu", images=2, timing=False)
    assert r["keypoints"] >= 17 * 2  # at least one person an image
    assert r["within_0.01px"] == 1.0
    assert r["max_px"] == 0.0
    assert r["max_score_diff"] == 0.0


@pytest.mark.gpu
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA provider"
)
def test_cuda_poses_as_the_cpu_does() -> None:
    r = compare(DEMO, "cuda", images=4, timing=False)
    assert r["providers"][0] == "CUDAExecutionProvider"
    assert r["within_0.05px"] >= 0.99, r
