import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from service.pipeline import PosePipeline
from service.results import PoseOptions

pytest.importorskip("onnx")
from tests.service.onnx_fakes import make_fake_bundle


def _dots(hw: tuple[int, int], points: list[tuple[float, float]], r: int = 7) -> np.ndarray:
    img = np.zeros((*hw, 3), np.uint8)
    ys, xs = np.mgrid[0 : hw[0], 0 : hw[1]]
    for x, y in points:
        img[(xs - x) ** 2 + (ys - y) ** 2 <= r * r] = 255
    return img


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> PosePipeline:
    root = tmp_path_factory.mktemp("b") / "bundle"
    # detector: one person box in letterboxed 320x320 coordinates, one below the threshold,
    # one of another class
    rows = np.array(
        [[40, 60, 120, 260, 0.9, 0], [0, 0, 50, 50, 0.1, 0], [10, 10, 90, 90, 0.95, 3]],
        np.float32,
    )
    make_fake_bundle(root, detector_rows=rows)
    return PosePipeline.from_path(root, device="cpu")


def _tolerance(box: np.ndarray) -> float:
    # one heatmap pixel plus the pooling offset, in image pixels
    h = box[3] - box[1]
    w = box[2] - box[0]
    crop_w = max(w, 0.75 * h) * 1.25
    return 2.5 * crop_w / 24


def test_a_dot_comes_back_at_its_image_position(pipe: PosePipeline) -> None:
    img = _dots((300, 400), [(100, 120), (300, 200)])
    boxes = np.array([[60.0, 60, 140, 180], [250, 120, 350, 280]])
    res = pipe.estimate(img, PoseOptions(boxes=boxes))
    assert res.image_hw == (300, 400)
    assert len(res.persons) == 2
    for person, dot in zip(
        sorted(res.persons, key=lambda p: p.bbox[0]), [(100, 120), (300, 200)], strict=True
    ):
        err = np.linalg.norm(person.keypoints[:, :2] - dot, axis=1)
        assert err.max() < _tolerance(person.bbox), (err.max(), _tolerance(person.bbox))
        assert person.keypoints.shape == (17, 3)
        assert person.bbox_score == 1.0
    assert set(res.timings_ms) >= {"detect_ms", "preprocess_ms", "backbone_ms", "postprocess_ms"}


def test_flip_test_keeps_the_dot_in_place(pipe: PosePipeline) -> None:
    img = _dots((300, 400), [(100, 120)])
    box = np.array([[60.0, 60, 140, 180]])
    plain = pipe.estimate(img, PoseOptions(boxes=box)).persons[0]
    flipped = pipe.estimate(img, PoseOptions(boxes=box, flip=True)).persons[0]
    assert np.abs(flipped.keypoints[:, :2] - plain.keypoints[:, :2]).max() < _tolerance(box[0])


def test_batched_equals_one_at_a_time(pipe: PosePipeline) -> None:
    rng = np.random.default_rng(0)
    items = []
    for k in range(3):
        img = _dots((200 + 40 * k, 260), [tuple(rng.uniform(40, 180, 2))])
        items.append((img, PoseOptions(boxes=np.array([[20.0, 20, 200, 190]]), flip=k == 1)))
    together = pipe.estimate_many(items)
    for (img, o), r in zip(items, together, strict=True):
        alone = pipe.estimate(img, o)
        np.testing.assert_allclose(r.persons[0].keypoints, alone.persons[0].keypoints, atol=1e-5)


def test_detector_boxes_are_mapped_back_from_the_letterbox(pipe: PosePipeline) -> None:
    img = np.zeros((480, 640, 3), np.uint8)  # r = 0.5, letterbox pads 40 px top and bottom
    res = pipe.estimate(img, PoseOptions())
    assert len(res.persons) == 1  # low score and other class dropped
    np.testing.assert_allclose(res.persons[0].bbox, [80, 40, 240, 440], atol=1e-6)
    assert res.persons[0].bbox_score == pytest.approx(0.9)


def test_a_request_can_lower_or_raise_the_detectors_threshold(pipe: PosePipeline) -> None:
    """The fixed detector's two person boxes score 0.9 and 0.1 (the bundle's threshold: 0.3).
    Images of one call keep their own thresholds although the detector runs once for all."""
    img = np.zeros((480, 640, 3), np.uint8)
    assert (pipe.info["detector_threshold"], pipe.info["detector_score_floor"]) == (0.3, 0.0)
    items = [
        (img, PoseOptions()),
        (img, PoseOptions(detector_threshold=0.05)),
        (img, PoseOptions(detector_threshold=0.95)),
        (img, PoseOptions(detector_threshold=0.05, boxes=np.array([[10.0, 10, 90, 90]]))),
    ]
    found = [sorted(p.bbox_score for p in r.persons) for r in pipe.estimate_many(items)]
    assert found[0] == pytest.approx([0.9])
    assert found[1] == pytest.approx([0.1, 0.9])
    assert found[2] == []
    assert found[3] == [1.0]  # the caller's box; no detector


