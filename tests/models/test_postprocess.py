import numpy as np
import pytest

from models.keypoints import COCO17
from models.postprocess import (
    PERSON_FEATURES,
    PersonScoreModel,
    oks_iou,
    oks_nms,
    person_features,
    rescore,
)

RNG = np.random.default_rng(4)
SIGMAS = COCO17.sigmas_array


def official_oks_iou(g, d, a_g, a_d, sigmas, in_vis_thre=None):
    """lib/nms/nms.py oks_iou, on flat [x, y, v] * K rows, written out as a loop."""
    vars_ = (sigmas * 2) ** 2
    xg, yg, vg = g[0::3], g[1::3], g[2::3]
    ious = np.zeros(d.shape[0])
    for n in range(d.shape[0]):
        xd, yd, vd = d[n, 0::3], d[n, 1::3], d[n, 2::3]
        dx, dy = xd - xg, yd - yg
        e = (dx**2 + dy**2) / vars_ / ((a_g + a_d[n]) / 2 + np.spacing(1)) / 2
        if in_vis_thre is not None:
            ind = (vg > in_vis_thre) & (vd > in_vis_thre)
            e = e[ind]
        ious[n] = np.sum(np.exp(-e)) / e.shape[0] if e.shape[0] != 0 else 0.0
    return ious


def official_oks_nms(kpts, scores, areas, thresh):
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        ovr = official_oks_iou(
            kpts[i].reshape(-1),
            kpts[order[1:]].reshape(len(order) - 1, 51),
            areas[i],
            areas[order[1:]],
            SIGMAS,
        )
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def _poses(n: int) -> np.ndarray:
    base = RNG.uniform(50, 150, (17, 2))
    kp = base[None] + RNG.normal(0, 4, (n, 17, 2)) * RNG.uniform(0.1, 3, (n, 1, 1))
    return np.concatenate([kp, RNG.uniform(0, 1, (n, 17, 1))], axis=2)


@pytest.mark.parametrize("thre", [None, 0.2])
def test_oks_iou_matches_the_official_loop(thre) -> None:
    d = _poses(30)
    areas = RNG.uniform(2000, 9000, 30)
    ours = oks_iou(d[0], d[1:], areas[0], areas[1:], SIGMAS, thre)
    ref = official_oks_iou(
        d[0].reshape(-1), d[1:].reshape(29, -1), areas[0], areas[1:], SIGMAS, thre
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    assert 0 < ours.min() < ours.max() <= 1


def test_oks_nms_matches_the_official_loop() -> None:
    for _ in range(5):
        d = _poses(40)
        scores = RNG.uniform(0, 1, 40)
        areas = RNG.uniform(2000, 9000, 40)
        keep = oks_nms(d, scores, areas, SIGMAS, 0.9)
        assert keep == official_oks_nms(d, scores, areas, 0.9)
        assert 1 < len(keep) < 40  # the data makes NMS do something


def test_rescore_uses_only_confident_keypoints() -> None:
    k = np.array([[0.9, 0.1, 0.5], [0.1, 0.1, 0.2], [0.3, 0.3, 0.3]])
    out = rescore([0.5, 1.0, 2.0], k)
    np.testing.assert_allclose(out, [0.5 * 0.7, 0.0, 0.6])


def test_oks_nms_tie_order_default_and_official() -> None:
    """Two identical persons with equal scores: we keep the earlier; the official code's
    `scores.argsort()[::-1]` puts the later first and keeps it."""
    d = np.random.default_rng(3).random((1, 17, 3)) * 50
    kpts = np.concatenate([d, d])
    scores = np.array([0.7, 0.7])
    areas = np.array([900.0, 900.0])
    assert oks_nms(kpts, scores, areas, SIGMAS, 0.9) == [0]
    assert oks_nms(kpts, scores, areas, SIGMAS, 0.9, official_order=True) == [1]
    assert official_oks_nms(kpts, scores, areas, 0.9) == [1]


def test_person_features_read_the_box_the_keypoints_and_the_size() -> None:
    kp = np.array([[0.9] * 10 + [0.1] * 7, [0.3] * 17])
    boxes = np.array([[0.0, 0, 50, 200], [10, 10, 20, 30]])
    f = person_features([0.8, 0.2], kp, boxes, [(400, 100), (400, 100)])
    assert f.shape == (2, len(PERSON_FEATURES))
    col = {name: f[:, i] for i, name in enumerate(PERSON_FEATURES)}
    np.testing.assert_allclose(col["box_logit"], np.log([0.8 / 0.2, 0.2 / 0.8]))
    np.testing.assert_allclose(col["keypoint_mean"], kp.mean(1))
    np.testing.assert_allclose(col["keypoint_median"], [0.9, 0.3])
    np.testing.assert_allclose(col["keypoint_share"], [10 / 17, 0.0])
    np.testing.assert_allclose(col["keypoint_max"], [0.9, 0.3])
    np.testing.assert_allclose(col["log_size"], np.log(np.sqrt([50 * 200 / 4e4, 10 * 20 / 4e4])))
    np.testing.assert_allclose(col["log_rescored"], np.log(rescore([0.8, 0.2], kp)))
    assert person_features([], np.zeros((0, 17)), np.zeros((0, 4)), []).shape == (0, 7)


def test_a_person_score_model_is_a_logistic_model_over_named_features() -> None:
    x = RNG.normal(size=(5, len(PERSON_FEATURES)))
    full = PersonScoreModel(weights=tuple(range(7)), bias=-1.0)
    np.testing.assert_allclose(full(x), 1 / (1 + np.exp(-(x @ np.arange(7) - 1.0))))
    two = PersonScoreModel(weights=(2.0, -1.0), bias=0.5, features=("box_logit", "keypoint_max"))
    np.testing.assert_allclose(two(x), 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 4] + 0.5))))
    assert PersonScoreModel.from_dict(two.to_dict()) == two
    with pytest.raises(ValueError, match="unknown person score features"):
        PersonScoreModel(weights=(1.0,), bias=0.0, features=("height",))
    with pytest.raises(ValueError, match="2 weights for 1 features"):
        PersonScoreModel(weights=(1.0, 2.0), bias=0.0, features=("box_logit",))
    with pytest.raises(ValueError, match="finite"):
        PersonScoreModel(weights=(float("nan"),), bias=0.0, features=("box_logit",))
