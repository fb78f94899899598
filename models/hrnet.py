"""HRNet for top-down pose (Sun et al., CVPR 2019): parallel multi-resolution branches, fused often.

Module names, nesting and registration order follow the official `lib/models/pose_hrnet.py`, so
the official checkpoints load with `strict=True` (`../shared/reference/official-topdown-facts.md`
§1): transitions that add a branch nest twice (`transition1.1.0.0.weight`), fuse layers hold
no weights on the diagonal, and the last module of stage 4 fuses into branch 0 only
(`multi_scale_output=False`). The stem, layer1 and every stage are configurable, so one class
serves the official W32/W48 and the slim CPU variant.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import cast

from torch import Tensor, nn

from models.pose_resnet import (
    BLOCKS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Bottleneck,
    init_official,
    make_res_layer,
)


@dataclass(frozen=True)
class StageConfig:
    num_modules: int  # HighResolutionModules in the stage (each ends with a fusion)
    num_blocks: tuple[int, ...]  # residual blocks per branch, one entry per branch
    num_channels: tuple[int, ...]  # block planes per branch (x expansion = branch width)
    block: str = "basic"  # "basic" or "bottleneck"

    @property
    def num_branches(self) -> int:
        return len(self.num_channels)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(c * BLOCKS[self.block].expansion for c in self.num_channels)


@dataclass(frozen=True)
class HRNetConfig:
    stage2: StageConfig
    stage3: StageConfig
    stage4: StageConfig
    num_keypoints: int = 17
    input_hw: tuple[int, int] = (256, 192)  # network input (h, w); multiples of 32
    mean: tuple[float, float, float] = IMAGENET_MEAN  # 0-1 scale, in `color_order`
    std: tuple[float, float, float] = IMAGENET_STD
    color_order: str = "RGB"  # the official HRNet yamls set COLOR_RGB: true
    stem_channels: int = 64  # width of the two stride-2 stem convs
    layer1_blocks: int = 4  # Bottlenecks at stride 4 before the first transition
    layer1_planes: int = 64  # their planes; layer1 outputs 4x this
    final_conv_kernel: int = 1  # 1 or 3
    # Stride-2 upsampling blocks between stage 4 and the heatmap layer, one width each
    # (SimpleBaseline-style: 4x4 deconvolution, BatchNorm, ReLU). Empty for the official models
    # (heatmaps at stride 4); one block gives stride-2 heatmaps, e.g. 64x48 from a 128x96 input.
    # The feature map `f` is then the upsampled one, at heatmap resolution.
    upsample_widths: tuple[int, ...] = ()

    @property
    def output_stride(self) -> int:
        """Input pixels per heatmap pixel."""
        return int(4 // 2 ** len(self.upsample_widths))

    def __post_init__(self) -> None:
        if len(self.upsample_widths) > 2:
            raise ValueError("at most two upsampling blocks (stride 4 -> 1)")
        if self.color_order not in ("RGB", "BGR"):
            raise ValueError(f"color_order must be 'RGB' or 'BGR', got {self.color_order!r}")
        if self.final_conv_kernel not in (1, 3):
            raise ValueError("final_conv_kernel must be 1 or 3")
        prev = 1
        for name, stage in (
            ("stage2", self.stage2),
            ("stage3", self.stage3),
            ("stage4", self.stage4),
        ):
            if stage.block not in BLOCKS:
                raise ValueError(f"{name}.block must be one of {sorted(BLOCKS)}")
            if len(stage.num_blocks) != stage.num_branches:
                raise ValueError(f"{name}: num_blocks and num_channels differ in length")
            if stage.num_modules < 1:
                raise ValueError(f"{name}: needs at least one module")
            if stage.num_branches < prev:
                raise ValueError(f"{name}: a stage cannot drop branches")
            prev = stage.num_branches
        stride = 4 * 2 ** (self.stage4.num_branches - 1)
        if self.input_hw[0] % stride or self.input_hw[1] % stride:
            # The fuse layers add a stride-2 conv output to a 2x upsampled map: sizes must halve
            # exactly down to the lowest branch.
            raise ValueError(f"input_hw {self.input_hw} must be multiples of {stride}")


class HighResolutionModule(nn.Module):
    """Residual blocks on every branch, then each output branch sums all branches resampled."""

    def __init__(self, stage: StageConfig, multi_scale_output: bool) -> None:
        super().__init__()
        self.num_branches = stage.num_branches
        # Transitions hand over `stage.widths`, so no branch needs a projection shortcut.
        widths = stage.widths
        self.branches = nn.ModuleList(
            make_res_layer(stage.block, width, planes, blocks)
            for width, planes, blocks in zip(
                widths, stage.num_channels, stage.num_blocks, strict=True
            )
        )
        self.fuse_layers: nn.ModuleList | None = None
        if self.num_branches > 1:
            outputs = self.num_branches if multi_scale_output else 1
            self.fuse_layers = nn.ModuleList(
                nn.ModuleList(_fuse_path(widths, j, i) for j in range(self.num_branches))
                for i in range(outputs)
            )
        self.relu = nn.ReLU(inplace=False)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        if self.fuse_layers is None:
            return xs
        fused = []
        for paths in self.fuse_layers:
            # (N, C_i, H_i, W_i) per term; summed in branch order, as the official forward does.
            terms = [path(x) for path, x in zip(cast(nn.ModuleList, paths), xs, strict=True)]
            y = terms[0]
            for t in terms[1:]:
                y = y + t
            fused.append(self.relu(y))
        return fused


def _fuse_path(widths: tuple[int, ...], j: int, i: int) -> nn.Module:
    """Resample branch j to branch i: 1x1 + nearest upsampling up, chained 3x3 s2 convs down.

    Where the official code puts `None` (j == i) this puts a stateless `nn.Identity`, which has
    no state-dict entries, so the keys are the same and the forward needs no special case.
    """
    if j == i:
        return nn.Identity()
    if j > i:
        return nn.Sequential(
            nn.Conv2d(widths[j], widths[i], 1, bias=False),
            nn.BatchNorm2d(widths[i]),
            nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
        )
    links: list[nn.Module] = []
    for k in range(i - j):
        last = k == i - j - 1
        out = widths[i] if last else widths[j]
        link: list[nn.Module] = [
            nn.Conv2d(widths[j], out, 3, 2, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        if not last:  # the last link feeds a sum that is followed by ReLU anyway
            link.append(nn.ReLU(inplace=False))
        links.append(nn.Sequential(*link))
    return nn.Sequential(*links)


def _transition(prev: tuple[int, ...], cur: tuple[int, ...]) -> nn.ModuleList:
    """Adapt existing branches whose width changes; grow each new branch from the lowest one.

    Unchanged branches get a stateless `nn.Identity` where the official code has `None`.
    """
    layers: list[nn.Module] = []
    for i, out in enumerate(cur):
        if i < len(prev):
            layers.append(
                nn.Identity()
                if prev[i] == out
                else nn.Sequential(
                    nn.Conv2d(prev[i], out, 3, 1, 1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                )
            )
            continue
        # The official layout nests twice: Sequential(links) of Sequential(conv, BN, ReLU).
        links = []
        for k in range(i + 1 - len(prev)):
            cout = out if k == i - len(prev) else prev[-1]
            links.append(
                nn.Sequential(
                    nn.Conv2d(prev[-1], cout, 3, 2, 1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                )
            )
        layers.append(nn.Sequential(*links))
    return nn.ModuleList(layers)


def _stage(stage: StageConfig, multi_scale_output: bool) -> nn.Sequential:
    """`num_modules` modules; only the stage's last one may fuse into branch 0 alone."""
    last = stage.num_modules - 1
    return nn.Sequential(
        *(
            HighResolutionModule(stage, multi_scale_output or m < last)
            for m in range(stage.num_modules)
        )
    )


