"""POST /pose and /pose/render with the fake estimator: schema, parameters, output contract."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from models.keypoints import COCO17
from tests.service.fakes import FakeEstimator
from tests.service.support import png_of, post_image, rgb_pattern, serve

PNG = png_of(rgb_pattern(64, 48))


def test_pose_json_schema_and_values() -> None:
    with serve(FakeEstimator(persons=2)) as client:
        r = post_image(client, PNG)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (64, 48)
    assert body["keypoint_names"] == list(COCO17.keypoint_names)
    assert body["skeleton"] == [list(e) for e in COCO17.skeleton]
    assert body["refined"] is True
    assert body["bundle"] == {"name": "fake-bundle", "version": "0.0.1"}
    assert {"detect_ms", "backbone_ms", "scio_ms", "decode_ms", "queue_ms", "total_ms"} <= set(
        body["timings_ms"]
    )
    assert len(body["persons"]) == 2
    person = body["persons"][0]
    assert set(person) == {"bbox", "bbox_score", "score", "confidence", "keypoints", "refinements"}
    assert person["confidence"] == pytest.approx(0.65)
    assert body["persons"][1]["confidence"] is None  # a person without calibration
    assert len(person["keypoints"]) == 17
    assert all(len(k) == 3 for k in person["keypoints"])
    # spec order and the fake's values: keypoints run down the box diagonal, scores 0.9 .. 0.4
    assert person["keypoints"][0] == pytest.approx([0.0, 4.8, 0.9])
    assert person["keypoints"][16][2] == pytest.approx(0.4)
    ref = person["refinements"][0]
    assert ref == {
        "keypoint": 9,
        "name": "left_wrist",
        "group": "left_arm",
        "displacement_px": 1.5,
        "loss_before": 0.4,
        "loss_after": 0.2,
        "accepted": True,
        "confidence": 0.75,
    }
    assert person["refinements"][1]["confidence"] is None  # a bundle without calibration
    # Γ not run for that keypoint: its losses are null, not NaN (which JSON cannot carry)
    assert person["refinements"][1]["loss_before"] is None
    assert person["refinements"][1]["loss_after"] is None


def test_form_fields_are_refused_naming_them_not_ignored() -> None:
    fake = FakeEstimator()
    with serve(fake) as client:
        r = client.post(
            "/pose",
            files={"image": ("x.png", PNG, "image/png")},
            data={"refine": "false", "boxes": "[[0,0,10,10]]"},
        )
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "unexpected_form_field"
    assert "'boxes'" in err["message"]
    assert "'refine'" in err["message"]
    assert fake.seen == []  # nothing ran with the options dropped


def test_image_jpg_is_taken_as_jpeg() -> None:
    from tests.service.support import encode

    jpeg = encode(Image.fromarray(rgb_pattern(64, 48)), "JPEG")
    with serve(FakeEstimator()) as client:
        r = post_image(client, jpeg, ctype="image/jpg")
    assert r.status_code == 200, r.text


def test_multipart_upload_gives_the_same_answer_as_raw_body() -> None:
    fake = FakeEstimator()
    with serve(fake) as client:
        raw = post_image(client, PNG).json()
        multi = client.post("/pose", files={"image": ("x.png", PNG, "image/png")}).json()
    assert raw["persons"] == multi["persons"]
    assert np.array_equal(fake.seen[0][0], fake.seen[1][0])


def test_options_reach_the_estimator() -> None:
    fake = FakeEstimator(persons=3)
    with serve(fake) as client:
        r = post_image(
            client, PNG, refine="false", flip="true", min_score=0.75, max_persons=1, oks_nms=0.5
        )
        assert post_image(client, PNG).status_code == 200
        assert post_image(client, PNG, oks_nms=0).status_code == 422
        assert post_image(client, PNG, oks_nms=1.5).status_code == 422
        low = post_image(client, PNG, detector_threshold=0.05)
        for bad in (-0.1, 1.5):
            assert post_image(client, PNG, detector_threshold=bad).status_code == 422
    assert r.status_code == 200
    options = fake.seen[0][1]
    assert (
        options.refine,
        options.flip,
        options.min_score,
        options.max_persons,
        options.oks_nms_threshold,
    ) == (False, True, 0.75, 1, 0.5)
    assert fake.seen[1][1].oks_nms_threshold is None  # the bundle's
    assert low.status_code == 200
    assert (fake.seen[1][1].detector_threshold, fake.seen[2][1].detector_threshold) == (None, 0.05)
    body = r.json()
    assert body["refined"] is False
    assert len(body["persons"]) == 1
    assert body["persons"][0]["refinements"] == []


def test_boxes_skip_the_detector_and_are_clipped_to_the_image() -> None:
    fake = FakeEstimator()
    with serve(fake) as client:
        r = post_image(client, PNG, boxes=json.dumps([[1, 2, 30, 40], [-10, -5, 100, 20]]))
    assert r.status_code == 200, r.text
    given = fake.seen[0][1].boxes
    assert given is not None
    np.testing.assert_allclose(given, [[1, 2, 30, 40], [0, 0, 63, 20]])
    assert [p["bbox"] for p in r.json()["persons"]] == [[1, 2, 30, 40], [0, 0, 63, 20]]


@pytest.mark.parametrize(
    "boxes",
    [
        "not json",
        "[1, 2, 3, 4]",
        "[[1, 2, 3]]",
        "[[1, 2, 3, 'a']]",
        "[[5, 5, 1, 1]]",
        "[[1, 2, 3, NaN]]",
        "[[1e400, 0, 2, 2]]",
        "[[true, 0, 2, 2]]",
        json.dumps([[0, 0, 1, 1]] * 101),
    ],
)
def test_bad_boxes_are_422(boxes: str) -> None:
    with serve() as client:
        r = post_image(client, PNG, boxes=boxes)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "validation_error"


def test_boxes_outside_the_image_are_422() -> None:
    with serve() as client:
        r = post_image(client, PNG, boxes="[[100, 100, 200, 200]]")
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "boxes_outside_image"


def test_empty_boxes_and_no_persons_give_an_empty_list() -> None:
    with serve(FakeEstimator(persons=0)) as client:
        none_found = post_image(client, PNG)
        coco = post_image(client, PNG, format="coco")
        no_boxes = post_image(client, PNG, boxes="[]")
    assert none_found.status_code == 200
    assert none_found.json()["persons"] == []
    assert coco.status_code == 200
    assert coco.json() == []
    assert no_boxes.status_code == 200
    assert no_boxes.json()["persons"] == []


def test_coco_format() -> None:
    with serve(FakeEstimator(persons=2)) as client:
        full = post_image(client, PNG).json()
        r = post_image(client, PNG, format="coco", image_id=397133)
    assert r.status_code == 200
    results = r.json()
    assert len(results) == 2
    first = results[0]
    assert set(first) == {"image_id", "category_id", "keypoints", "score", "bbox"}
    assert first["image_id"] == 397133
    assert first["category_id"] == 1
    person = full["persons"][0]
    assert first["keypoints"] == [v for kp in person["keypoints"] for v in kp]
    x1, y1, x2, y2 = person["bbox"]
    assert first["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
    assert first["score"] == person["score"]


def test_keypoints_are_clipped_inside_the_image_and_finite() -> None:
    with serve(FakeEstimator(poison="outside")) as client:
        r = post_image(client, PNG)
    assert r.status_code == 200
    kps = np.array(r.json()["persons"][0]["keypoints"])
    assert np.isfinite(kps).all()
    assert (kps[:, 0] >= 0).all()
    assert (kps[:, 0] <= 63).all()
    assert (kps[:, 1] >= 0).all()
    assert (kps[:, 1] <= 47).all()
    assert kps[0, :2].tolist() == [0.0, 0.0]
    assert kps[-1, :2].tolist() == [63.0, 47.0]
    assert kps[0, 2] == pytest.approx(0.9)  # clipped, not zeroed


def test_non_finite_pipeline_output_is_a_json_500(caplog: pytest.LogCaptureFixture) -> None:
    with serve(FakeEstimator(poison="nan")) as client:
        r = post_image(client, PNG)
    assert r.status_code == 500
    assert r.json() == {
        "error": {
            "code": "bad_pipeline_output",
            "message": "the pipeline produced an invalid result",
        }
    }
    assert "non-finite" in caplog.text


def test_pipeline_exception_is_a_json_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with serve(FakeEstimator(fail=True)) as client:
        r = post_image(client, PNG)
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "pipeline_error"
    assert "Traceback" not in r.text
    assert "fake pipeline failure" not in r.text
    assert "fake pipeline failure" in caplog.text


def test_render_returns_a_png_of_the_image_with_drawings() -> None:
    image = np.zeros((48, 64, 3), np.uint8)
    with serve(FakeEstimator()) as client:
        r = client.post(
            "/pose/render", content=png_of(image), headers={"content-type": "image/png"}
        )
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    out = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    assert out.shape == (48, 64, 3)
    assert out.any()  # something was drawn on the black image
    assert (out == (255, 0, 255)).all(axis=2).any()  # a moved keypoint's magenta ring


def test_a_rendered_person_is_labelled_with_its_score_and_confidence() -> None:
    from service.render import person_label
    from service.results import PersonPose

    kps = np.zeros((17, 3))
    box = np.array([0.0, 0, 10, 20])
    assert person_label(PersonPose(box, 0.9, 0.642, kps)) == "0.64"
    assert person_label(PersonPose(box, 0.9, 0.642, kps, [], 0.917)) == "0.64 p=0.92"


def test_unknown_query_parameters_are_refused() -> None:
    with serve() as client:
        r = post_image(client, PNG, url="http://169.254.169.254/latest/meta-data/")
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize(
    "body",
    [
        b"http://169.254.169.254/latest/meta-data/",
        b"https://example.com/person.jpg",
        b"file:///etc/passwd",
        b"/etc/passwd",
        b"../../bundles/demo/bundle.json",
    ],
)
def test_a_url_or_path_body_is_just_not_an_image(body: bytes) -> None:
    with serve() as client:
        raw = post_image(client, body, "image/jpeg")
        as_field = client.post(  # a multipart form whose `image` is text, not a file
            "/pose", data={"image": body.decode()}, files={"note": ("n.txt", b"", "text/plain")}
        )
    assert raw.status_code == 415
    assert raw.json()["error"]["code"] == "unsupported_media_type"
    assert as_field.status_code == 422
    assert as_field.json()["error"]["code"] == "missing_image"


def test_the_head_view_is_off_unless_a_request_asks() -> None:
    fake = FakeEstimator()
    with serve(fake) as client:
        assert post_image(client, PNG).status_code == 200
        assert post_image(client, PNG, head_view="true").status_code == 200
        assert post_image(client, PNG, head_view="sometimes").status_code == 422
    assert [seen[1].head_view for seen in fake.seen] == [False, True]


def test_an_omitted_flip_leaves_it_to_the_bundle() -> None:
    fake = FakeEstimator(persons=1)
    with serve(fake) as client:
        assert post_image(client, PNG).status_code == 200
        assert post_image(client, PNG, flip="false").status_code == 200
    assert [seen[1].flip for seen in fake.seen] == [None, False]
