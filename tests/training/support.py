"""Shared helpers for the training tests."""

from __future__ import annotations

from typing import Any


def trained_looking_batchnorms(model: Any, seed: int = 0, spread: float = 1.0) -> None:
    """Give every BatchNorm2d of `model` statistics and affine parameters far from the identity
    (scale and variance in [0.5, 1.5), shift and mean ~ N(0, spread²)), as trained ones are, so
    that folding them into convolutions or recovering them is really tested."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * spread)
                m.running_mean.copy_(torch.randn(n, generator=g) * spread)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
