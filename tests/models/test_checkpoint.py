import json
import os
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import Tensor

import models.checkpoint as checkpoint_module
from models.checkpoint import (
    ARCHS,
    CheckpointError,
    config_from_dict,
    config_to_dict,
    load_model,
    load_scio_net,
    load_weights,
    normalize_state_dict,
    read_checkpoint,
    save_checkpoint,
)
from models.hrnet import HRNET_SMALL, HRNET_W32, HRNET_W48, HRNet
from models.keypoints import CROWDPOSE14
from models.pose_resnet import POSE_RESNET_18, POSE_RESNET_50, POSE_RESNET_152, PoseResNet
from models.scio_nets import ScioNet, ScioNetConfig
from models.zoo import VARIANTS, Backbone, BackboneConfig, build_backbone
from tests.conftest import MANIFESTS, needs_manifests

# Small enough to build and save in milliseconds; TINY_RESNET keeps the deconv head's naming.
TINY_RESNET = replace(POSE_RESNET_18, layers=(1, 1, 1, 1), deconv_channels=(32, 32, 32))
SMALL = {"hrnet_small": HRNET_SMALL, "tiny_pose_resnet": TINY_RESNET}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trained_like(config: BackboneConfig, seed: int) -> Backbone:
    """A model whose every tensor is distinctive, so a load that skips anything is caught."""
    torch.manual_seed(seed)
    net = build_backbone(config)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(seed + 7)
            else:
                t.copy_(torch.rand_like(t))
    return net


def _mmpose_name(key: str, head: str) -> str:
    return (
        f"{head}.{key}" if key.startswith(("final_layer.", "deconv_layers.")) else f"backbone.{key}"
    )


