import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from models.bundle import load_bundle  # noqa: E402
from service.cli import main  # noqa: E402
from service.pipeline import PosePipeline  # noqa: E402
from service.results import PoseOptions  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared"
MANIFEST = SHARED / "reference" / "checkpoints" / "pose_resnet_50_256x192.json"
MINI = SHARED / "data" / "coco-val-mini"
pytestmark = pytest.mark.skipif(not MANIFEST.exists(), reason="no ../shared/reference")


def _official_like_checkpoint(
    path: Path, wrap_mmpose: bool = False, manifest: Path = MANIFEST, final_gain: float = 1.0
) -> None:
    """A flat state dict with exactly the official keys and shapes, random values (a stand-in
    for the downloaded pose_resnet_50_256x192.pth), written as the official files are.
    `final_gain` scales the last layer, for heatmaps as large as real weights give."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape in json.loads(manifest.read_text())["state_dict"]:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.05
            if key.startswith("final_layer."):
                sd[key] *= final_gain
    if wrap_mmpose:
        sd = {
            ("head." + k if k.startswith(("final_layer", "deconv_layers")) else "backbone." + k): v
            for k, v in sd.items()
        }
        sd = {"state_dict": sd, "meta": {"mmpose_version": "1.3.2"}}
    torch.save(sd, path)


@pytest.mark.parametrize("mmpose", [False, True], ids=["official", "mmpose-1x"])
def test_convert_official_weights_into_a_servable_bundle(tmp_path: Path, mmpose: bool) -> None:
    torch.set_num_threads(2)
    ckpt = tmp_path / "pose_resnet_50_256x192.pth"
    _official_like_checkpoint(ckpt, wrap_mmpose=mmpose)
    out = tmp_path / "bundle"
    args = ["convert", "--weights", str(ckpt), "--arch", "pose_resnet_50", "--out", str(out)]
    if mmpose:
        args += ["--color-order", "RGB", "--flip-test"]
    assert main(args) == 0
    b = load_bundle(out)
    assert b.manifest.pose.input_hw == (256, 192)
    assert b.manifest.pose.heatmap_hw == (64, 48)
    assert b.manifest.pose.sigma == 2.0
    assert b.manifest.pose.color_order == ("RGB" if mmpose else "BGR")  # official ResNets: BGR
    assert b.manifest.pose.feature_channels == 256
    assert b.manifest.pose.flip_shift == 1.0  # the official code's one pixel, not stride 4's 0.75
    assert b.manifest.pose.flip_test is mmpose  # recorded only when asked for
    assert b.manifest.provenance["parity_max_abs_diff"]["pose"] <= 1e-4
    if not (MINI / "images").exists():
        return
    image = np.asarray(Image.open(MINI / "images" / "000000000139.jpg").convert("RGB"))
    res = PosePipeline(b, device="cpu").estimate(
        image, PoseOptions(boxes=np.array([[412.0, 157, 467, 295]]))
    )
    kp = res.persons[0].keypoints
    assert kp.shape == (17, 3)
    assert np.isfinite(kp).all()


def test_convert_rejects_mismatched_weights(tmp_path: Path) -> None:
    ckpt = tmp_path / "w.pth"
    _official_like_checkpoint(ckpt)
    with pytest.raises(Exception, match=r"(?i)missing|unexpected|shape"):
        main(
            ["convert", "--weights", str(ckpt), "--arch", "hrnet_w32", "--out", str(tmp_path / "b")]
        )
    assert not (tmp_path / "b").exists()


ARCH_OF = {
    "pose_hrnet_w32_256x192": "hrnet_w32",
    "pose_hrnet_w48_384x288": "hrnet_w48",
    "pose_resnet_50_256x192": "pose_resnet_50",
    "pose_resnet_152_384x288": "pose_resnet_152",
}


@pytest.mark.parametrize("name", sorted(ARCH_OF))
def test_convert_succeeds_on_every_official_manifest_and_reports_parity(
    tmp_path: Path, name: str
) -> None:
    """Random weights with every official key and shape; the last layer scaled so heatmaps reach
    the hundreds, as official HRNet-W32 weights do (an absolute 1e-4 tolerance refused those:
    0.00013 on outputs of ~100, ParityError). The check is relative to each output's scale."""
    torch.set_num_threads(2)
    manifest = MANIFEST.parent / f"{name}.json"
    ckpt = tmp_path / f"{name}.pth"
    _official_like_checkpoint(ckpt, manifest=manifest, final_gain=300.0)
    out = tmp_path / "bundle"
    args = ["convert", "--weights", str(ckpt), "--arch", ARCH_OF[name], "--out", str(out)]
    # the weights do not depend on the input size; a small one keeps the test quick
    assert main([*args, "--input-size", "128", "96"]) == 0
    parity = load_bundle(out).manifest.provenance["parity"]["pose"]
    assert set(parity) == {"heatmaps", "features"}
    for r in parity.values():
        assert r["relative"] <= 1e-4
        assert r["max_abs_diff"] <= r["relative"] * r["max_abs_reference"] * (1 + 1e-9)
    assert parity["heatmaps"]["max_abs_reference"] > 10  # large outputs, as real weights give


