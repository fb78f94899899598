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
# Parity is judged relative to each output's own scale: max |ORT - torch| / max |torch|. Official
# HRNet-W32 weights give heatmaps up to ~100 and features up to ~134, where fp32 rounding alone
# reaches 1.3e-4 absolute (about 1e-6 relative), so an absolute tolerance refused good weights.
PARITY_RTOL = 1e-4

# One output's comparison: max_abs_diff, max_abs_reference, relative (their ratio).
ParityReport = dict[str, dict[str, float]]


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with torch by more than the tolerance."""


def worst_abs(report: ParityReport) -> float:
    return max((r["max_abs_diff"] for r in report.values()), default=0.0)


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
    rtol: float = PARITY_RTOL,
    what: str = "",
) -> ParityReport:
    """Run both on the same inputs; raise ParityError if any output's largest difference exceeds
    `rtol` times that output's largest magnitude (fp32). Returns the comparison per output."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    ort_out = sess.run(None, {n: inputs[n] for n in names})
    with torch.no_grad():
        ref = torch_fn(*[torch.from_numpy(inputs[n]) for n in names])
    report: ParityReport = {}
    for name, a, b in zip([o.name for o in sess.get_outputs()], ort_out, ref, strict=True):
        r = b.float().numpy()
        diff = float(np.max(np.abs(a - r))) if a.size else 0.0
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        rel = diff / scale if scale > 0 else diff
        report[name] = {"max_abs_diff": diff, "max_abs_reference": scale, "relative": rel}
        log.info(
            "parity %s %s: max abs diff %.2e of max |torch| %.3g (relative %.2e)",
            what or Path(onnx_path).name,
            name,
            diff,
            scale,
            rel,
        )
    bad = {k: v for k, v in report.items() if v["relative"] > rtol}
    if bad:
        detail = "; ".join(
            f"{k}: {v['max_abs_diff']:.3g} of {v['max_abs_reference']:.3g} "
            f"(relative {v['relative']:.2e})"
            for k, v in bad.items()
        )
        raise ParityError(
            f"{Path(onnx_path).name}: ONNX Runtime differs from torch by more than {rtol:g} of "
            f"the output's scale on random inputs: {detail} (--parity-tolerance overrides)"
        )
    return report


def backbone_parity(
    model: Backbone,
    onnx_path: str | Path,
    batch: int = 3,
    seed: int = 0,
    rtol: float = PARITY_RTOL,
) -> ParityReport:
    h, w = model.config.input_hw
    x = np.random.default_rng(seed).standard_normal((batch, 3, h, w)).astype(np.float32)
    model = model.eval()

    def fn(image: torch.Tensor) -> Sequence[torch.Tensor]:
        heatmaps, features = model(image)
        return heatmaps, features

    return check_parity(fn, onnx_path, {"image": x}, rtol=rtol, what="pose.onnx")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