def _in_naming(sd: dict[str, Tensor], naming: str) -> dict[str, object]:
    """The dict as the various tools write it (facts §0 and §9)."""
    if naming == "flat":  # official model-zoo files, final_state.pth, model_best.pth
        return dict(sd)
    if naming == "dataparallel":
        return {f"module.{k}": v for k, v in sd.items()}
    if naming == "official_checkpoint_pth":  # {'epoch', 'state_dict': module.*, ...}
        return {"epoch": 140, "perf": 0.7, "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    if naming == "mmpose_1x":
        weights: dict[str, Tensor] = {_mmpose_name(k, "head"): v for k, v in sd.items()}
        weights["data_preprocessor.mean"] = torch.tensor([123.675, 116.28, 103.53])
        weights["data_preprocessor.std"] = torch.tensor([58.395, 57.12, 57.375])
        return {"meta": {"epoch": 210}, "state_dict": weights}
    if naming == "mmpose_0x":
        return {"state_dict": {_mmpose_name(k, "keypoint_head"): v for k, v in sd.items()}}
    if naming == "no_num_batches_tracked":  # the older SimpleBaseline files
        return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    if naming == "no_num_batches_tracked_with_v2_metadata":
        # torch alone would refuse this one under strict=True (facts §0); we fill explicitly.
        out = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
        out._metadata = sd._metadata  # type: ignore[attr-defined]
        return out
    raise AssertionError(naming)


NAMINGS = [
    "flat",
    "dataparallel",
    "official_checkpoint_pth",
    "mmpose_1x",
    "mmpose_0x",
    "no_num_batches_tracked",
    "no_num_batches_tracked_with_v2_metadata",
]


@pytest.mark.parametrize("naming", NAMINGS)
@pytest.mark.parametrize("variant", sorted(SMALL))
def test_every_naming_loads_every_tensor(variant: str, naming: str, tmp_path: Path) -> None:
    src = _trained_like(SMALL[variant], seed=1)
    sd = src.state_dict()
    path = tmp_path / "weights.pth"
    torch.save(_in_naming(sd, naming), path)

    dst = _trained_like(SMALL[variant], seed=2)
    load_weights(dst, path)

    loaded = dst.state_dict()
    assert list(loaded) == list(sd)
    for key, value in sd.items():
        if key.endswith("num_batches_tracked") and naming.startswith("no_num_batches"):
            assert loaded[key].item() == 0, key  # filled in, not left at dst's value
        else:
            assert torch.equal(loaded[key], value), key


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    sd = PoseResNet(replace(TINY_RESNET, num_keypoints=14)).state_dict()
    torch.save(sd, tmp_path / "crowdpose.pth")
    with pytest.raises(CheckpointError) as err:
        load_weights(PoseResNet(TINY_RESNET), tmp_path / "crowdpose.pth")
    msg = str(err.value)
    assert msg.startswith(f"weights in {tmp_path / 'crowdpose.pth'} do not fit PoseResNet: ")
    assert "2 wrong shapes" in msg
    assert "final_layer.weight (file (14, 32, 1, 1), model (17, 32, 1, 1))" in msg
    assert "final_layer.bias (file (14,), model (17,))" in msg
    assert "missing" not in msg
    assert "unexpected" not in msg


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    sd = dict(PoseResNet(TINY_RESNET).state_dict())
    sd["head.conv_layers.0.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: head\.conv_layers\.0\.weight$"):
        load_weights(PoseResNet(TINY_RESNET), tmp_path / "extra.pth")


def test_many_missing_keys_are_counted_and_the_first_few_named() -> None:
    sd = dict(HRNet(HRNET_SMALL).state_dict())
    dropped = [k for k in sd if k.startswith("stage4.") and not k.endswith("num_batches_tracked")]
    for k in dropped:
        del sd[k]
    with pytest.raises(CheckpointError) as err:
        load_weights(HRNet(HRNET_SMALL), sd)
    msg = str(err.value)
    assert f"{len(dropped)} missing keys: {', '.join(dropped[:5])}, ... and" in msg
    assert f"and {len(dropped) - 5} more" in msg


def test_files_that_are_not_state_dicts_are_refused(tmp_path: Path) -> None:
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="'epoch' holds a int"):
        load_weights(PoseResNet(TINY_RESNET), tmp_path / "odd.pth")
    torch.save({"model": _Pickled()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_weights(PoseResNet(TINY_RESNET), tmp_path / "pickled.pth")


class _Pickled:
    """Anything beyond tensors and plain data: weights_only=True must refuse to unpickle it."""


@needs_manifests
@pytest.mark.parametrize(
    ("manifest", "config"),
    [
        ("pose_hrnet_w32_256x192", HRNET_W32),
        ("pose_hrnet_w48_384x288", HRNET_W48),
        ("pose_resnet_50_256x192", POSE_RESNET_50),
        ("pose_resnet_152_384x288", POSE_RESNET_152),
    ],
)
def test_mmpose_1x_names_map_onto_the_official_keys(manifest: str, config: BackboneConfig) -> None:
    """The MMPose 1.x state dicts recorded in mmpose_1x_keymap_check.json load into our models."""
    check = json.loads((MANIFESTS / "mmpose_1x_keymap_check.json").read_text())[manifest]
    official = json.loads((MANIFESTS / f"{manifest}.json").read_text())["state_dict"]
    mm = {_mmpose_name(k, "head"): torch.empty(shape, device="meta") for k, shape in official}
    assert len(mm) == check["n_entries"]
    head = [[k, list(v.shape)] for k, v in mm.items() if k.startswith("head.")]
    assert head == check["head_keys"]

    sd, naming = normalize_state_dict({"state_dict": mm})
    assert naming == "wrapped+mmpose-1.x"
    assert [[k, list(v.shape)] for k, v in sd.items()] == official
    with torch.device("meta"):
        net = build_backbone(config)
    assert checkpoint_module.check_state_dict(net, sd).keys() == net.state_dict().keys()


# --- our own format ---------------------------------------------------------------------------


def test_own_checkpoint_rebuilds_the_model_from_the_file_alone(tmp_path: Path) -> None:
    config = replace(HRNET_SMALL, num_keypoints=14, input_hw=(96, 64))
    src = _trained_like(config, seed=3).eval()
    path = tmp_path / "run" / "best.pt"
    save_checkpoint(path, src, meta={"epoch": 12, "ap": 0.5, "spec": "crowdpose14", "x": [1, 2]})

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["arch"] == "hrnet"
    assert isinstance(raw["config"], dict)
    assert raw["config"]["stage2"]["num_channels"] == [16, 32]  # plain lists, no dataclasses

    net = load_model(path)
    assert isinstance(net, HRNet)
    assert net.config == config
    assert not net.training
    for key, value in src.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        assert torch.equal(net(x)[0], src(x)[0])
    assert read_checkpoint(path).meta == {
        "epoch": 12,
        "ap": 0.5,
        "spec": "crowdpose14",
        "x": [1, 2],
    }
    assert sorted(os.listdir(path.parent)) == ["best.pt"]

    fresh = HRNet(config)  # our files also load through load_weights (a `state_dict` wrapper)
    load_weights(fresh, path)
    assert torch.equal(fresh.final_layer.weight, src.final_layer.weight)


def test_own_checkpoint_of_a_scio_net(tmp_path: Path) -> None:
    config = ScioNetConfig(feature_channels=16, groups=tuple(g.name for g in CROWDPOSE14.groups))
    torch.manual_seed(0)
    src = ScioNet(config).eval()
    save_checkpoint(tmp_path / "gamma.pt", src, meta={"role": "gamma"})
    net = load_scio_net(tmp_path / "gamma.pt")
    assert net.config == config
    assert not net.training
    hm, f = torch.rand(2, 1, 32, 24), torch.randn(2, 16, 32, 24)
    group = torch.tensor([0, 3])
    with torch.no_grad():
        assert torch.equal(net(hm, hm, hm, f, group), src(hm, hm, hm, f, group))
    with pytest.raises(CheckpointError, match="use load_scio_net"):
        load_model(tmp_path / "gamma.pt")
    save_checkpoint(tmp_path / "backbone.pt", PoseResNet(TINY_RESNET))
    with pytest.raises(CheckpointError, match="use load_model"):
        load_scio_net(tmp_path / "backbone.pt")


def test_official_files_are_not_mistaken_for_ours(tmp_path: Path) -> None:
    torch.save(PoseResNet(TINY_RESNET).state_dict(), tmp_path / "official.pth")
    with pytest.raises(CheckpointError, match="not a scio-pose-checkpoint file"):
        load_model(tmp_path / "official.pth")


def test_failed_save_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, PoseResNet(TINY_RESNET), meta={"epoch": 1})
    before = path.read_bytes()

    def half_write(obj: object, fh: object) -> None:
        fh.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, PoseResNet(TINY_RESNET), meta={"epoch": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]


@pytest.mark.parametrize("config", [*VARIANTS.values(), ScioNetConfig()], ids=[*VARIANTS, "scio"])
def test_config_round_trips_through_plain_data(config: BackboneConfig | ScioNetConfig) -> None:
    data = config_to_dict(config)
    assert json.loads(json.dumps(data)) == data  # nothing but JSON-able primitives
    assert config_from_dict(type(config), data) == config


def test_config_from_dict_refuses_unknown_fields_and_takes_defaults_for_missing() -> None:
    data = config_to_dict(TINY_RESNET)
    with pytest.raises(CheckpointError, match="no fields"):
        config_from_dict(ARCHS["pose_resnet"], {**data, "width_mult": 2})
    del data["final_conv_kernel"]
    assert config_from_dict(ARCHS["pose_resnet"], data) == TINY_RESNET
