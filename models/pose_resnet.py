"""SimpleBaseline PoseResNet (Xiao et al., ECCV 2018): a ResNet, three deconvolutions, a 1x1 head.

Module names and registration order follow the official `lib/models/pose_resnet.py`, so the
official checkpoints (and MMPose's, after the prefix map in `models.checkpoint`) load with
`strict=True` (`../shared/reference/official-topdown-facts.md` §1). The residual blocks and the
official initialisation live here and are reused by `models.hrnet`, as timm's HRNet reuses its
ResNet blocks.

Official PoseResNet models see **BGR** input (facts §2): the variants below say so in
`color_order`, and whoever builds the input tensor must honour it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # 0-1 scale, in RGB channel order
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_MEAN_BGR = IMAGENET_MEAN[::-1]  # the same statistics for a BGR tensor
IMAGENET_STD_BGR = IMAGENET_STD[::-1]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: Tensor = self.relu(out + identity)
        return result


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, as in the official code) -> 1x1 with 4x expansion."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        result: Tensor = self.relu(out + identity)
        return result


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


def make_res_layer(
    block: str, inplanes: int, planes: int, blocks: int, stride: int = 1
) -> nn.Sequential:
    """`blocks` residual blocks; the first one projects the shortcut when the shape changes."""
    cls = BLOCKS[block]
    out = planes * cls.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
        )
    layers: list[nn.Module] = [cls(inplanes, planes, stride, downsample)]
    layers += [cls(out, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def init_official(module: nn.Module) -> None:
    """The official init_weights: every (de)conv N(0, 0.001) with zero bias, BatchNorm (1, 0).

    Applied to the whole network, as the official code does when no ImageNet file is given.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class PoseResNetConfig:
    layers: tuple[int, int, int, int]  # residual blocks in layer1..layer4
    block: str = "bottleneck"  # "basic" (ResNet-18/34) or "bottleneck" (50/101/152)
    num_keypoints: int = 17
    input_hw: tuple[int, int] = (256, 192)  # network input (h, w); heatmaps are (h/4, w/4)
    mean: tuple[float, float, float] = IMAGENET_MEAN_BGR  # 0-1 scale, in `color_order`
    std: tuple[float, float, float] = IMAGENET_STD_BGR
    color_order: str = "BGR"  # channel order the weights expect; official PoseResNet: BGR
    deconv_channels: tuple[int, ...] = (256, 256, 256)  # one stride-2 deconv block each
    deconv_kernel: int = 4  # 4 (padding 1), 3 (padding 1, output_padding 1) or 2
    final_conv_kernel: int = 1  # 1 or 3

    @property
    def output_stride(self) -> int:
        """Input pixels per heatmap pixel (always 4: three deconvs after stride 32)."""
        return 4

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {self.block!r}")
        if self.color_order not in ("RGB", "BGR"):
            raise ValueError(f"color_order must be 'RGB' or 'BGR', got {self.color_order!r}")
        if self.deconv_kernel not in (2, 3, 4) or self.final_conv_kernel not in (1, 3):
            raise ValueError("deconv_kernel must be 2, 3 or 4 and final_conv_kernel 1 or 3")
        if len(self.deconv_channels) != 3:
            # Three stride-2 deconvs bring ResNet's stride 32 to the heatmap's stride 4.
            raise ValueError("PoseResNet needs exactly three deconv blocks (stride 32 -> 4)")


def _deconv_padding(kernel: int) -> tuple[int, int]:
    """(padding, output_padding) that make a stride-2 deconv exactly double the size."""
    return {4: (1, 0), 3: (1, 1), 2: (0, 0)}[kernel]


class PoseResNet(nn.Module):
    def __init__(self, config: PoseResNetConfig) -> None:
        super().__init__()
        self.config = config
        # Attribute order is the state-dict order of the official model; do not reorder.
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        block, (n1, n2, n3, n4), e = config.block, config.layers, BLOCKS[config.block].expansion
        self.layer1 = make_res_layer(block, 64, 64, n1)
        self.layer2 = make_res_layer(block, 64 * e, 128, n2, stride=2)
        self.layer3 = make_res_layer(block, 128 * e, 256, n3, stride=2)
        self.layer4 = make_res_layer(block, 256 * e, 512, n4, stride=2)
        inplanes = 512 * e
        padding, output_padding = _deconv_padding(config.deconv_kernel)
        deconv: list[nn.Module] = []
        for out in config.deconv_channels:
            deconv += [
                nn.ConvTranspose2d(
                    inplanes, out, config.deconv_kernel, 2, padding, output_padding, bias=False
                ),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            inplanes = out
        self.deconv_layers = nn.Sequential(*deconv)
        k = config.final_conv_kernel
        self.final_layer = nn.Conv2d(inplanes, config.num_keypoints, k, 1, k // 2)
        init_official(self)

    @property
    def feature_channels(self) -> int:
        return self.config.deconv_channels[-1]

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> the last deconv block's output (N, C, H/4, W/4), what SCIO sees."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 512e, H/32, W/32)
        f: Tensor = self.deconv_layers(x)
        return f

    def forward_head(self, f: Tensor) -> Tensor:
        """(N, C, h, w) -> heatmaps (N, K, h, w)."""
        heatmaps: Tensor = self.final_layer(f)
        return heatmaps

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.forward_features(x)
        return self.forward_head(f), f


# Official SimpleBaseline variants (BGR, ImageNet statistics, as the official yamls).
POSE_RESNET_50 = PoseResNetConfig(layers=(3, 4, 6, 3))
POSE_RESNET_101 = PoseResNetConfig(layers=(3, 4, 23, 3))
POSE_RESNET_152 = PoseResNetConfig(layers=(3, 8, 36, 3), input_hw=(384, 288))
# Not an official model: a small network we train ourselves, so it takes the RGB order every
# other model we train uses, at the small CPU input size.
POSE_RESNET_18 = PoseResNetConfig(
    layers=(2, 2, 2, 2),
    block="basic",
    input_hw=(128, 96),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    color_order="RGB",
)

__all__ = [
    "POSE_RESNET_18",
    "POSE_RESNET_50",
    "POSE_RESNET_101",
    "POSE_RESNET_152",
    "BasicBlock",
    "Bottleneck",
    "PoseResNet",
    "PoseResNetConfig",
    "init_official",
    "make_res_layer",
]
