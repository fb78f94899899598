from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import Tensor

from models.codec import render_gaussians
from models.scio_nets import ScioNet, ScioNetConfig, context_names, export_onnx
from models.zoo import count_conv_macs

CONFIG = ScioNetConfig()  # 6 COCO groups, f with 32 channels (HRNet-W32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gaussians(xy: list[tuple[float, float]], hw: tuple[int, int] = (64, 48)) -> Tensor:
    """(M, 1, h, w) peak-1 Gaussians, the G(x) the search renders."""
    return torch.from_numpy(render_gaussians(np.asarray(xy, dtype=np.float64), hw, 2.0))[:, None]


def _inputs(n: int, hw: tuple[int, int] = (64, 48), seed: int = 0) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    h1, h2 = torch.rand(n, 1, *hw, generator=g), torch.rand(n, 1, *hw, generator=g)
    f = torch.randn(n, CONFIG.feature_channels, *hw, generator=g)
    group = torch.arange(n) % len(CONFIG.groups)
    return h1, h2, f, group


def _net(config: ScioNetConfig = CONFIG, seed: int = 0) -> ScioNet:
    torch.manual_seed(seed)
    return ScioNet(config).eval()


@pytest.mark.parametrize("hw", [(64, 48), (96, 72), (32, 24)])
def test_shapes(hw: tuple[int, int]) -> None:
    net = _net()
    h1, h2, f, group = _inputs(3, hw)
    with torch.no_grad():
        ctx = net.context(h1, h2, f, group)
        out = net.head(ctx, torch.rand(5, 1, *hw), torch.tensor([0, 0, 1, 2, 2]))
    h, w = hw
    expected = [(3, c, -(-h // 2**lv), -(-w // 2**lv)) for lv, c in enumerate(CONFIG.head_widths)]
    assert [tuple(c.shape) for c in ctx] == expected
    assert out.shape == (5, 1, h, w)


def test_ctx_index_gives_each_candidate_its_own_context() -> None:
    """One batched head call equals running the whole network per candidate."""
    net = _net()
    h1, h2, f, group = _inputs(3, (32, 24))
    candidates = _gaussians([(10, 25), (20, 20), (15, 30), (5.5, 12.25), (20, 8)], (32, 24))
    index = torch.tensor([2, 0, 1, 2, 0])
    with torch.no_grad():
        batched = net.head(net.context(h1, h2, f, group), candidates, index)
        one_by_one = torch.cat(
            [
                net(
                    h1[i : i + 1],
                    h2[i : i + 1],
                    candidates[m : m + 1],
                    f[i : i + 1],
                    group[i : i + 1],
                )
                for m, i in enumerate(index.tolist())
            ]
        )
        # Without ctx_index, rows pair up one to one.
        paired = net.head(net.context(h1, h2, f, group), candidates[:3])
        direct = net(h1, h2, candidates[:3], f, group)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)
    torch.testing.assert_close(paired, direct, atol=1e-6, rtol=0)
    assert not torch.allclose(batched[0], batched[3], atol=1e-3)  # same context, other candidate


def test_output_depends_on_candidate_group_and_features() -> None:
    net = _net()
    h1, h2, f, _ = _inputs(1)
    d = _gaussians([(20, 40)])
    with torch.no_grad():
        base = net(h1, h2, d, f, torch.tensor([0]))
        moved = net(h1, h2, _gaussians([(23, 44)]), f, torch.tensor([0]))
        other_group = net(h1, h2, d, f, torch.tensor([4]))
        other_f = net(h1, h2, d, torch.randn_like(f), torch.tensor([0]))
    for changed in (moved, other_group, other_f):
        assert (changed - base).abs().max() > 1e-3


def test_head_sees_the_whole_heatmap() -> None:
    """D and A can be far apart: the corner pixel of the output must feel the opposite corner."""
    net = _net()
    h1, h2, f, group = _inputs(1)
    with torch.no_grad():
        ctx = net.context(h1, h2, f, group)
    h3 = torch.zeros(1, 1, 64, 48, requires_grad=True)
    net.head(ctx, h3)[0, 0, 0, 0].backward()
    assert h3.grad is not None
    assert h3.grad[0, 0, -1, -1].abs() > 0
    assert (h3.grad[0, 0] != 0).float().mean() == 1.0  # every input pixel reaches it


def test_head_is_much_cheaper_than_the_context() -> None:
    net = _net()
    h1, h2, f, group = _inputs(1)
    with torch.no_grad():
        ctx = net.context(h1, h2, f, group)
    context_macs = count_conv_macs(net, lambda: net.context(h1, h2, f, group))
    head_macs = count_conv_macs(net, lambda: net.head(ctx, h1))
    assert head_macs * 10 < context_macs
    assert head_macs < 10e6  # per candidate, at 64x48


def test_feature_dropout_zeroes_f_per_sample_in_training_only() -> None:
    seen: list[Tensor] = []
    net = _net(replace(CONFIG, feature_dropout=0.5))
    net.context_net.stem_features.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    h1, h2, f, group = _inputs(64, (16, 8))
    net.train()
    net.context(h1, h2, f, group)
    dropped = (seen[-1].flatten(1).abs().sum(1) == 0).sum().item()
    assert 16 <= dropped <= 48  # about half of 64 samples, whole samples only
    kept = seen[-1].flatten(1).abs().sum(1) > 0
    assert torch.equal(seen[-1][kept], f[kept])  # not rescaled
    net.eval()
    net.context(h1, h2, f, group)
    assert torch.equal(seen[-1], f)


def test_full_feature_dropout_makes_the_net_blind_to_f_in_training_and_inference() -> None:
    """feature_dropout 1: a network without image features; it must not meet f for the first
    time at inference (eval mode switches partial dropout off, not this)."""
    h1, h2, f, group = _inputs(4)
    for p, blind in ((1.0, True), (0.0, False)):
        for mode in ("train", "eval"):
            net = _net(replace(CONFIG, feature_dropout=p))
            net.train(mode == "train")
            with torch.no_grad():
                a = net(h1, h2, h1, f, group)
                b = net(h1, h2, h1, 3 * f + 1, group)
            assert torch.equal(a, b) is blind, (p, mode)


HALF = replace(CONFIG, head_start_level=1, context_start_level=1)
STRIDED = replace(HALF, context_stem="strided")


@pytest.mark.parametrize(
    "config", [CONFIG, HALF, STRIDED], ids=["full", "context-at-half", "strided-stem"]
)
def test_onnx_context_and_head_match_torch(tmp_path: Path, config: ScioNetConfig) -> None:
    net = _net(config)
    export_onnx(net, tmp_path / "ctx.onnx", tmp_path / "head.onnx", (64, 48))
    # Other batch sizes than the export example (G=2, M=3): the axes must be dynamic.
    h1, h2, f, group = _inputs(4, seed=1)
    candidates = torch.rand(9, 1, 64, 48)
    index = torch.tensor([3, 3, 0, 1, 2, 2, 1, 0, 3])
    with torch.no_grad():
        ctx = net.context(h1, h2, f, group)
        out = net.head(ctx, candidates, index)
    context_session = ort.InferenceSession(str(tmp_path / "ctx.onnx"))
    head_session = ort.InferenceSession(str(tmp_path / "head.onnx"))
    ort_ctx = context_session.run(
        None, {"h1": h1.numpy(), "h2": h2.numpy(), "features": f.numpy(), "group": group.numpy()}
    )
    for a, b in zip(ort_ctx, ctx, strict=True):
        assert np.abs(a - b.numpy()).max() <= 1e-4
    feed = {"candidates": candidates.numpy(), "ctx_index": index.numpy()}
    feed |= dict(zip(context_names(net.config), ort_ctx, strict=True))
    (ort_out,) = head_session.run(None, feed)
    assert ort_out.shape == (9, 1, 64, 48)
    assert np.abs(ort_out - out.numpy()).max() <= 1e-4
    assert np.abs(out.numpy()).max() > 1e-2  # a real signal, not two near-zero maps
    assert net.training is False


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="same length"):
        ScioNetConfig(context_widths=(8, 16), head_widths=(8, 16, 32))
    with pytest.raises(ValueError, match="feature_dropout"):
        ScioNetConfig(feature_dropout=1.5)
    with pytest.raises(ValueError, match="group"):
        ScioNetConfig(groups=())


def test_a_head_that_starts_at_half_resolution() -> None:
    """head_start_level=1: same interface and output size, ctx from level 1 on, far cheaper per
    candidate, and the output still moves with the candidate."""
    from models.zoo import count_conv_macs

    base = ScioNetConfig(
        feature_channels=8, context_widths=(8, 12, 16, 24), head_widths=(4, 8, 8, 12)
    )
    half = ScioNetConfig(**{**base.__dict__, "head_start_level": 1})
    torch.manual_seed(0)
    net = ScioNet(half).eval()
    h1, h2 = torch.rand(2, 1, 32, 24), torch.rand(2, 1, 32, 24)
    f = torch.randn(2, 8, 32, 24)
    g = torch.tensor([0, 3])
    ctx = net.context(h1, h2, f, g)
    assert [tuple(c.shape[-2:]) for c in ctx] == [(16, 12), (8, 6), (4, 3)]
    cand = torch.zeros(3, 1, 32, 24)
    cand[0, 0, 10, 8] = 1.0
    cand[1, 0, 20, 14] = 1.0
    out = net.head(ctx, cand, torch.tensor([0, 0, 1]))
    assert out.shape == (3, 1, 32, 24)
    assert not torch.allclose(out[0], out[1])
    full = ScioNet(base).eval()
    fctx = full.context(h1, h2, f, g)
    cost_full = count_conv_macs(full, lambda: full.head(fctx, cand, torch.tensor([0, 0, 1])))
    cost_half = count_conv_macs(net, lambda: net.head(ctx, cand, torch.tensor([0, 0, 1])))
    assert cost_half < 0.7 * cost_full  # and narrow full-resolution convs are what run slowest
    assert context_names(half) == ["ctx1", "ctx2", "ctx3"]
    with pytest.raises(ValueError, match="head_start_level"):
        ScioNetConfig(head_widths=(4, 8), context_widths=(8, 8), head_start_level=1)


def _two_nets(a: ScioNetConfig, b: ScioNetConfig) -> tuple[ScioNet, ScioNet]:
    torch.manual_seed(0)
    return ScioNet(a).eval(), ScioNet(b).eval()


def _small_inputs() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """H_B, H_C (2, 1, 32, 24), f (2, 8, 32, 24) and two groups."""
    h1, h2 = torch.rand(2, 1, 32, 24), torch.rand(2, 1, 32, 24)
    return h1, h2, torch.randn(2, 8, 32, 24), torch.tensor([0, 3])


def test_a_context_that_starts_at_half_resolution() -> None:
    """context_start_level=1: the context pools its inputs and skips its finest level; the head
    reads the same ctx shapes as with a full-resolution context, for a fraction of the MACs, and
    the context still sees detail within a pooling cell only as its average."""
    base = ScioNetConfig(
        feature_channels=8, context_widths=(8, 12, 16, 24), head_widths=(4, 8, 8, 12),
        head_start_level=1,
    )  # fmt: skip
    half = replace(base, context_start_level=1)
    full_net, half_net, (h1, h2, f, g) = *_two_nets(base, half), _small_inputs()
    with torch.no_grad():
        ctx = half_net.context(h1, h2, f, g)
        assert [c.shape for c in ctx] == [c.shape for c in full_net.context(h1, h2, f, g)]
        assert [tuple(c.shape[-2:]) for c in ctx] == [(16, 12), (8, 6), (4, 3)]
        # swapping two pixels of one pooling cell changes nothing; moving mass across cells does
        swapped = h1.clone()
        swapped[:, :, 0, 0], swapped[:, :, 0, 1] = h1[:, :, 0, 1], h1[:, :, 0, 0]
        same = half_net.context(swapped, h2, f, g)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ctx, same, strict=True))
        moved = h1.clone()
        moved[:, :, 0, 0] += 1.0
        assert not torch.allclose(half_net.context(moved, h2, f, g)[0], ctx[0])
    macs_full = count_conv_macs(full_net, lambda: full_net.context(h1, h2, f, g))
    macs_half = count_conv_macs(half_net, lambda: half_net.context(h1, h2, f, g))
    assert macs_half < 0.6 * macs_full
    assert context_names(half) == context_names(base) == ["ctx1", "ctx2", "ctx3"]
    with pytest.raises(ValueError, match="context_start_level"):
        replace(base, context_start_level=2)  # beyond the head's first level


