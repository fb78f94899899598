"""The real ONNX Runtime pipeline behind the HTTP layer, through the default factory, on a
hand-built bundle (tests/service/onnx_fakes.py): plugging the pipeline in is one function."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.support import png_of, post_image, wait_ready

pytest.importorskip("onnx")
from tests.service.onnx_fakes import make_fake_bundle


def test_a_dot_comes_back_through_the_api(tmp_path: Path) -> None:
    bundle = make_fake_bundle(tmp_path / "bundle")  # pose model only: boxes are needed
    image = np.zeros((300, 400, 3), np.uint8)
    ys, xs = np.mgrid[0:300, 0:400]
    image[(xs - 100) ** 2 + (ys - 120) ** 2 <= 49] = 255
    app = create_app(Settings(bundle=bundle, device="cpu"))  # the default factory
    with TestClient(app) as client:
        wait_ready(client, timeout_s=30)
        info = client.get("/info").json()
        r = post_image(client, png_of(image), boxes=json.dumps([[60, 60, 140, 180]]))
    assert info["bundle"]["name"] == "fake-dot"
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (400, 300)
    kps = np.array(body["persons"][0]["keypoints"])
    assert kps.shape == (17, 3)
    # one heatmap pixel plus pooling offset: about 12 image px for this box
    assert np.linalg.norm(kps[:, :2] - (100, 120), axis=1).max() < 12
    assert {"backbone_ms", "decode_ms", "queue_ms", "total_ms"} <= set(body["timings_ms"])