def test_filters_and_empty_inputs(pipe: PosePipeline) -> None:
    img = _dots((200, 200), [(50, 50), (150, 150)])
    boxes = np.array([[10.0, 10, 90, 90], [110, 110, 190, 190], [5, 5, 5, 40]])  # last degenerate
    res = pipe.estimate(img, PoseOptions(boxes=boxes))
    assert len(res.persons) == 2
    assert len(pipe.estimate(img, PoseOptions(boxes=boxes, max_persons=1)).persons) == 1
    assert pipe.estimate(img, PoseOptions(boxes=boxes, min_score=10.0)).persons == []
    empty = pipe.estimate(img, PoseOptions(boxes=np.zeros((0, 4))))
    assert empty.persons == []
    assert pipe.estimate_many([]) == []


def test_keypoints_stay_inside_the_image(pipe: PosePipeline) -> None:
    img = _dots((100, 100), [(2, 97)])
    res = pipe.estimate(img, PoseOptions(boxes=np.array([[-50.0, 40, 60, 160]])))
    kp = res.persons[0].keypoints
    assert np.all(np.isfinite(kp))
    assert kp[:, :2].min() >= 0
    assert kp[:, :2].max() <= 99


def test_a_bundle_without_detector_needs_boxes(tmp_path: Path) -> None:
    p = PosePipeline.from_path(make_fake_bundle(tmp_path / "nodet"), device="cpu")
    with pytest.raises(RuntimeError, match="no detector"):
        p.estimate(np.zeros((50, 50, 3), np.uint8), PoseOptions())
    p.warmup()
    assert p.info["detector"] is False


def test_flip_fusion_reinforces_the_same_peak(pipe: PosePipeline) -> None:
    # An off-centre dot: the flip-backed heatmap of the mirrored crop must land on the same
    # peak (one pixel right, the official shift), so fusing keeps the peak height.
    img = _dots((300, 400), [(85, 100)])
    opts = PoseOptions(boxes=np.array([[60.0, 60, 140, 180]]))
    persons = pipe._persons([(img, opts)])
    crops = pipe._crops([(img, opts)], persons)
    plain, _ = pipe._backbone(crops, np.array([False]))
    fused, _ = pipe._backbone(crops, np.array([True]))
    p, f = plain[0, 0], fused[0, 0]
    pk = np.unravel_index(p.argmax(), p.shape)
    fk = np.unravel_index(f.argmax(), f.shape)
    assert pk[0] == fk[0]
    assert abs(pk[1] - fk[1]) <= 1
    assert f.max() > p.max() - 0.5 * (p.max() - p.min())


def test_a_bundle_with_the_flip_test_by_default_runs_it_unless_a_request_says_no(
    tmp_path: Path,
) -> None:
    flipping = PosePipeline.from_path(make_fake_bundle(tmp_path / "f", flip_test=True))
    assert flipping.info["flip_test"] is True
    img = _dots((300, 400), [(85, 100)])
    box = np.array([[60.0, 60, 140, 180]])

    def heatmaps(p: PosePipeline, flip: bool | None) -> np.ndarray:
        return p.backbone_pass([(img, PoseOptions(boxes=box, flip=flip))]).heatmaps

    on, off = heatmaps(flipping, True), heatmaps(flipping, False)
    assert not np.allclose(on, off)  # the off-centre dot's fused maps differ from the plain
    np.testing.assert_array_equal(heatmaps(flipping, None), on)
    plain = PosePipeline.from_path(make_fake_bundle(tmp_path / "p"))
    assert plain.info["flip_test"] is False
    np.testing.assert_array_equal(heatmaps(plain, None), heatmaps(plain, False))


