import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from models.hrnet import HRNET_SMALL, HRNET_W32, HRNET_W48, HRNet, HRNetConfig, StageConfig
from models.zoo import count_conv_macs
from tests.conftest import MANIFESTS, needs_manifests


def _manifest(name: str) -> dict:
    return json.loads((MANIFESTS / f"{name}.json").read_text())


@needs_manifests
@pytest.mark.parametrize(
    ("manifest", "config"),
    [("pose_hrnet_w32_256x192", HRNET_W32), ("pose_hrnet_w48_384x288", HRNET_W48)],
)
def test_state_dict_is_the_official_one(manifest: str, config: HRNetConfig) -> None:
    """Keys, shapes and their order, and the parameter count, as the official model builds."""
    ref = _manifest(manifest)
    with torch.device("meta"):
        net = HRNet(config)
    ours = [[k, list(v.shape)] for k, v in net.state_dict().items()]
    assert ours == ref["state_dict"]
    assert sum(p.numel() for p in net.parameters()) == ref["num_params"]
    assert list(config.input_hw) == ref["input_size"]


def test_official_variants_take_rgb_with_imagenet_statistics() -> None:
    for config in (HRNET_W32, HRNET_W48, HRNET_SMALL):
        assert config.color_order == "RGB"  # the HRNet yamls set COLOR_RGB: true
        assert config.mean == (0.485, 0.456, 0.406)
        assert config.std == (0.229, 0.224, 0.225)


def test_last_stage_fuses_into_branch_zero_only() -> None:
    net = HRNet(HRNET_SMALL)
    *inner, last = list(net.stage4)
    assert last.fuse_layers is not None
    assert len(last.fuse_layers) == 1
    assert all(m.fuse_layers is not None and len(m.fuse_layers) == 4 for m in inner)
    assert len(inner) == HRNET_SMALL.stage4.num_modules - 1 >= 1


def test_features_are_branch_zero_before_the_final_layer() -> None:
    torch.manual_seed(0)
    net = HRNet(HRNET_SMALL).eval()
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        heatmaps, f = net(x)
        stage4_out = net.stage4(_branches_before_stage4(net, x))
    assert heatmaps.shape == (2, 17, 32, 24)
    assert f.shape == (2, net.feature_channels, 32, 24) == (2, 16, 32, 24)
    assert torch.equal(f, stage4_out[0])
    assert torch.equal(heatmaps, net.final_layer(f))


def _branches_before_stage4(net: HRNet, x: torch.Tensor) -> list[torch.Tensor]:
    """The official forward up to stage 4, written out long-hand."""
    x = net.relu(net.bn2(net.conv2(net.relu(net.bn1(net.conv1(x))))))
    x = net.layer1(x)
    xs = [t(x) for t in net.transition1]
    ys = net.stage2(xs)
    xs = [net.transition2[i](ys[i] if i < len(ys) else ys[-1]) for i in range(3)]
    ys = net.stage3(xs)
    return [net.transition3[i](ys[i] if i < len(ys) else ys[-1]) for i in range(4)]


def test_slim_config_shapes_the_stem_and_layer1() -> None:
    net = HRNet(HRNET_SMALL)
    assert net.conv1.out_channels == net.conv2.out_channels == HRNET_SMALL.stem_channels
    assert len(net.layer1) == HRNET_SMALL.layer1_blocks
    assert net.layer1[-1].conv3.out_channels == 4 * HRNET_SMALL.layer1_planes
    assert [len(s) for s in (net.stage2, net.stage3, net.stage4)] == [1, 2, 2]


def test_small_variant_costs_what_the_cpu_budget_allows() -> None:
    net = HRNet(HRNET_SMALL)
    macs = count_conv_macs(net, lambda: net(torch.zeros(1, 3, 128, 96)))
    assert 0.15e9 <= macs <= 0.3e9
    with torch.device("meta"):
        w32 = HRNet(HRNET_W32)
        x = torch.zeros(1, 3, 128, 96)
    assert count_conv_macs(w32, lambda: w32(x)) > 10 * macs


def test_official_init() -> None:
    torch.manual_seed(0)
    net = HRNet(HRNET_SMALL)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert weights.std().item() == pytest.approx(0.001, rel=0.05)
    assert weights.mean().abs().item() < 1e-4
    assert net.final_layer.bias is not None
    assert not net.final_layer.bias.any()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1)
            assert not m.bias.any()


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="color_order"):
        replace(HRNET_SMALL, color_order="rgb")
    with pytest.raises(ValueError, match="differ in length"):
        replace(HRNET_SMALL, stage2=StageConfig(1, (2,), (16, 32)))
    with pytest.raises(ValueError, match="multiples of 32"):
        replace(HRNET_SMALL, input_hw=(128, 100))
    with pytest.raises(ValueError, match="drop branches"):
        replace(HRNET_SMALL, stage4=StageConfig(1, (2, 2), (16, 32)))
