"""Named backbone variants: a plain dict from name to config, and one function that builds it.

Change a variant with `dataclasses.replace`, e.g. 14 keypoints for CrowdPose:
`build_backbone(replace(VARIANTS["hrnet_w32"], num_keypoints=14))`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from models.hrnet import HRNET_SMALL, HRNET_SMALL_UP, HRNET_W32, HRNET_W48, HRNet, HRNetConfig
from models.pose_resnet import (
    POSE_RESNET_18,
    POSE_RESNET_50,
    POSE_RESNET_101,
    POSE_RESNET_152,
    PoseResNet,
    PoseResNetConfig,
)

BackboneConfig = HRNetConfig | PoseResNetConfig
Backbone = HRNet | PoseResNet

VARIANTS: dict[str, BackboneConfig] = {
    "hrnet_w32": HRNET_W32,
    "hrnet_w48": HRNET_W48,
    "hrnet_small": HRNET_SMALL,
    "hrnet_small_up": HRNET_SMALL_UP,
    "pose_resnet_18": POSE_RESNET_18,
    "pose_resnet_50": POSE_RESNET_50,
    "pose_resnet_101": POSE_RESNET_101,
    "pose_resnet_152": POSE_RESNET_152,
}


def get_config(name: str) -> BackboneConfig:
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(VARIANTS)}") from None


def build_backbone(config: BackboneConfig) -> Backbone:
    if isinstance(config, HRNetConfig):
        return HRNet(config)
    return PoseResNet(config)


def count_conv_macs(model: nn.Module, run: Callable[[], object]) -> int:
    """Multiply-accumulates of `model`'s (de)convolutions and linear layers while `run()` runs.

    E.g. `count_conv_macs(net, lambda: net(x))`, or `lambda: net.context(...)` for one part.
    Counted with forward hooks, so only what the call actually runs is counted. Norms,
    activations, additions and resampling are left out (they are a few percent here). The
    FLOPs that papers quote for HRNet are these MACs; the arithmetic FLOPs are twice as many.
    """
    total = 0

    def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            # every output element costs (in / groups) * kh * kw MACs
            kh, kw = module.kernel_size
            total += out.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.ConvTranspose2d):
            # every input element is scattered into (out / groups) * kh * kw outputs
            kh, kw = module.kernel_size
            total += args[0].numel() * (module.out_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += out.numel() * module.in_features

    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return total


__all__ = [
    "VARIANTS",
    "Backbone",
    "BackboneConfig",
    "build_backbone",
    "count_conv_macs",
    "get_config",
]