def test_detected_boxes_below_the_bundles_flip_minimum_run_without_the_flip_test(
    tmp_path: Path,
) -> None:
    """Two detected boxes scoring 0.45 and 0.31 with the flip test on by default: a bundle whose
    `flip_min_score` lies between them mirrors only the first box's crop (three network inputs,
    not four) and fuses only its heatmaps; a request that says `flip`, and caller-given boxes,
    follow the request or the bundle's default for every box."""
    rows = np.array([[40, 60, 120, 260, 0.45, 0], [160, 60, 240, 260, 0.31, 0]], np.float32)
    img = _dots((480, 640), [(150, 230), (390, 230)], r=15)  # off-centre: flipping shows

    def bundle(name: str, floor: float) -> PosePipeline:
        root = make_fake_bundle(
            tmp_path / name, detector_rows=rows, flip_test=True, flip_min_score=floor
        )
        return PosePipeline.from_path(root, device="cpu")

    every, some = bundle("every", 0.0), bundle("some", 0.4)
    assert (every.info["flip_min_score"], some.info["flip_min_score"]) == (0.0, 0.4)
    detected = [(img, PoseOptions())]
    assert len(every.network_input(detected)) == 4
    assert len(some.network_input(detected)) == 3
    all_flip = every.backbone_pass(detected)
    mixed = some.backbone_pass(detected)
    order = np.argsort(-mixed.persons.box_scores)
    assert mixed.persons.box_scores[order].tolist() == pytest.approx([0.45, 0.31])
    first, second = order
    np.testing.assert_allclose(mixed.heatmaps[first], all_flip.heatmaps[first], atol=1e-6)
    plain = some.backbone_pass([(img, PoseOptions(flip=False))])
    np.testing.assert_allclose(mixed.heatmaps[second], plain.heatmaps[second], atol=1e-6)
    assert not np.allclose(mixed.heatmaps[second], all_flip.heatmaps[second])
    assert len(some.network_input([(img, PoseOptions(flip=True))])) == 4
    boxes = np.array([[80.0, 40, 240, 440], [320, 40, 480, 440]])
    given = [(img, PoseOptions(boxes=boxes, box_scores=np.array([0.45, 0.31])))]
    assert len(some.network_input(given)) == 4


def test_oks_nms_uses_the_bundles_threshold_unless_a_request_gives_one(tmp_path: Path) -> None:
    """Two small boxes, each on its own dot, 30 px apart: their poses overlap a little (OKS near
    0.001). A bundle whose detector sets OKS-NMS at 1e-6 keeps only the better one; a request
    asking for 1.0 keeps both, as does a bundle at the official 0.9."""
    import service.pipeline as sp

    img = _dots((240, 240), [(100, 120), (130, 120)])
    boxes = np.array([[80.0, 100, 110, 140], [120, 100, 150, 140]])  # crops: one dot each
    seen: list[float] = []
    strict = PosePipeline.from_path(
        make_fake_bundle(tmp_path / "strict", detector_rows=np.zeros((0, 6)), oks_nms=1e-6),
        device="cpu",
    )
    official = PosePipeline.from_path(
        make_fake_bundle(tmp_path / "official", detector_rows=np.zeros((0, 6))), device="cpu"
    )
    assert (strict.oks_nms, official.oks_nms, strict.info["oks_nms"]) == (1e-6, 0.9, 1e-6)
    nms = sp.oks_nms

    def watched(*a, **kw):
        seen.append(kw["thresh"])
        return nms(*a, **kw)

    sp.oks_nms = watched
    try:
        caller = PoseOptions(boxes=boxes, oks_nms=True)
        assert len(strict.estimate(img, caller).persons) == 1
        assert len(strict.estimate(img, replace(caller, oks_nms_threshold=1.0)).persons) == 2
        assert len(official.estimate(img, caller).persons) == 2
        assert seen == [1e-6, 1.0, 0.9]
    finally:
        sp.oks_nms = nms


def test_the_bundles_minimum_person_score_drops_detected_persons_only(tmp_path: Path) -> None:
    """Two detected persons (boxes scoring 0.45 and 0.31, each on its own dot): a bundle whose
    minimum person score lies between their person scores answers the better one only, unless
    the request gives its own `min_score`; persons in caller-given boxes are all answered (the
    dot model's keypoint scores are about 2, so the person scores are about 0.9 and 0.6)."""
    rows = np.array([[40, 60, 120, 260, 0.45, 0], [160, 60, 240, 260, 0.31, 0]], np.float32)
    # letterbox r = 0.5, 40 px pad on top; dots large enough to show in the 400-px-tall crops
    img = _dots((480, 640), [(160, 240), (400, 240)], r=15)
    everyone = PosePipeline.from_path(
        make_fake_bundle(tmp_path / "all", detector_rows=rows), device="cpu"
    )
    scores = sorted(p.score for p in everyone.estimate(img, PoseOptions()).persons)
    assert len(scores) == 2
    assert 0 < scores[0] < scores[1] < 1
    floor = (scores[0] + scores[1]) / 2
    strict = PosePipeline.from_path(
        make_fake_bundle(tmp_path / "strict", detector_rows=rows, min_person_score=floor),
        device="cpu",
    )
    assert (strict.info["min_person_score"], everyone.info["min_person_score"]) == (floor, 0.0)
    answered = strict.estimate(img, PoseOptions()).persons
    assert [p.score for p in answered] == pytest.approx([scores[1]])
    assert len(strict.estimate(img, PoseOptions(min_score=0.0)).persons) == 2
    assert strict.estimate(img, PoseOptions(min_score=1.0)).persons == []
    boxes = np.array([[80.0, 40, 240, 440], [320, 40, 480, 440]])  # the same boxes, given
    assert len(strict.estimate(img, PoseOptions(boxes=boxes)).persons) == 2


