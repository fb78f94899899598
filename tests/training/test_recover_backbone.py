from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.training.support import trained_looking_batchnorms  # noqa: E402
from training.config import PRESETS, merge  # noqa: E402
from training.onnx_export import export_backbone  # noqa: E402
from training.recover_backbone import RecoveryError, load_folded_onnx, recover  # noqa: E402
from training.train_backbone import build_model  # noqa: E402


def _cfg(preset: str):
    return merge(PRESETS[preset], {"input_hw": [64, 64]})


def _trained_looking(model) -> None:
    trained_looking_batchnorms(model)


@pytest.mark.parametrize("preset", ["cpu-testbed", "cpu-small"])
def test_a_backbone_comes_back_from_its_folded_onnx_export(preset: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = _cfg(preset)
    original = build_model(cfg).eval()
    _trained_looking(original)
    path = export_backbone(original, tmp_path / "pose.onnx")
    recovered = build_model(cfg)
    load_folded_onnx(recovered, path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, got = original(x), recovered(x)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(
            b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4 * float(a.abs().max())
        )
    # the whole command: checked against ONNX Runtime and written as a `train scio` checkpoint
    from training.train_scio import load_backbone

    parity = recover(path, cfg, tmp_path / "final.pt")
    assert max(p["relative"] for p in parity.values()) < 1e-4
    model, train_cfg = load_backbone(tmp_path / "final.pt")
    assert train_cfg.arch == cfg.arch
    with torch.no_grad():
        np.testing.assert_allclose(model(x)[0].numpy(), want[0].numpy(), rtol=1e-4, atol=1e-5)


def test_a_file_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = export_backbone(build_model(_cfg("cpu-small")).eval(), tmp_path / "pose.onnx")
    with pytest.raises(RecoveryError):
        load_folded_onnx(build_model(_cfg("cpu-testbed")), path)


def test_the_bundles_training_record_travels_into_the_checkpoint(tmp_path: Path) -> None:
    import json

    from models.checkpoint import read_checkpoint
    from training.recover_backbone import training_record

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    prov = {"backbone_samples": 480000, "backbone_train_seconds": 15969.4, "machine": "x"}
    (bundle / "bundle.json").write_text(json.dumps({"provenance": prov}))
    record = training_record(bundle)
    assert record == {"samples": 480000, "train_seconds": 15969.4}
    cfg = _cfg("cpu-small")  # untrained: equal folded biases, shared by Identity nodes
    path = export_backbone(build_model(cfg).eval(), tmp_path / "pose.onnx")
    recover(path, cfg, tmp_path / "final.pt", meta=record)
    meta = read_checkpoint(tmp_path / "final.pt").meta
    assert (meta["samples"], meta["train_seconds"]) == (480000, 15969.4)
    assert meta["recovered_from"]["sha256"]
