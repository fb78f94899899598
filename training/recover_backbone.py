"""A backbone checkpoint recovered from a bundle's `pose.onnx`, for when the training run's own
checkpoint is gone: `scio-pose train scio` and `scio-pose export` need a torch checkpoint, and the
bundle is what a build keeps.

    python -m training.recover_backbone --bundle bundles/demo --preset cpu-testbed \
        --out RUN/final.pt

The exporter folds each BatchNorm into the convolution before it, so the ONNX file holds the
folded weights. They go back into the architecture the preset names, each folded pair as the
convolution's weight and a BatchNorm that only adds the folded bias (mean 0, variance 1 − eps,
scale 1); the other weights by name. The result computes what the bundle computes (checked against
ONNX Runtime before it is written) in eval mode, which is how `train scio` uses a backbone. It is
not a starting point for more backbone training: the BatchNorm statistics are gone. The
checkpoint's `train_config` is the preset's (the data `train scio` reads), and its meta says where
it came from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from models.checkpoint import save_checkpoint
from models.zoo import Backbone
from training.config import BackboneTrainConfig, load_backbone_config, to_plain

log = logging.getLogger(__name__)
_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


class RecoveryError(ValueError):
    """The ONNX file does not fit the architecture."""


def _execution_order(model: Backbone) -> list[tuple[str, nn.Module, str | None]]:
    """The backbone's convolutions in the order a forward pass runs them (the exporter's node
    order), each with the name of the BatchNorm that reads its output directly, if any."""
    names = {m: n for n, m in model.named_modules()}
    convs: list[tuple[str, nn.Module, str | None]] = []
    last: dict[str, Any] = {}

    def on_conv(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        convs.append((names[mod], mod, None))
        last["out"], last["i"] = out, len(convs) - 1

    def on_bn(mod: nn.Module, inp: tuple[torch.Tensor, ...], _out: Any) -> None:
        if last.get("out") is not None and inp[0] is last["out"]:
            name, conv, _ = convs[last["i"]]
            convs[last["i"]] = (name, conv, names[mod])
        last["out"] = None

    hooks = [
        m.register_forward_hook(on_conv if isinstance(m, _CONVS) else on_bn)
        for m in model.modules()
        if isinstance(m, (*_CONVS, nn.BatchNorm2d))
    ]
    try:
        h, w = model.config.input_hw
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, h, w))
    finally:
        for hk in hooks:
            hk.remove()
    return convs


def load_folded_onnx(model: Backbone, onnx_path: str | Path) -> None:
    """Put the (BatchNorm-folded) weights of `onnx_path` into `model` (see the module doc)."""
    graph = onnx.load(str(onnx_path)).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:  # the exporter shares equal weights (untrained biases) by Identity
        if n.op_type == "Identity" and n.input[0] in weights:
            weights[n.output[0]] = weights[n.input[0]]
    nodes = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    convs = _execution_order(model)
    if len(nodes) != len(convs):
        raise RecoveryError(
            f"{onnx_path} has {len(nodes)} convolutions, the architecture {len(convs)}"
        )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    done: set[str] = set()

    def put(key: str, value: np.ndarray) -> None:
        if key not in state:
            raise RecoveryError(f"no parameter {key} in the architecture")
        if tuple(state[key].shape) != value.shape:
            raise RecoveryError(f"{key}: {value.shape} in the file, {tuple(state[key].shape)} here")
        state[key] = torch.from_numpy(np.array(value, dtype=np.float32))
        done.add(key)

    for node, (name, conv, bn) in zip(nodes, convs, strict=True):
        w = weights[node.input[1]]
        b = weights[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        put(f"{name}.weight", w)
        if bn is not None and b is not None and getattr(conv, "bias", None) is None:
            eps = float(model.get_submodule(bn).eps)  # type: ignore[arg-type]
            put(f"{bn}.weight", np.ones_like(b))
            put(f"{bn}.bias", b)
            put(f"{bn}.running_mean", np.zeros_like(b))
            put(f"{bn}.running_var", np.full_like(b, 1.0 - eps))
        elif b is not None:
            put(f"{name}.bias", b)
    for key, value in weights.items():  # what was not folded keeps its name (BatchNorms left)
        if key in state and key not in done:
            put(key, value)
    missing = sorted(k for k in state if k not in done and not k.endswith("num_batches_tracked"))
    if missing:
        raise RecoveryError(f"no weights in the file for {len(missing)} parameters: {missing[:5]}")
    model.load_state_dict(state, strict=True)
    model.eval()


def recover(
    onnx_path: str | Path,
    cfg: BackboneTrainConfig,
    out: str | Path,
    source: str = "",
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the preset's backbone, load the file into it, check it against ONNX Runtime on a
    random batch (the export's own parity rule), write the checkpoint (with `meta` added to its
    own). Returns the parity."""
    from training.onnx_export import check_parity
    from training.train_backbone import build_model

    model = build_model(cfg)
    load_folded_onnx(model, onnx_path)
    h, w = model.config.input_hw
    x = np.random.default_rng(0).standard_normal((2, 3, h, w)).astype(np.float32)
    with torch.no_grad():
        parity = check_parity(
            lambda t: model(t), onnx_path, {"image": x}, what="recovered backbone"
        )
    digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()
    save_checkpoint(
        out,
        model,
        {
            "train_config": to_plain(cfg),
            "recovered_from": {"onnx": source or str(onnx_path), "sha256": digest},
            "parity": parity,
            **(meta or {}),
        },
    )
    return parity


def training_record(bundle: Path) -> dict[str, Any]:
    """What the bundle's provenance says about the original training (samples seen, training
    seconds), under the names a training checkpoint's meta uses, so that a build continuing from
    the recovered checkpoint reports the backbone's real training."""
    prov = json.loads((bundle / "bundle.json").read_text()).get("provenance") or {}
    keys = {"samples": "backbone_samples", "train_seconds": "backbone_train_seconds"}
    return {k: prov[v] for k, v in keys.items() if prov.get(v) is not None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="a bundle folder (its pose.onnx)")
    ap.add_argument("--preset", help="the backbone preset the bundle was trained with")
    ap.add_argument("--config", type=Path, help="or the TOML config it was trained with")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint to write (final.pt)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = load_backbone_config(args.preset, args.config)
    parity = recover(
        args.bundle / "pose.onnx",
        cfg,
        args.out,
        str(args.bundle / "pose.onnx"),
        meta=training_record(args.bundle),
    )
    print(f"wrote {args.out}; against ONNX Runtime: {parity}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
