"""The SCIO prediction network Φ and verification network Γ (paper §3.2-3.4), one class for both.

Both map three heatmaps and the backbone feature map `f` to one heatmap, at heatmap resolution:

    Φ(H_A, H_B, H_C; f) -> Ĥ_D      called as  phi(H_B, H_C, H_A, f, group)
    Γ(H_B, H_C, H_D; f) -> Ĥ_A      called as  gamma(H_B, H_C, H_D, f, group)

i.e. `forward(h1, h2, h3, f, group)` with h1, h2 = H_B, H_C always, and h3 the one input that
changes: H_A for Φ, the candidate H_D for Γ. The output is linear (trained with MSE against
peak-1 Gaussians). Φ and Γ are two instances with separate weights.

The work splits so that the SCO search pays little per candidate:

- `context(h1, h2, f, group)` runs once per (person, group): a small U-Net over H_B, H_C and
  f, conditioned on the group by a learned embedding, returns `ctx`, a tuple of maps at
  strides 1, 2, 4, ... of the heatmap: ctx[l] is (G, head_widths[l], ceil(H/2^l), ceil(W/2^l)),
  from level `head_start_level` on (0 by default: the head works at heatmap resolution).
- `head(ctx, h3, ctx_index)` runs once per candidate: a narrow encoder-decoder over h3 that
  adds ctx[l] at every scale, down to stride 2^(L-1), where dilated convs and a global-pool
  term give it a receptive field over the whole heatmap (D and A can be far apart).

Batching contract: `head` takes M candidates (M, 1, H, W) and `ctx_index` (M,) int64, the row of
ctx each candidate belongs to; the gather happens inside (so it is one ONNX graph). Without
`ctx_index`, ctx must already have M rows. One search iteration over all persons and groups is
then one `head` call with G = persons x groups context rows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional

from models.keypoints import COCO17

Context = tuple[Tensor, ...]


@dataclass(frozen=True)
class ScioNetConfig:
    feature_channels: int = 32  # C of the backbone feature map f (HRNet-W32: 32)
    groups: tuple[str, ...] = tuple(g.name for g in COCO17.groups)  # group index i = groups[i]
    context_widths: tuple[int, ...] = (32, 48, 64, 96)  # context U-Net widths at strides 1, 2, 4..
    head_widths: tuple[int, ...] = (8, 16, 24, 32)  # head widths = ctx channels, same strides
    context_blocks: int = 2  # 3x3 conv blocks per context encoder level
    head_dilations: tuple[int, ...] = (1, 2)  # residual 3x3 convs at the head's coarsest level
    feature_dropout: float = 0.0  # training only: P(zero f for a whole sample); 1: never uses f
    # The head starts at this level: 0 = heatmap resolution; 1 = half resolution (the candidate
    # map is average-pooled, the 1-channel output upsampled): measured 2.2x faster per candidate
    # on a CPU at widths (4, 8, 8, 12), where narrow full-resolution convs use the CPU poorly.
    head_start_level: int = 0
    # The context U-Net starts at this level: 0 = heatmap resolution; 1 = its inputs (H_B, H_C,
    # f) are average-pooled to half resolution first and its finest level is skipped. At most
    # head_start_level (the head reads ctx from there on).
    context_start_level: int = 0
    # How a context that starts above level 0 reaches it: "pool" average-pools H_B, H_C and f
    # (2^level x 2^level) before a 3x3 / 1x1 stem; "strided" lets the stem itself stride: a
    # (2k x 2k, stride k) conv over the heatmaps and a (k x k, stride k) conv over f, k = 2^level,
    # so the sub-pixel detail that pooling averages away reaches the context, at the same cost.
    context_stem: str = "pool"

    def __post_init__(self) -> None:
        if len(self.context_widths) != len(self.head_widths) or len(self.head_widths) < 2:
            raise ValueError("context_widths and head_widths need the same length, at least 2")
        if not 0 <= self.head_start_level <= len(self.head_widths) - 2:
            raise ValueError("head_start_level must leave the head at least two levels")
        if not 0 <= self.context_start_level <= self.head_start_level:
            raise ValueError("context_start_level must be in [0, head_start_level]")
        if self.context_stem not in ("pool", "strided"):
            raise ValueError(f"context_stem must be 'pool' or 'strided', not {self.context_stem!r}")
        if not 0.0 <= self.feature_dropout <= 1.0:
            raise ValueError(f"feature_dropout must be in [0, 1], got {self.feature_dropout}")
        if not self.groups or self.context_blocks < 1:
            raise ValueError("need at least one group and one context block per level")

    @property
    def num_levels(self) -> int:
        return len(self.head_widths)


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3x3 conv + BN, no activation (callers add ctx or a residual before the ReLU)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False), nn.BatchNorm2d(cout)
    )


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(*_conv_bn(cin, cout, stride), nn.ReLU(inplace=True))


def _up(x: Tensor, like: Tensor) -> Tensor:
    """Bilinear resize of x to like's spatial size (exact 2x unless a size was odd)."""
    return functional.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class GlobalContext(nn.Module):
    """x + W·mean(x): every output pixel sees every input pixel, for the cost of one 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled: Tensor = self.proj(self.pool(x))  # (N, C, 1, 1), broadcast over (N, C, H, W)
        return x + pooled


class ContextNet(nn.Module):
    """U-Net over (H_B, H_C, f) + group embedding; returns ctx projected to the head's widths."""

    def __init__(self, config: ScioNetConfig) -> None:
        super().__init__()
        self.feature_dropout = config.feature_dropout
        # levels below `first` are not built: the inputs are pooled to level `first` instead
        self.first = config.context_start_level
        cw, hw = config.context_widths[self.first :], config.head_widths
        self.strided = self.first > 0 and config.context_stem == "strided"
        if self.strided:
            k = 2**self.first
            self.stem_heatmaps = nn.Conv2d(2, cw[0], 2 * k, k, k // 2, bias=False)
            self.stem_features = nn.Conv2d(config.feature_channels, cw[0], k, k, bias=False)
        else:
            self.stem_heatmaps = nn.Conv2d(2, cw[0], 3, 1, 1, bias=False)
            self.stem_features = nn.Conv2d(config.feature_channels, cw[0], 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(cw[0])
        self.down = nn.ModuleList(_conv_bn(cw[lv - 1], cw[lv], 2) for lv in range(1, len(cw)))
        # One embedding per level, added as a per-channel bias before the ReLU: the group can
        # switch features on or off at every scale.
        self.group_embed = nn.ModuleList(nn.Embedding(len(config.groups), c) for c in cw)
        self.blocks = nn.ModuleList(
            nn.Sequential(*(_conv_bn_relu(c, c) for _ in range(config.context_blocks))) for c in cw
        )
        self.bottom = GlobalContext(cw[-1])
        self.lateral = nn.ModuleList(
            nn.Conv2d(cw[lv + 1], cw[lv], 1, bias=False) for lv in range(len(cw) - 1)
        )
        self.decoder = nn.ModuleList(_conv_bn_relu(c, c) for c in cw[:-1])
        self.start = config.head_start_level - self.first  # index of ctx[0] among our levels
        used = zip(cw[self.start :], hw[config.head_start_level :], strict=True)
        self.out_proj = nn.ModuleList(nn.Conv2d(c, h, 1) for c, h in used)

    def forward(self, h1: Tensor, h2: Tensor, f: Tensor, group: Tensor) -> Context:
        if self.feature_dropout >= 1.0:  # a network without image features, at inference too
            f = torch.zeros_like(f)
        elif self.training and self.feature_dropout > 0:
            # Whole-sample dropout of f, not rescaled: "no features" is a mode the net must
            # handle, so Γ cannot read A off f alone and has to use D.
            keep = torch.rand(f.shape[0], 1, 1, 1, device=f.device) >= self.feature_dropout
            f = f * keep.to(f.dtype)
        hh = torch.cat([h1, h2], dim=1)
        if self.strided:
            k = 2**self.first  # zero rows/columns up to a multiple of k: ceil(H/k) outputs, as
            pad_h, pad_w = -hh.shape[-2] % k, -hh.shape[-1] % k  # the head's avg_pool gives
            if pad_h or pad_w:
                hh = functional.pad(hh, (0, pad_w, 0, pad_h))
                f = functional.pad(f, (0, pad_w, 0, pad_h))
        elif self.first:
            k = 2**self.first  # the head's avg_pool of its candidate, so the sizes agree
            hh = functional.avg_pool2d(hh, k, k, ceil_mode=True)
            f = functional.avg_pool2d(f, k, k, ceil_mode=True)
        x = self.stem_bn(self.stem_heatmaps(hh) + self.stem_features(f))
        skips: list[Tensor] = []
        for lv, (embed, blocks) in enumerate(zip(self.group_embed, self.blocks, strict=True)):
            if lv > 0:
                x = self.down[lv - 1](x)
            x = torch.relu(x + embed(group)[:, :, None, None])  # (G, C) -> (G, C, 1, 1)
            x = blocks(x)
            skips.append(x)
        y = self.bottom(skips[-1])
        outs = [y]
        # the finest levels below the head's are not decoded (nothing reads them)
        for lv in reversed(range(self.start, len(self.decoder))):
            y = self.decoder[lv](skips[lv] + _up(self.lateral[lv](y), skips[lv]))
            outs.append(y)
        outs.reverse()  # finest first
        return tuple(proj(o) for proj, o in zip(self.out_proj, outs, strict=True))


class HeadNet(nn.Module):
    """Narrow encoder-decoder over the candidate heatmap, with ctx added at every scale."""

    def __init__(self, config: ScioNetConfig) -> None:
        super().__init__()
        self.start = config.head_start_level
        hw = config.head_widths[self.start :]
        self.stem = _conv_bn(1, hw[0])
        self.down = nn.ModuleList(_conv_bn(hw[lv - 1], hw[lv], 2) for lv in range(1, len(hw)))
        self.bottleneck = nn.ModuleList(
            _conv_bn(hw[-1], hw[-1], 1, d) for d in config.head_dilations
        )
        self.bottom = GlobalContext(hw[-1])
        self.lateral = nn.ModuleList(
            nn.Conv2d(hw[lv + 1], hw[lv], 1, bias=False) for lv in range(len(hw) - 1)
        )
        self.up = nn.ModuleList(_conv_bn_relu(hw[lv], hw[lv]) for lv in range(len(hw) - 1))
        self.final = nn.Conv2d(hw[0], 1, 1)  # linear output: a heatmap

    def forward(self, ctx: Context, h3: Tensor) -> Tensor:
        h = h3
        if self.start:
            k = 2**self.start
            h = functional.avg_pool2d(h3, k, k, ceil_mode=True)  # to ctx[0]'s size
        x = torch.relu(self.stem(h) + ctx[0])
        skips = [x]
        for down, c in zip(self.down, ctx[1:], strict=True):
            x = torch.relu(down(x) + c)
            skips.append(x)
        for conv in self.bottleneck:
            x = torch.relu(x + conv(x))
        y = self.bottom(x)
        for lv in reversed(range(len(self.up))):
            y = self.up[lv](skips[lv] + _up(self.lateral[lv](y), skips[lv]))
        out: Tensor = self.final(y)
        if self.start:
            out = _up(out, h3)
        return out


class ScioNet(nn.Module):
    """Φ or Γ. See the module docstring for the argument order and the batching contract."""

    def __init__(self, config: ScioNetConfig) -> None:
        super().__init__()
        self.config = config
        # PyTorch's default init, not the backbones' N(0, 0.001): here convs feed additive
        # fusions (ctx, laterals) whose scale matters, so they should start at unit scale.
        self.context_net = ContextNet(config)
        self.head_net = HeadNet(config)

    def context(self, h1: Tensor, h2: Tensor, f: Tensor, group: Tensor) -> Context:
        """h1, h2: (G, 1, H, W); f: (G, C, H, W); group: (G,) int64 -> ctx, finest first."""
        ctx: Context = self.context_net(h1, h2, f, group)
        return ctx

    def head(self, ctx: Context, h3: Tensor, ctx_index: Tensor | None = None) -> Tensor:
        """ctx (G rows), h3: (M, 1, H, W), ctx_index: (M,) int64 in [0, G) -> (M, 1, H, W)."""
        if ctx_index is not None:
            ctx = tuple(c.index_select(0, ctx_index) for c in ctx)  # (G, ...) -> (M, ...)
        out: Tensor = self.head_net(ctx, h3)
        return out

    def forward(self, h1: Tensor, h2: Tensor, h3: Tensor, f: Tensor, group: Tensor) -> Tensor:
        return self.head(self.context(h1, h2, f, group), h3)


class ContextGraph(nn.Module):
    """`net.context` as a module, for export: (h1, h2, features, group) -> ctx0, ctx1, ..."""

    def __init__(self, net: ScioNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, h1: Tensor, h2: Tensor, f: Tensor, group: Tensor) -> Context:
        return self.net.context(h1, h2, f, group)


class HeadGraph(nn.Module):
    """`net.head` as a module, for export: (candidates, ctx_index, ctx0, ctx1, ...) -> heatmap."""

    def __init__(self, net: ScioNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, h3: Tensor, ctx_index: Tensor, *ctx: Tensor) -> Tensor:
        return self.net.head(ctx, h3, ctx_index)


def context_names(config: ScioNetConfig) -> list[str]:
    return [f"ctx{lv}" for lv in range(config.head_start_level, config.num_levels)]


def export_onnx(
    net: ScioNet, context_path: Path, head_path: Path, heatmap_hw: tuple[int, int], opset: int = 17
) -> None:
    """Two ONNX graphs with dynamic batch axes (G context rows, M candidates).

    context: inputs h1, h2 (G,1,h,w), features (G,C,h,w), group (G,) int64; outputs ctx0...
    head: inputs candidates (M,1,h,w), ctx_index (M,) int64, ctx0... (G,...); output heatmap.
    """
    was_training = net.training
    net.eval()
    h, w = heatmap_hw
    g, m = 2, 3  # example sizes; both axes are exported as dynamic
    h1, h2 = torch.zeros(g, 1, h, w), torch.zeros(g, 1, h, w)
    feats = torch.zeros(g, net.config.feature_channels, h, w)
    group = torch.zeros(g, dtype=torch.long)
    names = context_names(net.config)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The legacy (TorchScript) exporter is the one we use on purpose.
            warnings.filterwarnings("ignore", "You are using the legacy", DeprecationWarning)
            # the strided stem's padding test reads the heatmap size, fixed in the graph
            warnings.filterwarnings("ignore", "Converting a tensor to a Python boolean")
            ctx = net.context(h1, h2, feats, group)
            torch.onnx.export(
                ContextGraph(net),
                (h1, h2, feats, group),
                str(context_path),
                input_names=["h1", "h2", "features", "group"],
                output_names=names,
                dynamic_axes={n: {0: "G"} for n in ["h1", "h2", "features", "group", *names]},
                opset_version=opset,
                dynamo=False,
            )
            torch.onnx.export(
                HeadGraph(net),
                (torch.zeros(m, 1, h, w), torch.zeros(m, dtype=torch.long), *ctx),
                str(head_path),
                input_names=["candidates", "ctx_index", *names],
                output_names=["heatmap"],
                dynamic_axes={
                    "candidates": {0: "M"},
                    "ctx_index": {0: "M"},
                    "heatmap": {0: "M"},
                    **{n: {0: "G"} for n in names},
                },
                opset_version=opset,
                dynamo=False,
            )
    finally:
        net.train(was_training)


__all__ = [
    "Context",
    "ContextGraph",
    "HeadGraph",
    "ScioNet",
    "ScioNetConfig",
    "context_names",
    "export_onnx",
]
