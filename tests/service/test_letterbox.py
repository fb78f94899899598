"""The service's letterbox must feed the detector what ultralytics fed it in training."""

import numpy as np
import pytest

from service.detector import letterbox

RNG = np.random.default_rng(5)


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (100, 333), (256, 256), (1000, 90)])
def test_letterbox_matches_ultralytics(hw, tmp_path_factory: pytest.TempPathFactory) -> None:
    if __import__("importlib").util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics is in the train extra")
    from training.detector import ultralytics_offline

    ultralytics_offline(tmp_path_factory.mktemp("ul"))
    from ultralytics.data.augment import LetterBox

    img = RNG.integers(0, 256, (*hw, 3), dtype=np.uint8)
    ours, r, _ = letterbox(img, (256, 256))
    ref = LetterBox(new_shape=(256, 256), auto=False, scaleup=True, center=True)(
        image=np.ascontiguousarray(img[..., ::-1])  # ultralytics works in BGR
    )[..., ::-1]
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)  # both cv2.resize(INTER_LINEAR) and grey 114
    assert r == pytest.approx(min(256 / hw[0], 256 / hw[1]))
