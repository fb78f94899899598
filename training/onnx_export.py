"""ONNX export of the backbone, with the parity check every export runs.

`pose.onnx`: input `image` [N, 3, H, W] (normalised float32, in the model's colour order),
outputs `heatmaps` [N, K, h, w] and `features` [N, C, h, w], dynamic N. Exported with the
TorchScript-based exporter (`dynamo=False`), which handles HRNet's fuse layers cleanly.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import torch
from torch import nn

from models.zoo import Backbone

log = logging.getLogger(__name__)
OPSET = 17
PARITY_ATOL = 1e-4


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with torch by more than the tolerance."""


def export_backbone(model: Backbone, path: str | Path, opset: int = OPSET) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    h, w = model.config.input_hw
    dummy = torch.zeros(2, 3, h, w)
    tmp = path.with_name(f".{path.name}.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes, not ours to fix
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            input_names=["image"],
            output_names=["heatmaps", "features"],
            dynamic_axes={"image": {0: "N"}, "heatmaps": {0: "N"}, "features": {0: "N"}},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(tmp))
    tmp.replace(path)
    return path


def check_parity(
    torch_fn: Callable[..., Sequence[torch.Tensor]],
    onnx_path: str | Path,
    inputs: dict[str, npt.NDArray[np.generic]],
    atol: float = PARITY_ATOL,
    what: str = "",
) -> float:
    """Run both on the same inputs; raise ParityError if any output differs by more than `atol`
    (fp32). Returns the largest absolute difference."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    ort_out = sess.run(None, {n: inputs[n] for n in names})
    with torch.no_grad():
        ref = torch_fn(*[torch.from_numpy(inputs[n]) for n in names])
    worst = 0.0
    for name, a, b in zip([o.name for o in sess.get_outputs()], ort_out, ref, strict=True):
        diff = float(np.max(np.abs(a - b.float().numpy()))) if a.size else 0.0
        log.info("parity %s %s: max abs diff %.2e", what or Path(onnx_path).name, name, diff)
        worst = max(worst, diff)
    if worst > atol:
        raise ParityError(
            f"{Path(onnx_path).name}: ONNX Runtime differs from torch by {worst:.3g} "
            f"(> {atol:g}) on random inputs"
        )
    return worst


def backbone_parity(model: Backbone, onnx_path: str | Path, batch: int = 3, seed: int = 0) -> float:
    h, w = model.config.input_hw
    x = np.random.default_rng(seed).standard_normal((batch, 3, h, w)).astype(np.float32)
    model = model.eval()

    def fn(image: torch.Tensor) -> Sequence[torch.Tensor]:
        heatmaps, features = model(image)
        return heatmaps, features

    return check_parity(fn, onnx_path, {"image": x}, what="pose.onnx")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
