"""service.runtime: provider choice with its CPU fallback, and the IO-binding path (run here on
the CPU, the only device CI has; on CUDA the same calls allocate on the GPU)."""

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.bundle import GAMMA_CONTEXT, GAMMA_HEAD, POSE, load_bundle
from models.scio_search import ScioSearchConfig
from service.pipeline import PosePipeline
from service.results import PoseOptions
from service.runtime import (
    INT8_DOT_FLAGS,
    OnnxModel,
    choose_providers,
    parse_cpu_flags,
    runs_on_cpu,
)
from service.scio_onnx import OnnxVerifier

DEMO = Path(__file__).resolve().parents[2] / "bundles" / "demo"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"


def _names(chain: list) -> list[str]:
    return [p if isinstance(p, str) else p[0] for p in chain]


@pytest.mark.parametrize(
    ("device", "available", "expected", "warns"),
    [
        ("cpu", [TRT, CUDA, CPU], [CPU], False),
        ("auto", [CUDA, CPU], [CUDA, CPU], False),
        ("auto", [CPU], [CPU], False),
        ("cuda", [CUDA, CPU], [CUDA, CPU], False),
        ("cuda", [CPU], [CPU], True),
        ("tensorrt", [TRT, CUDA, CPU], [TRT, CUDA, CPU], False),
        ("tensorrt", [CUDA, CPU], [CUDA, CPU], True),
        ("tensorrt", [CPU], [CPU], True),
    ],
)
def test_provider_choice_and_fallback(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    device: str,
    available: list[str],
    expected: list[str],
    warns: bool,
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(available))
    with caplog.at_level(logging.WARNING, logger="service.runtime"):
        chain = choose_providers(device)
    assert _names(chain) == expected
    assert any(r.levelno == logging.WARNING for r in caplog.records) == warns
    if CUDA in expected:  # heuristic cuDNN algorithm search, never the exhaustive one
        options = next(p[1] for p in chain if isinstance(p, tuple) and p[0] == CUDA)
        assert options["cudnn_conv_algo_search"] == "HEURISTIC"


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="device must be one of"):
        choose_providers("npu")


def test_io_binding_gives_the_plain_outputs() -> None:
    path = load_bundle(DEMO).path(POSE)
    assert path is not None
    plain = OnnxModel.load(path, device="cpu")
    bound = OnnxModel.load(path, device="cpu", io_binding=True)
    assert (plain.io_binding, bound.io_binding, bound.device) == (False, True, "cpu")
    x = np.random.default_rng(0).standard_normal((2, 3, 128, 96)).astype(np.float32)
    a = plain.run(image=x)
    b = bound.run(image=x[:, :, :, ::-1][:, :, :, ::-1])  # a non-contiguous view of x
    assert a.keys() == b.keys() == {"heatmaps", "features"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    kept = bound.run_on_device(image=x)
    assert all(isinstance(v, ort.OrtValue) for v in kept.values())
    np.testing.assert_array_equal(kept["heatmaps"].numpy(), a["heatmaps"])
    with pytest.raises(RuntimeError, match="needs io_binding"):
        plain.run_on_device(image=x)
    with pytest.raises(TypeError, match="need io_binding"):
        plain.run(image=kept["heatmaps"])
    with pytest.raises(ValueError, match="missing inputs"):
        bound.run(picture=x)


def test_gamma_context_stays_on_the_device_between_calls() -> None:
    bundle = load_bundle(DEMO)
    ctx_path, head_path = bundle.path(GAMMA_CONTEXT), bundle.path(GAMMA_HEAD)
    assert ctx_path is not None
    assert head_path is not None
    plain = OnnxVerifier(OnnxModel.load(ctx_path, "cpu"), OnnxModel.load(head_path, "cpu"))
    bound = OnnxVerifier(
        OnnxModel.load(ctx_path, "cpu", io_binding=True),
        OnnxModel.load(head_path, "cpu", io_binding=True),
    )
    assert (plain.context_on_device, bound.context_on_device) == (False, True)
    rng = np.random.default_rng(1)
    hw = tuple(bundle.manifest.pose.heatmap_hw)
    c = bundle.manifest.pose.feature_channels
    hb, hc = (rng.random((3, *hw), dtype=np.float32) for _ in range(2))
    f = rng.standard_normal((3, c, *hw)).astype(np.float32)
    group = np.array([0, 1, 2], np.int64)
    ctx_plain, ctx_bound = plain.context(hb, hc, f, group), bound.context(hb, hc, f, group)
    assert all(isinstance(v, ort.OrtValue) for v in ctx_bound)
    hd = rng.random((5, *hw), dtype=np.float32)
    index = np.array([0, 0, 1, 2, 2], np.int64)
    np.testing.assert_allclose(
        bound.head(ctx_bound, index, hd), plain.head(ctx_plain, index, hd), rtol=0, atol=1e-6
    )


def test_the_pipeline_under_io_binding_gives_the_same_poses(tmp_path: Path) -> None:
    from benchmarks.service_bench import synth_image

    img, _, _ = synth_image(2, tmp_path, size=(256, 256))
    search = ScioSearchConfig(iterations=5, prior="phi")  # so the search calls Γ's head
    results = []
    for io_binding in (False, True):
        pipe = PosePipeline.from_path(DEMO, device="cpu", io_binding=io_binding, scio_config=search)
        assert pipe.pose.io_binding == io_binding
        results.append(pipe.estimate(img, PoseOptions(flip=True)))
    plain, bound = results
    assert len(plain.persons) == len(bound.persons) > 0
    moved = 0
    for p, b in zip(plain.persons, bound.persons, strict=True):
        np.testing.assert_allclose(p.keypoints, b.keypoints, rtol=0, atol=1e-4)
        assert [r.accepted for r in p.refinements] == [r.accepted for r in b.refinements]
        moved += sum(r.displacement_px > 0 for r in b.refinements)
    assert moved > 0, "the search moved nothing: Γ's head was not exercised"


def test_usable_cores_without_an_affinity_call(monkeypatch) -> None:
    import os

    from service.runtime import usable_cores

    assert usable_cores() >= 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert usable_cores() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cores() == 1


def test_cpu_flags_are_read_from_x86_and_arm_cpuinfo() -> None:
    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\nbugs\t\t: spectre\n"
    old_x86 = "flags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp sha3\n"
    assert parse_cpu_flags(x86) & INT8_DOT_FLAGS == {"avx512_vnni"}
    assert not parse_cpu_flags(old_x86) & INT8_DOT_FLAGS  # AVX-512 without VNNI
    assert parse_cpu_flags(arm) & INT8_DOT_FLAGS == {"asimddp"}
    assert "spectre" not in parse_cpu_flags(x86)


@pytest.mark.parametrize(
    "available",
    [
        ["CPUExecutionProvider"],
        ["CUDAExecutionProvider", "CPUExecutionProvider"],
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    ],
)
@pytest.mark.parametrize("device", ["auto", "cuda", "tensorrt", "cpu"])
def test_runs_on_cpu_agrees_with_the_provider_choice(
    monkeypatch: pytest.MonkeyPatch, device: str, available: list[str]
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    first = choose_providers(device)[0]
    name = first if isinstance(first, str) else first[0]
    assert runs_on_cpu(device) == (name == "CPUExecutionProvider")
