"""An ultralytics checkpoint recovered from a bundle's `detector.onnx`, for when the training
run's `.pt` is gone and the detector should train on (`scio-pose train detector --weights`).

    python -m training.recover_detector --bundle bundles/demo --images POOL/images \
        --out RUN/recovered.pt

ultralytics folds each convolution's BatchNorm into it before export, so the ONNX file holds one
weight and one bias per `Conv` block. Unlike `training.recover_backbone` (eval mode only), the
checkpoint must be a starting point for more training, where BatchNorm normalises by each batch's
statistics: a BatchNorm that only added the folded bias would normalise activations the network
never saw. So the BatchNorms are calibrated: with the folded weights in place, the per-channel mean
and variance of every convolution's output over `--images` (images the detector was trained on)
become the BatchNorm's running statistics, and its scale and shift are set so that in eval mode it
computes exactly the folded `W x + b` again:

    running_mean = E[W x],  running_var = Var[W x],  weight = sqrt(var + eps),  bias = b + mean

In training mode a batch like the calibration images then sees nearly the same function. The
model is rebuilt from the model yaml (`yolo11n.yaml` by default, the builds' model) with the
bundle's classes; every weight comes from the file by name, and the recovered model is checked
against the file (ONNX Runtime, the same images, boxes before NMS) before it is written.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import torch
from onnx import numpy_helper
from torch import nn

log = logging.getLogger(__name__)
ONNX_PREFIX = "model."  # ultralytics exports the DetectionModel wrapped once more


class DetectorRecoveryError(ValueError):
    """The ONNX file does not fit the model yaml."""


def onnx_weights(model: onnx.ModelProto) -> dict[str, npt.NDArray[np.float32]]:
    """The file's weights under the model's parameter names: the named initializers (without
    the exporter's extra `model.` prefix), and each convolution's weight and bias under the
    module its node name gives, because the exporter shares equal initializers between layers
    (untrained head biases) under one of their names."""
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}
    out = {}
    for name, value in inits.items():
        if name.startswith(ONNX_PREFIX + "model."):
            out[name[len(ONNX_PREFIX) :]] = value
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        module = _module_of(node.name)
        for i, kind in ((1, "weight"), (2, "bias")):
            if module and len(node.input) > i and node.input[i] in inits:
                out.setdefault(f"{module}.{kind}", inits[node.input[i]])
    return out


def _module_of(node_name: str) -> str:
    """'/model/model.23/cv2.1/cv2.1.2/Conv' -> 'model.23.cv2.1.2' (a scope that repeats its
    parent's name, as a container's child does, replaces it); '' for other names."""
    scopes = node_name.strip("/").split("/")[:-1]
    if len(scopes) < 2 or scopes[0] != ONNX_PREFIX.rstrip("."):
        return ""
    parts: list[str] = []
    for scope in scopes[1:]:
        if parts and scope.startswith(parts[-1] + "."):
            parts[-1] = scope
        else:
            parts.append(scope)
    return ".".join(parts)


def load_images(paths: list[Path], imgsz: int) -> torch.Tensor:
    """Images as the detector sees them: RGB in [0, 1], letterboxed to a square of `imgsz` by
    the service's own letterbox (ultralytics'), NCHW float32."""
    import cv2

    from service.detector import letterbox

    batch = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise DetectorRecoveryError(f"cannot read image {p}")
        padded, _, _ = letterbox(np.ascontiguousarray(img[:, :, ::-1]), (imgsz, imgsz))
        batch.append(padded.transpose(2, 0, 1))
    return torch.from_numpy(np.ascontiguousarray(np.stack(batch))).float() / 255.0


def build_model(yaml: str, nc: int) -> nn.Module:
    from ultralytics.nn.tasks import DetectionModel

    model: nn.Module = DetectionModel(yaml, nc=nc, verbose=False)
    return model


def load_calibrated(
    model: nn.Module, weights: dict[str, npt.NDArray[np.float32]], images: torch.Tensor
) -> dict[str, int]:
    """Put the folded weights into `model` (ultralytics' `Conv` blocks: conv + BatchNorm; plain
    convolutions with a bias: by name) and calibrate each BatchNorm on `images` (module doc).
    Returns counts of what was loaded."""
    from ultralytics.nn.modules.conv import Conv

    state = model.state_dict()
    done: set[str] = set()

    def put(key: str, value: npt.NDArray[np.float32] | torch.Tensor) -> None:
        if key not in state:
            raise DetectorRecoveryError(f"no parameter {key} in the model")
        t = torch.as_tensor(value, dtype=torch.float32)
        if tuple(state[key].shape) != tuple(t.shape):
            raise DetectorRecoveryError(
                f"{key}: {tuple(t.shape)} in the file, {tuple(state[key].shape)} in the model"
            )
        state[key].copy_(t)
        done.add(key)

    blocks = {n: m for n, m in model.named_modules() if isinstance(m, Conv) and hasattr(m, "bn")}
    bias: dict[str, npt.NDArray[np.float32]] = {}
    for name, block in blocks.items():
        w, b = weights.get(f"{name}.conv.weight"), weights.get(f"{name}.conv.bias")
        if w is None or b is None:
            raise DetectorRecoveryError(f"the file has no folded weights for {name}")
        put(f"{name}.conv.weight", w)
        # first pass: BatchNorm as the identity plus the folded bias
        eps = float(block.bn.eps)
        put(f"{name}.bn.weight", np.ones_like(b))
        put(f"{name}.bn.bias", b)
        put(f"{name}.bn.running_mean", np.zeros_like(b))
        put(f"{name}.bn.running_var", np.full_like(b, 1.0 - eps))
        bias[name] = b
    for key, value in weights.items():  # unfolded convolutions (the heads' last layers), DFL
        if key in state and key not in done:
            put(key, value)
    missing = sorted(k for k in state if k not in done and not k.endswith("num_batches_tracked"))
    if missing:
        raise DetectorRecoveryError(f"no weights in the file for {len(missing)}: {missing[:5]}")
    model.load_state_dict(state, strict=True)

    # second pass: each Conv block's pre-BatchNorm output statistics on the images
    sums: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def hook(name: str) -> Any:
        def on_conv(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            o = out.double()
            s1, s2, n = o.sum((0, 2, 3)), (o * o).sum((0, 2, 3)), o.numel() // o.shape[1]
            if name in sums:  # a block run twice adds up
                p1, p2, pn = sums[name]
                s1, s2, n = s1 + p1, s2 + p2, n + pn
            sums[name] = (s1, s2, n)

        return on_conv

    handles = [b.conv.register_forward_hook(hook(n)) for n, b in blocks.items()]
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        for h in handles:
            h.remove()
    for name, block in blocks.items():
        s1, s2, n = sums[name]
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp_min(0.0)
        eps = float(block.bn.eps)
        with torch.no_grad():
            block.bn.running_mean.copy_(mean.float())
            block.bn.running_var.copy_(var.float())
            block.bn.weight.copy_(torch.sqrt(var + eps).float())
            block.bn.bias.copy_(torch.from_numpy(bias[name]) + mean.float())
    model.eval()
    return {"conv_blocks": len(blocks), "tensors": len(done)}


def raw_outputs(model: onnx.ModelProto, images: torch.Tensor) -> npt.NDArray[np.float32]:
    """The file's pre-NMS head output (boxes and class scores for every anchor) per image
    (`model` gains that output)."""
    import onnxruntime as ort

    graph = model.graph
    # the Detect head's concatenated output feeds the NMS part of the graph
    target = None
    for node in graph.node:
        if node.op_type == "Concat" and node.name.startswith("/model/model.23/"):
            target = node.output[0]  # the last such Concat is the head's (boxes, scores)
    if target is None:
        raise DetectorRecoveryError("no Detect head output found in the file")
    graph.output.append(onnx.helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = [sess.run([target], {name: images[i : i + 1].numpy()})[0] for i in range(len(images))]
    return np.concatenate(outs)


def recover(
    onnx_path: Path,
    image_paths: list[Path],
    out: Path,
    yaml: str = "yolo11n.yaml",
    imgsz: int | None = None,
    config_dir: Path | None = None,
) -> dict[str, Any]:
    """Rebuild, load, calibrate, check against the file and write the ultralytics checkpoint.
    Returns the check."""
    from training.detector import ultralytics_offline

    ul = ultralytics_offline(config_dir or out.parent / ".ultralytics")
    exported = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in exported.metadata_props}
    names = {
        int(k): str(v) for k, v in ast.literal_eval(meta.get("names", "{0: 'person'}")).items()
    }
    size = imgsz or json.loads(meta.get("imgsz", "[256, 256]"))[0]
    images = load_images(image_paths, size)
    model = build_model(yaml, len(names))
    counts = load_calibrated(model, onnx_weights(exported), images)
    setattr(model, "names", names)  # noqa: B010 (ultralytics reads it; not a torch attribute)
    with torch.no_grad():
        mine = model.eval()(images)
    mine = (mine[0] if isinstance(mine, (list, tuple)) else mine).numpy().copy()
    # the export with NMS inside writes corners (x1, y1, x2, y2); the model centre and size
    cxy, wh = mine[:, 0:2].copy(), mine[:, 2:4].copy()
    mine[:, 0:2], mine[:, 2:4] = cxy - wh / 2, cxy + wh / 2
    theirs = raw_outputs(exported, images)
    if mine.shape != theirs.shape:
        raise DetectorRecoveryError(f"head output {mine.shape} here, {theirs.shape} in the file")
    diff = float(np.abs(mine - theirs).max())
    scale = float(np.abs(theirs).max())
    check = {
        "images": len(images),
        "max_abs_diff": diff,
        "max_abs_reference": scale,
        "relative": diff / max(scale, 1e-12),
        **counts,
    }
    if check["relative"] > 1e-4:
        raise DetectorRecoveryError(f"the recovered model differs from the file: {check}")
    save_ultralytics_checkpoint(
        model,
        out,
        ul.__version__,
        {"imgsz": size, "task": "detect"},
        recovered_from={
            "onnx": str(onnx_path),
            "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
            "check": check,
        },
    )
    return check


def save_ultralytics_checkpoint(
    model: nn.Module, out: Path, version: str, train_args: dict[str, Any], **extra: Any
) -> None:
    """`model` as a checkpoint that `ultralytics.YOLO(out)` loads and trains on (the keys its
    loader reads; float32, not ultralytics' own half precision), written atomically."""
    ckpt = {
        "date": datetime.now(UTC).isoformat(),
        "version": version,
        "epoch": -1,
        "best_fitness": None,
        "model": model.float(),
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": train_args,
        **extra,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".part")
    try:
        torch.save(ckpt, tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--bundle", type=Path, required=True, help="a bundle folder (its detector.onnx)"
    )
    ap.add_argument(
        "--images",
        type=Path,
        required=True,
        help="a folder of images like the detector's training images (BatchNorm calibration)",
    )
    ap.add_argument("--count", type=int, default=64, help="calibration images (default 64)")
    ap.add_argument("--model", default="yolo11n.yaml", help="the model yaml it was built from")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint to write (.pt)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    onnx_path = args.bundle / "detector.onnx"
    if not onnx_path.is_file():
        raise SystemExit(f"no detector.onnx in {args.bundle}")
    found = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    if not found:
        raise SystemExit(f"no .jpg/.png images under {args.images}")
    step = max(len(found) // args.count, 1)
    check = recover(onnx_path, found[::step][: args.count], args.out, args.model)
    print(f"wrote {args.out}; against the file's head output: {check}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