def test_a_strided_context_stem_keeps_the_detail_pooling_loses() -> None:
    """context_stem="strided": the context starts at half resolution as with pooling (same ctx
    shapes, about the same MACs), but its stem strides over the full-resolution maps, so a swap
    of two pixels within one 2x2 cell (invisible after pooling) changes the context; odd sizes
    are padded to ceil(H/2) x ceil(W/2), the sizes the head pools its candidate to."""
    base = ScioNetConfig(
        feature_channels=8, context_widths=(8, 12, 16, 24), head_widths=(4, 8, 8, 12),
        head_start_level=1, context_start_level=1,
    )  # fmt: skip
    strided = replace(base, context_stem="strided")
    pool_net, net, (h1, h2, f, g) = *_two_nets(base, strided), _small_inputs()
    with torch.no_grad():
        ctx = net.context(h1, h2, f, g)
        assert [c.shape for c in ctx] == [c.shape for c in pool_net.context(h1, h2, f, g)]
        swapped = h1.clone()
        swapped[:, :, 0, 0], swapped[:, :, 0, 1] = h1[:, :, 0, 1], h1[:, :, 0, 0]
        assert not torch.allclose(net.context(swapped, h2, f, g)[0], ctx[0], atol=1e-6)
        f_swapped = f.clone()
        f_swapped[:, :, 4, 4], f_swapped[:, :, 5, 5] = f[:, :, 5, 5], f[:, :, 4, 4]
        assert not torch.allclose(net.context(h1, h2, f_swapped, g)[0], ctx[0], atol=1e-6)
        odd = net.context(h1[:, :, :31, :23], h2[:, :, :31, :23], f[:, :, :31, :23], g)
        assert [tuple(c.shape[-2:]) for c in odd] == [(16, 12), (8, 6), (4, 3)]
        out = net.head(odd, torch.rand(2, 1, 31, 23))
        assert out.shape == (2, 1, 31, 23)
    macs_pool = count_conv_macs(pool_net, lambda: pool_net.context(h1, h2, f, g))
    macs = count_conv_macs(net, lambda: net.context(h1, h2, f, g))
    assert macs < 1.2 * macs_pool
    with pytest.raises(ValueError, match="context_stem"):
        replace(base, context_stem="avg")
