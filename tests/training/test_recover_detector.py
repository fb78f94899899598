"""training.recover_detector: an ultralytics checkpoint back from a detector.onnx, with BatchNorm
statistics that let training go on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("ultralytics") is None:  # not importorskip: imported offline below
    pytest.skip("ultralytics is in the train extra", allow_module_level=True)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for var in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    from training.detector import ultralytics_offline

    return ultralytics_offline(tmp_path / ".ultralytics")


def _images(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    import cv2

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        # smooth random shapes, so that activations are not white noise
        img = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (7, 7), 2)
        p = folder / f"{i:03d}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def test_a_detector_comes_back_from_its_onnx_export_and_can_train_on(
    offline, tmp_path: Path
) -> None:
    from tests.training.support import trained_looking_batchnorms
    from training.detector import DetectorTrainConfig, export_onnx
    from training.recover_detector import (
        build_model,
        load_images,
        recover,
        save_ultralytics_checkpoint,
    )

    torch.manual_seed(0)
    original = build_model("yolo11n.yaml", 1)
    trained_looking_batchnorms(original, spread=0.2)  # far from the identity: folding matters
    original.names = {0: "person"}
    pt = tmp_path / "original.pt"
    save_ultralytics_checkpoint(original.eval(), pt, offline.__version__, {"imgsz": 64})
    onnx_path = export_onnx(offline, pt, DetectorTrainConfig(imgsz=64), tmp_path / "export")

    calib = _images(tmp_path / "calib", 16, 64, seed=1)
    out = tmp_path / "recovered.pt"
    check = recover(onnx_path, calib, out)
    assert check["relative"] < 1e-5
    assert check["conv_blocks"] > 50

    recovered = offline.YOLO(str(out)).model  # what `train detector --weights` loads
    other = load_images(_images(tmp_path / "other", 4, 64, seed=2), 64)
    with torch.no_grad():
        want = original.eval()(other)[0]
        got = recovered.eval()(other)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3 * float(want.abs().max()))

    # in training mode each BatchNorm normalises by its batch; on the calibration images that
    # is the calibration itself, so the function is the same as in eval mode (with BatchNorms
    # that only add the folded bias it would not be: their batch statistics are not 0 and 1)
    x = load_images(calib, 64)
    with torch.no_grad():
        evaluated = recovered.eval()(x)[0]
        trained = recovered.train()(x)  # raw head maps in training mode
        recovered.eval()
        decoded = recovered.model[-1]._inference(trained)  # the same decoding as in eval mode
    torch.testing.assert_close(
        decoded, evaluated, rtol=1e-3, atol=1e-3 * float(evaluated.abs().max())
    )


def test_a_file_that_does_not_fit_the_model_is_refused(offline, tmp_path: Path) -> None:
    from training.recover_detector import DetectorRecoveryError, build_model, load_calibrated

    model = build_model("yolo11n.yaml", 1)
    weights = {k: v.numpy() for k, v in model.state_dict().items() if k.endswith("conv.weight")}
    images = torch.rand(2, 3, 64, 64)
    with pytest.raises(DetectorRecoveryError, match="no folded weights"):
        load_calibrated(model, {}, images)
    key = next(iter(weights))
    weights[key] = weights[key][:1]
    biases = {
        k.replace("weight", "bias"): np.zeros(v.shape[0], np.float32) for k, v in weights.items()
    }
    with pytest.raises(DetectorRecoveryError, match="in the file"):
        load_calibrated(model, {**weights, **biases}, images)
