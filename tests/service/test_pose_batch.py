"""POST /pose/batch: several images in one request, one pipeline call, one result per image in
order; the limits count every image."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from PIL import Image

from tests.service.fakes import FakeEstimator
from tests.service.support import encode, png_of, post_image, rgb_pattern, serve


def _files(*images: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


def _sizes() -> list[bytes]:
    return [png_of(rgb_pattern(w, h)) for w, h in ((64, 48), (40, 70), (90, 30))]


def test_one_result_per_image_in_order_from_one_pipeline_call() -> None:
    fake = FakeEstimator(persons=2)
    with serve(fake) as client:
        r = client.post("/pose/batch", files=_files(*_sizes()), params={"refine": "false"})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [(x["width"], x["height"]) for x in results] == [(64, 48), (40, 70), (90, 30)]
        assert fake.batches == [3]
        assert all(opts.refine is False for _, opts in fake.seen)
        # each equals /pose on the same image
        for data, res in zip(_sizes(), results, strict=True):
            single = post_image(client, data, refine="false").json()
            assert single["persons"] == res["persons"]


def test_coco_format_counts_image_ids_up() -> None:
    with serve(FakeEstimator(persons=1)) as client:
        r = client.post(
            "/pose/batch", files=_files(*_sizes()[:2]), params={"format": "coco", "image_id": 7}
        )
        assert r.status_code == 200, r.text
        assert [x["image_id"] for x in r.json()] == [7, 8]


def test_limits_on_images() -> None:
    with serve(FakeEstimator(), max_images_per_request=2) as client:
        r = client.post("/pose/batch", files=_files(*_sizes()))
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "too_many_images"
        assert "SCIO_MAX_IMAGES_PER_REQUEST" in r.json()["error"]["message"]
        many = _files(*(_sizes() * 4))  # beyond what the parser takes at all
        r = client.post("/pose/batch", files=many)
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "too_many_images"
        # boxes belong to one image: not a batch parameter
        r = client.post("/pose/batch", files=_files(_sizes()[0]), params={"boxes": "[]"})
        assert r.status_code == 422
        # a raw body is one image: /pose
        r = client.post("/pose/batch", content=_sizes()[0], headers={"content-type": "image/png"})
        assert r.status_code == 415
        # several parts to /pose: pointed at /pose/batch
        r = client.post("/pose", files=_files(*_sizes()[:2]))
        assert r.status_code == 422
        assert "/pose/batch" in r.json()["error"]["message"]


def test_the_byte_cap_covers_all_images_together() -> None:
    data = _sizes()
    cap = sum(len(d) for d in data) - 10
    assert max(len(d) for d in data) < cap
    with serve(FakeEstimator(), max_upload_bytes=cap) as client:
        r = client.post("/pose/batch", files=_files(*data))
        assert r.status_code == 413
        assert client.post("/pose/batch", files=_files(*data[:2])).status_code == 200


def test_a_bad_image_is_named() -> None:
    good = _sizes()[0]
    bad = encode(Image.fromarray(np.zeros((4, 4, 3), np.uint8)), "PNG")[:30]
    with serve(FakeEstimator()) as client:
        r = client.post("/pose/batch", files=_files(good, bad))
        assert r.status_code in (400, 422), r.text
        assert r.json()["error"]["message"].startswith("image 1:")
        assert client.post("/pose/batch", files=_files(good)).status_code == 200


def test_every_image_takes_a_place_in_the_queue() -> None:
    fake = FakeEstimator(delay_s=10.0)
    with serve(fake, max_concurrency=1, max_queue=2) as client:
        answers: list[Any] = []

        def send(n: int) -> None:
            answers.append(client.post("/pose/batch", files=_files(*_sizes()[:n])))

        first = threading.Thread(target=send, args=(1,))
        first.start()
        _wait(lambda: fake.batches == [1])  # one call running
        second = threading.Thread(target=send, args=(1,))
        second.start()
        _wait(lambda: client.get("/metrics").text.count("scio_pose_queue_depth 1.0") == 1)
        # one image waits; the queue has 2 places: two more images do not fit
        r = client.post("/pose/batch", files=_files(*_sizes()[:2]))
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "overloaded"
        fake.release.set()
        first.join()
        second.join()
        assert [a.status_code for a in answers] == [200, 200]
        # alone, a request may hold more images than the queue has places
        assert client.post("/pose/batch", files=_files(*_sizes())).status_code == 200


def _wait(condition: Any, timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)
