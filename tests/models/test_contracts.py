"""The interface every network answers, checked over every variant (timm's contract tests)."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models.hrnet import HRNetConfig
from models.scio_nets import ScioNet, ScioNetConfig
from models.zoo import VARIANTS, Backbone, build_backbone, count_conv_macs, get_config

ROOT = Path(__file__).resolve().parents[2]
INPUT_HW = (96, 64)  # small (the big variants run too), h != w, multiples of 32 for HRNet


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _grads_missing(module: nn.Module) -> list[str]:
    return [
        name
        for name, p in module.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any()
    ]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_backbone_contract(name: str) -> None:
    torch.manual_seed(0)
    config = VARIANTS[name]
    net = build_backbone(config)
    assert net.config is config
    h, w = INPUT_HW
    x = torch.randn(2, 3, h, w)

    net.train()
    heatmaps, f = net(x)
    s = config.output_stride
    assert heatmaps.shape == (2, config.num_keypoints, h // s, w // s)
    assert f.shape == (2, net.feature_channels, h // s, w // s)
    assert torch.isfinite(heatmaps).all()
    assert torch.isfinite(f).all()
    (heatmaps - 1).square().mean().backward()  # the heatmaps alone must reach every weight
    assert _grads_missing(net) == []

    net.eval()
    with torch.no_grad():
        eval_heatmaps, eval_f = net(x)
        again = net.forward_head(net.forward_features(x))
    assert torch.equal(again, eval_heatmaps)
    assert not torch.allclose(eval_f, f.detach())  # BN switched to running statistics
    assert torch.isfinite(eval_heatmaps).all()


def test_variant_names() -> None:
    assert set(VARIANTS) == {
        "hrnet_w32",
        "hrnet_w48",
        "hrnet_small",
        "hrnet_small_up",
        "pose_resnet_18",
        "pose_resnet_50",
        "pose_resnet_101",
        "pose_resnet_152",
    }
    assert all(isinstance(VARIANTS[n], HRNetConfig) == n.startswith("hrnet") for n in VARIANTS)
    with pytest.raises(KeyError, match="known: hrnet_w32"):
        get_config("hrnet_w18")


@pytest.mark.parametrize("hw", [(64, 48), (96, 72)])
def test_scio_net_contract(hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    config = ScioNetConfig(feature_dropout=0.3)
    net = ScioNet(config)
    n = 2 * len(config.groups)  # every group embedding row is used
    h1, h2, h3 = (torch.rand(n, 1, *hw) for _ in range(3))
    f = torch.randn(n, config.feature_channels, *hw)
    group = torch.arange(n) % len(config.groups)

    net.train()
    out = net(h1, h2, h3, f, group)
    assert out.shape == (n, 1, *hw)
    assert torch.isfinite(out).all()
    (out - h3).square().mean().backward()
    assert _grads_missing(net) == []

    net.eval()
    with torch.no_grad():
        first = net(h1, h2, h3, f, group)
        second = net.head(net.context(h1, h2, f, group), h3)
    assert torch.equal(first, second)  # eval is deterministic: no feature dropout
    assert torch.isfinite(first).all()


def _realistic(net: Backbone, x: torch.Tensor) -> Backbone:
    """Unit-scale weights and BN statistics of real activations.

    With the official N(0, 0.001) init the outputs are ~1e-11 and any export would "match".
    """
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            m.reset_parameters()
        elif isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0  # running statistics := this batch's
    with torch.no_grad():
        net.train()(x)
    return net.eval()


@pytest.mark.parametrize("name", ["hrnet_small", "hrnet_small_up", "pose_resnet_18"])
def test_onnx_export_matches_torch(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _realistic(build_backbone(get_config(name)), torch.randn(8, 3, *INPUT_HW))
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, on purpose
        torch.onnx.export(
            net,
            (torch.randn(2, 3, *INPUT_HW),),
            str(path),
            input_names=["image"],
            output_names=["heatmaps", "features"],
            dynamic_axes={k: {0: "N"} for k in ("image", "heatmaps", "features")},
            opset_version=17,
            dynamo=False,
        )
    x = torch.randn(3, 3, *INPUT_HW)  # another batch size than the export's
    with torch.no_grad():
        heatmaps, f = net(x)
    ort_heatmaps, ort_f = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})
    assert ort_heatmaps.shape == heatmaps.shape
    assert ort_f.shape == f.shape
    assert np.abs(ort_heatmaps - heatmaps.numpy()).max() <= 1e-4
    assert np.abs(ort_f - f.numpy()).max() <= 1e-4
    assert heatmaps.abs().max() > 0.1  # a real signal


def test_mac_counter_against_hand_counts() -> None:
    net = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1),  # 6*8*8 outputs x 4*3*3 = 13824
        nn.Conv2d(6, 6, 3, padding=1, groups=3),  # 6*8*8 x 2*3*3 = 6912
        nn.ConvTranspose2d(6, 2, 4, 2, 1),  # 6*8*8 inputs x 2*4*4 = 12288
        nn.Flatten(),
        nn.Linear(2 * 16 * 16, 5),  # 5 x 512 = 2560
    )
    x = torch.zeros(1, 4, 8, 8)
    assert count_conv_macs(net, lambda: net(x)) == 13824 + 6912 + 12288 + 2560
    assert count_conv_macs(net, lambda: net(torch.zeros(3, 4, 8, 8))) == 3 * 35584


def test_importing_models_does_not_import_torch() -> None:
    code = "import sys, models; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
