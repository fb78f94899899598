"""ONNX export of the SCIO networks, each checked against torch (max abs diff <= 1e-4).
The context stem's BatchNorm, which follows a sum of two convolutions, is folded into them in the
written graph (`training.onnx_export.fold_sum_batchnorm`; ONNX Runtime does not fold through the
sum); and Φ and Γ's context take each person's feature map once, with a `person_index` input
naming each row's person, the rows gathered inside the graph after the features' 1x1 convolution
(`training.onnx_export.gather_features_by_person`). The parity checks run on the rewritten graphs.

Γ: two graphs (context once per person and group; head once per candidate), written by
`models.scio_nets.export_onnx`. Φ: one graph, h1, h2, h3, features, group -> heatmap.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from models.scio_nets import ScioNet, context_names, export_onnx
from models.scio_search import PERSON_INDEX
from training.onnx_export import (
    OPSET,
    check_parity,
    fold_sum_batchnorm_file,
    gather_features_by_person_file,
    worst_abs,
)


class PhiGraph(nn.Module):
    def __init__(self, net: ScioNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, h1: Tensor, h2: Tensor, h3: Tensor, f: Tensor, group: Tensor) -> Tensor:
        out: Tensor = self.net(h1, h2, h3, f, group)
        return out


def export_phi(net: ScioNet, path: Path, heatmap_hw: tuple[int, int]) -> Path:
    was_training = net.training
    # The exporter restores the wrapper's own mode afterwards; a new wrapper is in training
    # mode, which would switch the wrapped net (and its BatchNorm) to training too.
    graph = PhiGraph(net).eval()
    h, w = heatmap_hw
    g = 2
    maps = [torch.zeros(g, 1, h, w) for _ in range(3)]
    feats = torch.zeros(g, net.config.feature_channels, h, w)
    group = torch.zeros(g, dtype=torch.long)
    names = ["h1", "h2", "h3", "features", "group"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (*maps, feats, group),
            str(path),
            input_names=names,
            output_names=["heatmap"],
            dynamic_axes={n: {0: "G"} for n in [*names, "heatmap"]},
            opset_version=OPSET,
            dynamo=False,
        )
    net.train(was_training)
    return path


def _random_inputs(
    net: ScioNet, rows: int, hw: tuple[int, int], seed: int
) -> dict[str, np.ndarray]:
    """Random inputs for `rows` (person, group) rows of fewer persons: `features` per person,
    `person_index` each row's person (the graphs' layout, `gather_features_by_person`)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    persons = max(rows - 1, 1)
    return {
        "h1": rng.random((rows, 1, h, w), dtype=np.float32),
        "h2": rng.random((rows, 1, h, w), dtype=np.float32),
        "h3": rng.random((rows, 1, h, w), dtype=np.float32),
        "features": rng.standard_normal((persons, net.config.feature_channels, h, w)).astype(
            np.float32
        ),
        "group": rng.integers(0, len(net.config.groups), rows).astype(np.int64),
        PERSON_INDEX: np.sort(rng.integers(0, persons, rows)).astype(np.int64),
    }


def export_gamma_checked(
    gamma: ScioNet, out_dir: Path, heatmap_hw: tuple[int, int], seed: int = 0
) -> tuple[Path, Path, float]:
    """Export Γ's two graphs and check both against torch; returns paths and the max diff."""
    gamma = gamma.eval()
    ctx_path, head_path = out_dir / "scio_gamma_context.onnx", out_dir / "scio_gamma_head.onnx"
    export_onnx(gamma, ctx_path, head_path, heatmap_hw)
    # the context stem's BatchNorm folded, and the rows gathered after the features' 1x1 conv
    # (module doc); both checked against torch below
    fold_sum_batchnorm_file(ctx_path)
    gather_features_by_person_file(ctx_path)
    x = _random_inputs(gamma, 4, heatmap_hw, seed)
    ctx_in = {k: x[k] for k in ("h1", "h2", "features", "group", PERSON_INDEX)}

    def context_fn(
        h1: Tensor, h2: Tensor, f: Tensor, group: Tensor, person: Tensor
    ) -> Sequence[Tensor]:
        return gamma.context(h1, h2, f[person], group)

    d1 = check_parity(context_fn, ctx_path, ctx_in, what="scio_gamma_context")
    with torch.no_grad():
        ctx = context_fn(
            *(torch.from_numpy(ctx_in[k]) for k in ("h1", "h2", "features", "group", PERSON_INDEX))
        )
    rng = np.random.default_rng(seed + 1)
    m = 9
    head_in: dict[str, np.ndarray] = {
        "candidates": rng.random((m, 1, *heatmap_hw), dtype=np.float32),
        "ctx_index": rng.integers(0, 4, m).astype(np.int64),
    }
    for name, c in zip(context_names(gamma.config), ctx, strict=True):
        head_in[name] = c.numpy()

    def head_fn(cand: Tensor, index: Tensor, *c: Tensor) -> Sequence[Tensor]:
        return (gamma.head(tuple(c), cand, index),)

    d2 = check_parity(head_fn, head_path, head_in, what="scio_gamma_head")
    return ctx_path, head_path, max(worst_abs(d1), worst_abs(d2))


def export_phi_checked(
    phi: ScioNet, out_dir: Path, heatmap_hw: tuple[int, int], seed: int = 0
) -> tuple[Path, float]:
    path = export_phi(phi, out_dir / "scio_phi.onnx", heatmap_hw)
    fold_sum_batchnorm_file(path)  # as Γ's context (checked against torch below)
    gather_features_by_person_file(path)
    x = _random_inputs(phi, 4, heatmap_hw, seed)

    def fn(
        h1: Tensor, h2: Tensor, h3: Tensor, f: Tensor, group: Tensor, person: Tensor
    ) -> Sequence[Tensor]:
        return (phi(h1, h2, h3, f[person], group),)

    return path, worst_abs(check_parity(fn, path, x, what="scio_phi"))