def test_a_calibrated_person_score_is_the_detected_persons_confidence(tmp_path: Path) -> None:
    """A bundle's person score model (here 1 - box score) gives the persons its detector finds a
    `confidence`, which the minimum person score reads instead of the official score; the
    official score still orders them. Caller-given boxes and the official protocol get none."""
    from models.postprocess import PersonScoreModel, rescore

    rows = np.array([[40, 60, 120, 260, 0.45, 0], [160, 60, 240, 260, 0.31, 0]], np.float32)
    img = _dots((480, 640), [(160, 240), (400, 240)], r=15)
    inverse = PersonScoreModel(weights=(-1.0,), bias=0.0, features=("box_logit",))
    pipe = PosePipeline.from_path(
        make_fake_bundle(tmp_path / "b", detector_rows=rows, person_score=inverse), device="cpu"
    )
    assert pipe.info["person_score"] == inverse.to_dict()
    persons = pipe.estimate(img, PoseOptions()).persons
    assert [p.bbox_score for p in persons] == pytest.approx([0.45, 0.31])  # official order
    assert [p.confidence for p in persons] == pytest.approx([0.55, 0.69])
    for p in persons:
        assert p.score == pytest.approx(rescore([p.bbox_score], p.keypoints[None, :, 2])[0])
    assert len(pipe.estimate(img, PoseOptions(min_score=0.6)).persons) == 1
    strict = PosePipeline.from_path(
        make_fake_bundle(
            tmp_path / "strict", detector_rows=rows, person_score=inverse, min_person_score=0.6
        ),
        device="cpu",
    )
    kept = strict.estimate(img, PoseOptions()).persons
    assert [p.bbox_score for p in kept] == pytest.approx([0.31])  # its official score the lower
    for opts in (
        PoseOptions(boxes=np.array([[80.0, 40, 240, 440], [320, 40, 480, 440]])),
        PoseOptions(official=True),
    ):
        got = pipe.estimate(img, opts).persons
        assert len(got) == 2
        assert all(p.confidence is None for p in got)


def test_a_collapsed_pair_is_split_as_the_bundle_says(tmp_path: Path) -> None:
    """The dot model gives every keypoint the same map: with two dots in one box, every left/right
    pair decodes on the brighter dot. The bundle's pair split (ankles by knees) puts the right
    ankle on the other dot (the knees, on the first dot too, tie: the first assignment stays);
    `pair_split=False` and bundles without one decode as before."""
    from models.bundle import load_bundle
    from models.pairs import PairSplit
    from training.cli_rebundle import rebundle

    plain = make_fake_bundle(tmp_path / "plain")
    choice = tmp_path / "choice.json"
    split = PairSplit(((15, 16, 13, 14),), min_second=0.3)
    choice.write_text(json.dumps({"pair_split": split.to_dict()}))
    rebundle(plain, tmp_path / "split", pair_split_file=choice)
    img = np.maximum(
        _dots((300, 300), [(110, 100)], r=9), _dots((300, 300), [(150, 230)], r=9) // 5 * 4
    )
    o = PoseOptions(boxes=np.array([[60.0, 40, 200, 280]]))
    split_pipe = PosePipeline(load_bundle(tmp_path / "split"), device="cpu")
    assert split_pipe.info["pair_split"] == split.to_dict()
    kp = split_pipe.estimate(img, o).persons[0].keypoints
    off = PosePipeline(load_bundle(tmp_path / "split"), device="cpu", pair_split=False)
    assert off.info["pair_split"] is None
    before = off.estimate(img, o).persons[0].keypoints
    tol = _tolerance(o.boxes[0])  # type: ignore[index]
    assert np.linalg.norm(before[15, :2] - (110, 100)) < tol  # both ankles on the first dot
    assert np.linalg.norm(before[16, :2] - (110, 100)) < tol
    np.testing.assert_allclose(kp[15], before[15])
    assert np.linalg.norm(kp[16, :2] - (150, 230)) < tol  # the right one on the other dot
    assert kp[16, 2] < before[16, 2]  # scored by its map there: the dimmer dot
    np.testing.assert_allclose(np.delete(kp, 16, 0), np.delete(before, 16, 0))
    unsplit = PosePipeline(load_bundle(plain), device="cpu").estimate(img, o).persons[0]
    np.testing.assert_allclose(unsplit.keypoints, before)
    # settings passed in are used instead of the bundle's (the tuning benchmark's way)
    wrists = PairSplit(((9, 10, 7, 8),), min_second=0.3)
    other = PosePipeline(load_bundle(plain), device="cpu", pair_split=wrists)
    kw = other.estimate(img, o).persons[0].keypoints
    assert np.linalg.norm(kw[10, :2] - (150, 230)) < tol
    np.testing.assert_allclose(kw[16], before[16])


