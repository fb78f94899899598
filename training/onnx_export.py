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

from models.scio_search import PERSON_INDEX
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


def fold_sum_batchnorm(model: onnx.ModelProto) -> int:
    """Fold each BatchNormalization that reads the sum of two convolutions (Φ/Γ's context stem:
    `BN(conv(H_B, H_C) + conv(f))`) into those convolutions, in place; returns how many.

    ONNX Runtime folds a BatchNorm into the convolution right before it, but not through an Add,
    so this one ran as its own pass over every row (about 3 ms of Γ's 57 ms context graph for
    137 rows, 2 of Φ's 69; AMD, one thread). BN(a + b) = s·a + s·b + t with s = γ / √(var + ε),
    t = β − mean·s: both convolutions' weights (and biases) are scaled by s and t goes into the
    second one's bias. Only where nothing else reads the convolutions, the sum or the weights."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    for o in graph.output:
        uses[o.name] = uses.get(o.name, 0) + 1

    def array(name: str) -> npt.NDArray[np.float64]:
        return numpy_helper.to_array(inits[name]).astype(np.float64)

    folded = 0
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        add = producer.get(bn.input[0])
        if add is None or add.op_type != "Add" or uses.get(add.output[0]) != 1:
            continue
        convs = [producer.get(i) for i in add.input]
        if not all(
            c is not None
            and c.op_type == "Conv"
            and uses.get(c.output[0]) == 1
            and c.input[1] in inits
            and uses.get(c.input[1]) == 1
            and (len(c.input) < 3 or not c.input[2] or c.input[2] in inits)
            for c in convs
        ) or not all(x in inits for x in bn.input[1:5]):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (array(x) for x in bn.input[1:5])
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        for k, conv in enumerate(c for c in convs if c is not None):
            w = array(conv.input[1])
            w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))  # per output channel
            inits[conv.input[1]].CopyFrom(
                numpy_helper.from_array(w.astype(np.float32), conv.input[1])
            )
            has_bias = len(conv.input) > 2 and bool(conv.input[2])
            b = array(conv.input[2]) if has_bias else np.zeros_like(scale)
            b = b * scale + (shift if k == 1 else 0.0)
            name = f"{conv.input[1]}.folded_bias"
            graph.initializer.append(numpy_helper.from_array(b.astype(np.float32), name))
            if has_bias:
                conv.input[2] = name
            else:
                conv.input.append(name)
        add.output[0] = bn.output[0]  # the sum now is the normalised sum
        graph.node.remove(bn)
        folded += 1
    if folded:
        used = {i for n in graph.node for i in n.input}
        keep = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return folded


def gather_features_by_person(model: onnx.ModelProto) -> bool:
    """Make a Φ or Γ-context graph take each person's feature map once: `features` becomes
    (P, C, h, w), a new input `person_index` (M,) gives each row's person, and the rows are
    gathered inside the graph right after the one convolution that reads `features` (the context
    stem's 1x1, on a quarter of the channels) instead of by the caller before it. Returns False
    (and changes nothing) when the graph already has the input or another node reads
    `features`. In place."""
    from onnx import TensorProto, helper

    graph = model.graph
    if any(i.name == PERSON_INDEX for i in graph.input):
        return False
    readers = [n for n in graph.node if "features" in n.input]
    if len(readers) != 1 or readers[0].op_type != "Conv":
        return False
    conv = readers[0]
    rows = conv.output[0]
    conv.output[0] = f"{rows}_per_person"
    gather = helper.make_node(
        "Gather", [conv.output[0], PERSON_INDEX], [rows], axis=0, name="rows_of_persons"
    )
    graph.node.insert(list(graph.node).index(conv) + 1, gather)
    graph.input.append(helper.make_tensor_value_info(PERSON_INDEX, TensorProto.INT64, ["M"]))
    for i in graph.input:
        if i.name == "features":
            i.type.tensor_type.shape.dim[0].dim_param = "P"
    onnx.checker.check_model(model)
    return True


def gather_features_by_person_file(path: str | Path) -> bool:
    """`gather_features_by_person` on an ONNX file, rewritten in place (atomically) if changed."""
    return bool(_rewrite_file(path, gather_features_by_person))


def fold_sum_batchnorm_file(path: str | Path) -> int:
    """`fold_sum_batchnorm` on an ONNX file, rewritten in place (atomically) when it changes."""
    return int(_rewrite_file(path, fold_sum_batchnorm))


def _rewrite_file(path: str | Path, graph_pass: Callable[[onnx.ModelProto], int]) -> int:
    """Run `graph_pass` over the file's model; write it back atomically if the pass changed it
    (a true result). Returns the pass's result."""
    path = Path(path)
    model = onnx.load(str(path))
    result = graph_pass(model)
    if result:
        onnx.checker.check_model(model)
        tmp = path.with_name(f".{path.name}.tmp")
        onnx.save(model, str(tmp))
        tmp.replace(path)
    return result


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