def test_parity_tolerance_is_relative_and_can_be_overridden(tmp_path: Path) -> None:
    from training.onnx_export import ParityError, check_parity

    class Big(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
            return (x * 1000.0,)

    onnx_path = tmp_path / "big.onnx"
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    torch.onnx.export(
        Big(), (torch.from_numpy(x),), str(onnx_path), input_names=["x"], dynamo=False
    )

    def shifted(t: torch.Tensor) -> tuple[torch.Tensor]:
        return (t * 1000.0 + 0.05,)  # 0.05 absolute on values of a few thousand: 1e-5 relative

    report = check_parity(shifted, onnx_path, {"x": x})
    (r,) = report.values()
    assert r["max_abs_diff"] == pytest.approx(0.05, rel=1e-3)
    with pytest.raises(ParityError, match="parity-tolerance"):
        check_parity(shifted, onnx_path, {"x": x}, rtol=1e-7)


def test_mmpose_checkpoints_get_mmpose_preprocessing(tmp_path: Path) -> None:
    """MMPose normalises RGB with mean [123.675, 116.28, 103.53] and std [58.395, 57.12, 57.375]
    on 0-255 values for ResNets too; the official ResNets see BGR. The network input of the
    converted bundle equals MMPose's formula."""
    from models.preprocess import Normalization, to_network_input

    torch.set_num_threads(2)
    inputs = {}
    for mmpose in (False, True):
        ckpt = tmp_path / f"w{mmpose}.pth"
        _official_like_checkpoint(ckpt, wrap_mmpose=mmpose)
        out = tmp_path / f"b{mmpose}"
        assert (
            main(["convert", "--weights", str(ckpt), "--arch", "pose_resnet_50", "--out", str(out)])
            == 0
        )
        m = load_bundle(out).manifest
        assert m.provenance["preprocessing"] == ("mmpose" if mmpose else "official")
        crop = np.random.default_rng(1).integers(0, 256, (1, 8, 6, 3), dtype=np.uint8)
        inputs[mmpose] = to_network_input(
            crop, Normalization(m.pose.mean, m.pose.std, m.pose.color_order)
        )
    rgb = crop.astype(np.float64)
    mm = (rgb - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]
    np.testing.assert_allclose(inputs[True], mm.transpose(0, 3, 1, 2), atol=1e-5)
    # official PoseResNet: BGR channels, ImageNet statistics in the list's order (official code)
    bgr = rgb[..., ::-1]
    official = (bgr / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(inputs[False], official.transpose(0, 3, 1, 2), atol=1e-5)


def test_a_converted_detector_keeps_boxes_down_to_the_recorded_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """convert --detector-pt exports with NMS at the floor bundle.json records, not at
    ultralytics' export default 0.25 (which would leave a request nothing to lower)."""
    import types

    import training.detector
    from training.cli_convert import DETECTOR_SCORE_FLOOR, export_detector

    seen: dict[str, object] = {}

    class FakeYolo:
        def __init__(self, path: str) -> None:
            seen["path"] = path

        def export(self, **kw: object) -> str:
            seen.update(kw)
            return str(tmp_path / "det.onnx")

    fake = types.SimpleNamespace(YOLO=FakeYolo)
    monkeypatch.setattr(training.detector, "ultralytics_offline", lambda _: fake)
    pt = tmp_path / "yolo.pt"
    pt.write_bytes(b"weights")
    work = tmp_path / "work"
    work.mkdir()
    assert export_detector(pt, 320, work) == tmp_path / "det.onnx"
    assert seen["conf"] == DETECTOR_SCORE_FLOOR < 0.25
    assert (seen["nms"], seen["imgsz"], seen["batch"]) == (True, 320, 1)
    assert seen["path"] == str(work / "yolo.pt")  # a copy: nothing written beside the user's file