def test_the_head_view_zooms_in_on_the_upper_body_and_replaces_the_face_only(
    pipe: PosePipeline,
) -> None:
    """Every keypoint of the dot model is on the blob: the upper body has no extent, so the head
    view is the smallest crop allowed (0.3 of the first crop's scale) centred on the blob, and
    only the nose, eyes and ears come from it (closer to the blob: a finer grid)."""
    ys, xs = np.mgrid[0:300, 0:400]
    blob = 255 * np.exp(-((xs - 101.3) ** 2 + (ys - 122.6) ** 2) / (2 * 6.0**2))
    img = np.repeat(blob[..., None], 3, axis=2).astype(np.uint8)
    boxes = np.array([[40.0, 40, 180, 240]])
    opts = PoseOptions(boxes=boxes, refine=False)
    plain = pipe.estimate(img, opts).persons[0]
    seen = pipe.estimate(img, replace(opts, head_view=True)).persons[0]
    bp = pipe.backbone_pass([(img, opts)])
    centers, scales = pipe.head_view_crops(bp, np.array([0]))
    np.testing.assert_allclose(scales, 0.3 * bp.persons.scales)
    assert np.linalg.norm(centers[0] - (101.3, 122.6)) < _tolerance(boxes[0])
    face = np.arange(5)  # COCO: nose, eyes, ears
    body = np.arange(5, 17)
    np.testing.assert_array_equal(seen.keypoints[body], plain.keypoints[body])
    err_plain = np.linalg.norm(plain.keypoints[face, :2] - (101.3, 122.6), axis=1)
    err_seen = np.linalg.norm(seen.keypoints[face, :2] - (101.3, 122.6), axis=1)
    assert err_seen.max() < 0.3 * _tolerance(boxes[0])  # measured: 1.25 px
    assert err_seen.max() < err_plain.min()  # measured: 4.22 px


def test_a_spec_without_face_keypoints_has_no_head_view(tmp_path: Path) -> None:
    from models.keypoints import CROWDPOSE14

    root = make_fake_bundle(tmp_path / "b", spec=CROWDPOSE14)
    crowd = PosePipeline.from_path(root, device="cpu")
    assert crowd.head_view_available is False
    assert crowd.info["head_view_available"] is False
    img = _dots((200, 200), [(100, 100)])
    opts = PoseOptions(boxes=np.array([[50.0, 50, 150, 150]]), refine=False)
    plain = crowd.estimate(img, opts)
    seen = crowd.estimate(img, replace(opts, head_view=True))  # asked for, ignored
    assert "head_view_ms" not in seen.timings_ms
    np.testing.assert_array_equal(seen.persons[0].keypoints, plain.persons[0].keypoints)


def test_the_head_view_runs_only_for_the_requests_that_ask(pipe: PosePipeline) -> None:
    ys, xs = np.mgrid[0:300, 0:400]
    blob = 255 * np.exp(-((xs - 101.3) ** 2 + (ys - 122.6) ** 2) / (2 * 6.0**2))
    img = np.repeat(blob[..., None], 3, axis=2).astype(np.uint8)
    opts = PoseOptions(boxes=np.array([[40.0, 40, 180, 240]]), refine=False)
    plain = pipe.estimate(img, opts).persons[0].keypoints
    asked, not_asked = pipe.estimate_many([(img, replace(opts, head_view=True)), (img, opts)])
    np.testing.assert_array_equal(not_asked.persons[0].keypoints, plain)
    assert not np.array_equal(asked.persons[0].keypoints[:5], plain[:5])
    np.testing.assert_array_equal(asked.persons[0].keypoints[5:], plain[5:])
