"""ONNX Runtime sessions: provider choice (`SCIO_DEVICE`), threads, and a thin model wrapper.

`auto` takes CUDA when this onnxruntime build offers it, else the CPU. Asking for `cuda` or
`tensorrt` where the provider is missing falls back to the CPU with a logged warning, so a
misconfigured node still serves (slowly) and says why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "tensorrt", "cpu")

_CUDA_OPTIONS = {
    # Heuristic algorithm choice: no exhaustive benchmark at start-up, good kernels anyway.
    "cudnn_conv_algo_search": "HEURISTIC",
    "do_copy_in_default_stream": "1",
}


def choose_providers(device: str) -> list[str | tuple[str, dict[str, Any]]]:
    """The provider list for `device`, falling back to the CPU when a provider is missing."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    available = set(ort.get_available_providers())
    cuda = ("CUDAExecutionProvider", dict(_CUDA_OPTIONS))
    trt = (
        "TensorrtExecutionProvider",
        {"trt_fp16_enable": "0", "trt_engine_cache_enable": "1", "trt_engine_cache_path": "/tmp"},
    )
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "tensorrt":
        if "TensorrtExecutionProvider" in available:
            chain: list[str | tuple[str, dict[str, Any]]] = [trt]
            if "CUDAExecutionProvider" in available:
                chain.append(cuda)
            return [*chain, "CPUExecutionProvider"]
        log.warning(
            "device=tensorrt but this onnxruntime has no TensorRT provider; using %s",
            "CUDA" if "CUDAExecutionProvider" in available else "the CPU",
        )
        device = "cuda"
    if "CUDAExecutionProvider" in available:
        return [cuda, "CPUExecutionProvider"]
    if device == "cuda":
        log.warning("device=cuda but this onnxruntime has no CUDA provider; using the CPU")
    return ["CPUExecutionProvider"]


def create_session(
    path: str | Path, device: str = "auto", intra_op_threads: int | None = None
) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    opts.log_severity_level = 3  # errors only; ORT's warnings about unused initialisers are noise
    # A request runs several sessions in turn (detector, backbone, Φ, Γ), each with its own
    # thread pool. Spinning idle threads of one session then steal the cores from the next:
    # measured on 2 cores, 20 persons with SCIO, the backbone took 120 ms with spinning and 43 ms
    # without (the whole pipeline 201 ms against 102 ms).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=choose_providers(device))


class OnnxModel:
    """One ONNX model: named float32 inputs in, named outputs out. The only place that calls
    onnxruntime at inference time."""

    def __init__(self, session: ort.InferenceSession, name: str) -> None:
        self.session = session
        self.name = name
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    @classmethod
    def load(
        cls, path: str | Path, device: str = "auto", intra_op_threads: int | None = None
    ) -> OnnxModel:
        return cls(create_session(path, device, intra_op_threads), Path(path).stem)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, **inputs: npt.NDArray[Any]) -> dict[str, npt.NDArray[np.float32]]:
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise ValueError(f"{self.name}: missing inputs {sorted(missing)}")
        outs = self.session.run(self.output_names, {k: inputs[k] for k in self.input_names})
        return dict(zip(self.output_names, outs, strict=True))
