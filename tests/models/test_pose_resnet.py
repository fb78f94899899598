import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from models.pose_resnet import (
    POSE_RESNET_18,
    POSE_RESNET_50,
    POSE_RESNET_101,
    POSE_RESNET_152,
    BasicBlock,
    Bottleneck,
    PoseResNet,
    PoseResNetConfig,
)
from tests.conftest import MANIFESTS, needs_manifests


def _manifest(name: str) -> dict:
    return json.loads((MANIFESTS / f"{name}.json").read_text())


def _meta(config: PoseResNetConfig) -> PoseResNet:
    with torch.device("meta"):
        return PoseResNet(config)


@needs_manifests
@pytest.mark.parametrize(
    ("manifest", "config"),
    [("pose_resnet_50_256x192", POSE_RESNET_50), ("pose_resnet_152_384x288", POSE_RESNET_152)],
)
def test_state_dict_is_the_official_one(manifest: str, config: PoseResNetConfig) -> None:
    ref = _manifest(manifest)
    net = _meta(config)
    assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == ref["state_dict"]
    assert sum(p.numel() for p in net.parameters()) == ref["num_params"]
    assert list(config.input_hw) == ref["input_size"]


def test_resnet_101_differs_from_50_by_17_bottlenecks_in_layer3() -> None:
    """No manifest for R101; derive its keys from R50's (each Bottleneck adds 18 entries)."""
    r50 = list(_meta(POSE_RESNET_50).state_dict())
    r101 = list(_meta(POSE_RESNET_101).state_dict())
    assert len(r101) == len(r50) + 17 * 18
    assert [k for k in r101 if not k.startswith("layer3.")] == [
        k for k in r50 if not k.startswith("layer3.")
    ]
    assert "layer3.22.bn3.num_batches_tracked" in r101
    assert "layer3.23.conv1.weight" not in r101
    # The official README lists 53.0M parameters for pose_resnet_101.
    n = sum(p.numel() for p in _meta(POSE_RESNET_101).parameters())
    assert round(n / 1e6, 1) == 53.0


def test_official_variants_see_bgr() -> None:
    for config in (POSE_RESNET_50, POSE_RESNET_101, POSE_RESNET_152):
        assert config.color_order == "BGR"  # the ResNet yamls set COLOR_RGB: false
        # ImageNet statistics, reordered for a BGR tensor
        assert config.mean == (0.406, 0.456, 0.485)
        assert config.std == (0.225, 0.224, 0.229)


def test_resnet_18_uses_basic_blocks() -> None:
    net = PoseResNet(POSE_RESNET_18)
    blocks = [m for m in net.modules() if isinstance(m, BasicBlock | Bottleneck)]
    assert len(blocks) == 8
    assert all(isinstance(b, BasicBlock) for b in blocks)
    assert net.deconv_layers[0].in_channels == 512


def test_deconv_head_layout() -> None:
    """[ConvTranspose2d(k4, s2, p1, op0, no bias), BN, ReLU] x 3, then a 1x1 conv with bias."""
    net = PoseResNet(POSE_RESNET_18)
    layers = list(net.deconv_layers)
    assert len(layers) == 9
    for i in (0, 3, 6):
        d = layers[i]
        assert isinstance(d, nn.ConvTranspose2d)
        assert (d.kernel_size, d.stride, d.padding, d.output_padding) == (
            (4, 4),
            (2, 2),
            (1, 1),
            (0, 0),
        )
        assert d.bias is None
        assert isinstance(layers[i + 1], nn.BatchNorm2d)
        assert isinstance(layers[i + 2], nn.ReLU)
    final = net.final_layer
    assert final.kernel_size == (1, 1)
    assert final.bias is not None
    assert final.out_channels == 17


@pytest.mark.parametrize("kernel", [2, 3, 4])
def test_every_deconv_kernel_gives_stride_4_heatmaps(kernel: int) -> None:
    config = replace(POSE_RESNET_18, layers=(1, 1, 1, 1), deconv_channels=(32, 32, 32))
    net = PoseResNet(replace(config, deconv_kernel=kernel))
    heatmaps, f = net.eval()(torch.zeros(1, 3, 64, 96))
    assert heatmaps.shape == (1, 17, 16, 24)
    assert f.shape == (1, 32, 16, 24)
    assert net.feature_channels == 32


def test_official_init_reaches_the_deconvs() -> None:
    torch.manual_seed(0)
    net = PoseResNet(POSE_RESNET_18)
    deconv = torch.cat(
        [m.weight.flatten() for m in net.deconv_layers if isinstance(m, nn.ConvTranspose2d)]
    )
    assert deconv.std().item() == pytest.approx(0.001, rel=0.05)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and not m.bias.any() for m in bns)
    assert not net.final_layer.bias.any()


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="block"):
        replace(POSE_RESNET_50, block="resnext")
    with pytest.raises(ValueError, match="three deconv"):
        replace(POSE_RESNET_50, deconv_channels=(256, 256))
    with pytest.raises(ValueError, match="color_order"):
        replace(POSE_RESNET_50, color_order="YUV")