class HRNet(nn.Module):
    def __init__(self, config: HRNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config.stem_channels
        # Attribute order is the state-dict order of the official model; do not reorder.
        self.conv1 = nn.Conv2d(3, c, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_res_layer("bottleneck", c, config.layer1_planes, config.layer1_blocks)
        widths = (config.layer1_planes * Bottleneck.expansion,)
        self.transition1 = _transition(widths, config.stage2.widths)
        self.stage2 = _stage(config.stage2, True)
        self.transition2 = _transition(config.stage2.widths, config.stage3.widths)
        self.stage3 = _stage(config.stage3, True)
        self.transition3 = _transition(config.stage3.widths, config.stage4.widths)
        self.stage4 = _stage(config.stage4, False)
        # No parameters when empty, so official checkpoints still match key for key.
        self.upsample = _upsample(config.stage4.widths[0], config.upsample_widths)
        k = config.final_conv_kernel
        self.final_layer = nn.Conv2d(self.feature_channels, config.num_keypoints, k, 1, k // 2)
        init_official(self)

    @property
    def feature_channels(self) -> int:
        if self.config.upsample_widths:
            return self.config.upsample_widths[-1]
        return self.config.stage4.widths[0]

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> stage 4's branch-0 output (N, C, H/4, W/4), upsampled to the heatmap
        resolution when the config asks, before `final_layer`."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs: list[Tensor] = [self.layer1(x)]
        for transition, stage in (
            (self.transition1, self.stage2),
            (self.transition2, self.stage3),
            (self.transition3, self.stage4),
        ):
            xs = stage(_apply_transition(transition, xs))
        f: Tensor = self.upsample(xs[0])
        return f

    def forward_head(self, f: Tensor) -> Tensor:
        """(N, C, h, w) -> heatmaps (N, K, h, w)."""
        heatmaps: Tensor = self.final_layer(f)
        return heatmaps

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.forward_features(x)
        return self.forward_head(f), f


def _upsample(width: int, widths: tuple[int, ...]) -> nn.Sequential:
    """Stride-2 4x4 deconvolutions (padding 1: exactly twice the size), each with BN and ReLU."""
    layers: list[nn.Module] = []
    for out in widths:
        layers += [
            nn.ConvTranspose2d(width, out, 4, 2, 1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        width = out
    return nn.Sequential(*layers)


def _apply_transition(transition: nn.ModuleList, xs: list[Tensor]) -> list[Tensor]:
    """Existing branches go through their own layer; new ones grow from the lowest-resolution one.

    The official forward feeds `y_list[-1]` to every non-None transition of stages 3 and 4; that
    differs from this only for configs where an existing branch changes width between stages,
    which no official config does.
    """
    out: list[Tensor] = []
    for i, layer in enumerate(transition):
        x = xs[i] if i < len(xs) else xs[-1]
        out.append(layer(x))
    return out


HRNET_W32 = HRNetConfig(
    stage2=StageConfig(1, (4, 4), (32, 64)),
    stage3=StageConfig(4, (4, 4, 4), (32, 64, 128)),
    stage4=StageConfig(3, (4, 4, 4, 4), (32, 64, 128, 256)),
)
HRNET_W48 = HRNetConfig(
    stage2=StageConfig(1, (4, 4), (48, 96)),
    stage3=StageConfig(4, (4, 4, 4), (48, 96, 192)),
    stage4=StageConfig(3, (4, 4, 4, 4), (48, 96, 192, 384)),
    input_hw=(384, 288),
)
# For training on two CPU cores: about 0.15 GMACs (0.3 GFLOPs) at 128x96, against W32's 1.9
# GMACs there, of which the official stem and layer1 alone take 0.25. So the stem and layer1 are
# slimmed, and the stages keep all four branches and repeated fusion at W16 widths, 2 blocks each.
HRNET_SMALL = HRNetConfig(
    stage2=StageConfig(1, (2, 2), (16, 32)),
    stage3=StageConfig(2, (2, 2, 2), (16, 32, 64)),
    stage4=StageConfig(2, (2, 2, 2, 2), (16, 32, 64, 128)),
    input_hw=(128, 96),
    stem_channels=32,
    layer1_blocks=1,
    layer1_planes=16,
)

# HRNET_SMALL with one upsampling block: 64x48 heatmaps (the paper's resolution) from a 128x96
# input, for the SCIO testbed. The block costs about 0.03 GMACs next to the trunk's 0.15.
HRNET_SMALL_UP = replace(HRNET_SMALL, upsample_widths=(32,))

__all__ = [
    "HRNET_SMALL",
    "HRNET_SMALL_UP",
    "HRNET_W32",
    "HRNET_W48",
    "HRNet",
    "HRNetConfig",
    "StageConfig",
]
