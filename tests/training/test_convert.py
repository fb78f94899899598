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


def _official_like_checkpoint(path: Path, wrap_mmpose: bool = False) -> None:
    """A flat state dict with exactly the official keys and shapes, random values (a stand-in
    for the downloaded pose_resnet_50_256x192.pth), written as the official files are."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape in json.loads(MANIFEST.read_text())["state_dict"]:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.05
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
        args += ["--color-order", "RGB"]
    assert main(args) == 0
    b = load_bundle(out)
    assert b.manifest.pose.input_hw == (256, 192)
    assert b.manifest.pose.heatmap_hw == (64, 48)
    assert b.manifest.pose.sigma == 2.0
    assert b.manifest.pose.color_order == ("RGB" if mmpose else "BGR")  # official ResNets: BGR
    assert b.manifest.pose.feature_channels == 256
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
