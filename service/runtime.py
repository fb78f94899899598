"""ONNX Runtime sessions: provider choice (`SCIO_DEVICE`), threads, and a thin model wrapper.

`auto` takes CUDA when this onnxruntime build offers it, else the CPU. Asking for `cuda` or
`tensorrt` where the provider is missing falls back to the CPU with a logged warning, so a
misconfigured node still serves (slowly) and says why.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
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


# CPU flags of 8-bit dot-product instructions: x86 VNNI (AVX-512 or AVX) and AMX, Arm's dot
# product. Where a CPU has none (x86 before VNNI), ONNX Runtime's u8 x s8 convolutions can
# saturate their 16-bit intermediate sums and lose accuracy, and gain less speed.
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as Linux reports them (empty where it does not)."""
    try:
        return parse_cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of /proc/cpuinfo text (x86 `flags`, Arm `Features` lines)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def cpu_has_int8_dot() -> bool:
    """Whether the CPU runs INT8 convolutions on dot-product instructions (`INT8_DOT_FLAGS`):
    where `precision: auto` picks a bundle's INT8 backbone."""
    return bool(cpu_flags() & INT8_DOT_FLAGS)


def runs_on_cpu(device: str) -> bool:
    """Whether `device` resolves to the CPU in this onnxruntime build (`choose_providers`'s
    choice, without its warnings)."""
    return choose_providers(device, warn=False) == ["CPUExecutionProvider"]


def choose_providers(device: str, warn: bool = True) -> list[str | tuple[str, dict[str, Any]]]:
    """The provider list for `device`, falling back to the CPU when a provider is missing (and
    saying so, with `warn`)."""
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
        if warn:
            log.warning(
                "device=tensorrt but this onnxruntime has no TensorRT provider; using %s",
                "CUDA" if "CUDAExecutionProvider" in available else "the CPU",
            )
        device = "cuda"
    if "CUDAExecutionProvider" in available:
        return [cuda, "CPUExecutionProvider"]
    if device == "cuda" and warn:
        log.warning("device=cuda but this onnxruntime has no CUDA provider; using the CPU")
    return ["CPUExecutionProvider"]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else all)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


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


_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


class OnnxModel:
    """One ONNX model: named inputs in, named outputs out. The only place that calls
    onnxruntime at inference time.

    On CUDA (and TensorRT) every call goes through IO binding: host inputs are bound where they
    are and copied to the GPU once by ONNX Runtime, outputs are allocated on the GPU and copied
    back only when the caller asks for host arrays (`run`); `run_on_device` leaves them there,
    as `OrtValue`s another model on the same device takes as inputs without a round trip (Γ's
    per-group context, computed once and read by every search iteration). On the CPU the plain
    `session.run` is used unless `io_binding=True` is asked for (the tests do, to exercise the
    bound path where there is no GPU).
    """

    def __init__(self, session: ort.InferenceSession, name: str, io_binding: bool | None = None):
        self.session = session
        self.name = name
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        on_gpu = bool(session.get_providers()) and session.get_providers()[0] in _GPU_PROVIDERS
        self.device = "cuda" if on_gpu else "cpu"  # where outputs are allocated
        self.io_binding = on_gpu if io_binding is None else io_binding

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        intra_op_threads: int | None = None,
        io_binding: bool | None = None,
    ) -> OnnxModel:
        session = create_session(path, device, intra_op_threads)
        return cls(session, Path(path).stem, io_binding)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, **inputs: npt.NDArray[Any] | ort.OrtValue) -> dict[str, npt.NDArray[np.float32]]:
        """All outputs as host arrays."""
        if not self.io_binding:
            feeds = self._feeds(inputs)
            if any(isinstance(v, ort.OrtValue) for v in feeds.values()):
                raise TypeError(f"{self.name}: OrtValue inputs need io_binding")
            outs = self.session.run(self.output_names, feeds)
        else:
            outs = self._run_bound(inputs).copy_outputs_to_cpu()
        return dict(zip(self.output_names, outs, strict=True))

    def run_on_device(self, **inputs: npt.NDArray[Any] | ort.OrtValue) -> dict[str, ort.OrtValue]:
        """All outputs as `OrtValue`s where the model ran (GPU memory on CUDA); needs IO binding."""
        if not self.io_binding:
            raise RuntimeError(f"{self.name}: run_on_device needs io_binding")
        outs = self._run_bound(inputs).get_outputs()
        return dict(zip(self.output_names, outs, strict=True))

    def _feeds(
        self, inputs: dict[str, npt.NDArray[Any] | ort.OrtValue]
    ) -> dict[str, npt.NDArray[Any] | ort.OrtValue]:
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise ValueError(f"{self.name}: missing inputs {sorted(missing)}")
        return {k: inputs[k] for k in self.input_names}

    def _run_bound(self, inputs: dict[str, npt.NDArray[Any] | ort.OrtValue]) -> ort.IOBinding:
        binding = self.session.io_binding()
        host = []  # the bound host arrays must outlive the run: ONNX Runtime may read them in place
        for name, value in self._feeds(inputs).items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:  # copied to the device by ONNX Runtime when the model runs there
                host.append(np.ascontiguousarray(value))
                binding.bind_cpu_input(name, host[-1])
        for name in self.output_names:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        del host
        return binding
