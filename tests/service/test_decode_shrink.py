"""SCIO_DECODE_MAX_SIDE: large JPEGs decoded shrunk by the JPEG decoder, answers in the original
image's pixels; everything else decoded as before."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.imageio import decode_image
from service.results import PersonPose, PoseResult, RefinedKeypoint, to_original_pixels
from tests.service.fakes import FakeEstimator
from tests.service.support import post_image, serve

JPEG = frozenset({"jpeg", "png"})


def _smooth(w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)


def _jpeg(rgb: np.ndarray, exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif or Image.Exif())
    return buf.getvalue()


def test_a_large_jpeg_is_decoded_shrunk_and_says_by_how_much() -> None:
    rgb = _smooth(1600, 1200)
    d = decode_image(_jpeg(rgb), allowed=JPEG, max_pixels=10**8, max_side=400)
    assert d.scale == 4  # the largest of 8, 4, 2 that keeps the long side >= 400
    assert d.rgb.shape == (300, 400, 3)
    assert d.original_hw == (1200, 1600)
    blocks = rgb.reshape(300, 4, 400, 4, 3).mean(axis=(1, 3))
    assert np.abs(d.rgb.astype(float) - blocks).mean() < 3  # 4x4 block averages


@pytest.mark.parametrize(("size", "max_side"), [((1600, 1200), 0), ((700, 500), 400)])
def test_small_or_unshrunk_jpegs_decode_at_full_size(size: tuple[int, int], max_side: int) -> None:
    data = _jpeg(_smooth(*size))
    d = decode_image(data, allowed=JPEG, max_pixels=10**8, max_side=max_side)
    assert (d.scale, d.rgb.shape[:2], d.original_hw) == (1, size[::-1], size[::-1])
    np.testing.assert_array_equal(d.rgb, decode_image(data, allowed=JPEG, max_pixels=10**8).rgb)


def test_png_is_never_shrunk() -> None:
    buf = io.BytesIO()
    Image.fromarray(_smooth(1600, 1200)).save(buf, "PNG")
    d = decode_image(buf.getvalue(), allowed=JPEG, max_pixels=10**8, max_side=400)
    assert (d.scale, d.rgb.shape[:2]) == (1, (1200, 1600))


def test_a_quarter_turn_swaps_the_original_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _jpeg(_smooth(1600, 1200), exif)
    d = decode_image(data, allowed=JPEG, max_pixels=10**8, max_side=400)
    assert d.scale == 4
    assert d.rgb.shape[:2] == (400, 300)
    assert d.original_hw == (1600, 1200)


def test_results_map_back_to_original_pixels() -> None:
    ref = RefinedKeypoint(9, "left_arm", 1.5, 0.4, 0.3, True)
    kps = np.array([[0.0, 0.0, 0.9], [99.5, 49.5, 0.5]])
    r = PoseResult((75, 100), [PersonPose(np.array([0.0, 0, 99, 74]), 0.9, 0.8, kps, [ref])], True)
    out = to_original_pixels(r, 4, (300, 400))
    assert out.image_hw == (300, 400)
    p = out.persons[0]
    np.testing.assert_allclose(p.keypoints, [[1.5, 1.5, 0.9], [399.5, 199.5, 0.5]])
    np.testing.assert_allclose(p.bbox, [1.5, 1.5, 397.5, 297.5])
    assert p.refinements[0].displacement_px == 6.0
    assert to_original_pixels(r, 1, (75, 100)) is r


def test_the_api_answers_in_original_pixels() -> None:
    data = _jpeg(_smooth(1600, 1200))
    box = [100.0, 150.0, 1300.0, 1100.0]
    fake = FakeEstimator()
    with serve(fake, decode_max_side=400) as client:
        r = post_image(client, data, "image/jpeg", boxes=str([box]))
        png = client.post("/pose/render", content=data, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (1600, 1200)
    seen, options = fake.seen[0]
    assert seen.shape == (300, 400, 3)  # the pipeline got the shrunk image
    assert options.boxes is not None
    np.testing.assert_allclose(options.boxes[0], (np.array(box) + 0.5) / 4 - 0.5)
    np.testing.assert_allclose(body["persons"][0]["bbox"], box)  # and back
    assert fake.seen[1][0].shape == (1200, 1600, 3)  # render draws on the full image
    assert Image.open(io.BytesIO(png.content)).size == (1600, 1200)
