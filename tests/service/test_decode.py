"""Safe decoding through the API: size caps, format allowlist, bombs, broken files, colour modes,
EXIF orientation and animations. The fake records the pixels it was given."""

from __future__ import annotations

import asyncio
import io
import resource
import struct
import time
from collections.abc import AsyncIterator, Iterator

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from service.errors import ApiError
from service.imageio import read_capped
from tests.service.fakes import FakeEstimator
from tests.service.support import (
    encode,
    png_bomb,
    png_chunk,
    png_header_only,
    png_of,
    post_image,
    rgb_pattern,
    serve,
)

RGB = rgb_pattern(40, 30)


def _seen_image(data: bytes, ctype: str = "image/png", **settings: object) -> npt.NDArray[np.uint8]:
    fake = FakeEstimator()
    with serve(fake, **settings) as client:  # type: ignore[arg-type]
        r = post_image(client, data, ctype)
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == fake.seen[0][0].shape[1::-1]
    return fake.seen[0][0]


# --- size caps -------------------------------------------------------------------------------


def test_body_over_the_cap_is_413() -> None:
    with serve(max_upload_bytes=1000) as client:
        r = post_image(client, b"\x89PNG\r\n\x1a\n" + b"\0" * 1000)
        multi = client.post("/pose", files={"image": ("a.png", b"\0" * 1001, "image/png")})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert multi.status_code == 413


def test_chunked_body_over_the_cap_is_413() -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        yield b"\x89PNG\r\n\x1a\n"
        for _ in range(20):
            yield b"\0" * 100

    with serve(max_upload_bytes=1000) as client:
        r = client.post("/pose", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413


def test_read_capped_stops_reading_at_the_cap() -> None:
    pulled = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1000):
            pulled += 1
            yield b"x" * 100

    with pytest.raises(ApiError) as e:
        asyncio.run(read_capped(stream(), 1000))
    assert e.value.status == 413
    assert pulled == 11  # the chunk that crossed the cap, not one more
    assert asyncio.run(read_capped(_one(b"abc"), 3)) == b"abc"


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def test_header_claiming_10_gigapixels_is_413_without_decoding() -> None:
    with serve() as client:
        r = post_image(client, png_header_only(100_000, 100_000))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_many_pixels"


def test_decompression_bomb_is_refused_fast_and_without_memory_growth() -> None:
    bomb = png_bomb(8000, 8000)  # 64 MP of zeros in ~64 kB; decoding would take 64+ MB
    assert len(bomb) < 200_000
    with serve() as client:  # default cap: 40 MP
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        r = post_image(client, bomb)
        elapsed = time.perf_counter() - start
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_many_pixels"
    assert "40000000" in r.json()["error"]["message"]  # this service's limit, not Pillow's
    assert elapsed < 1.0
    assert grown_mb < 32


def test_pixel_cap_is_a_setting() -> None:
    data = png_of(rgb_pattern(100, 100))
    with serve(max_pixels=9_999) as client:
        assert post_image(client, data).status_code == 413
    with serve(max_pixels=10_000) as client:
        assert post_image(client, data).status_code == 200


# --- format allowlist ------------------------------------------------------------------------

REFUSED = {
    "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
    "eps-dos": b"\xc5\xd0\xd3\xc6" + b"\0" * 28,
    "tiff-le": b"II*\x00\x08\x00\x00\x00" + b"\0" * 16,
    "tiff-be": b"MM\x00*\x00\x00\x00\x08" + b"\0" * 16,
    "psd": b"8BPS\x00\x01" + b"\0" * 20,
    "pdf": b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n",
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    "svg-xml": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
    "heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
    "avif": b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1",
    "gif": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    "bmp": b"BM" + struct.pack("<IHHI", 58, 0, 0, 54) + b"\0" * 48,
    "ico": b"\x00\x00\x01\x00\x01\x00\x10\x10" + b"\0" * 16,
    "jpeg2000": b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\0" * 16,
    "random": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    "text": b"hello, this is not an image",
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_disallowed_formats_are_415(kind: str) -> None:
    with serve() as client:
        r = post_image(client, REFUSED[kind], "image/jpeg")
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "unsupported_media_type"


def test_gif_is_accepted_only_when_allowed() -> None:
    gif = encode(Image.fromarray(RGB).convert("P"), "GIF")
    expected = np.asarray(Image.open(io.BytesIO(gif)).convert("RGB"))
    with serve() as client:
        assert post_image(client, gif, "image/gif").status_code == 415
    assert np.array_equal(_seen_image(gif, "image/gif", allowed_formats="jpeg,png,gif"), expected)


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/json", "application/x-www-form-urlencoded", ""]
)
def test_wrong_content_type_is_415(ctype: str) -> None:
    with serve() as client:
        r = client.post("/pose", content=png_of(RGB), headers={"content-type": ctype})
    assert r.status_code == 415


# --- broken input ----------------------------------------------------------------------------


def _truncated_jpeg() -> bytes:
    data = encode(Image.fromarray(rgb_pattern(200, 150)), "JPEG", quality=90)
    return data[: len(data) // 2]


def _zero_width_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


BROKEN = {
    "empty": (b"", 400),
    "png-signature-only": (b"\x89PNG\r\n\x1a\n", 422),
    "png-truncated": (png_of(rgb_pattern(200, 150))[:300], 422),
    "png-header-without-pixels": (png_header_only(20, 20), 422),
    "png-zero-width": (_zero_width_png(), 422),
    "png-zero-by-zero": (png_header_only(0, 0), 422),
    "jpeg-truncated": (_truncated_jpeg(), 422),
    "jpeg-magic-only": (b"\xff\xd8\xff\xe0" + b"\0" * 20, 422),
    "webp-riff-only": (b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\0" * 8, 422),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_images_are_4xx_json_never_500(kind: str) -> None:
    data, status = BROKEN[kind]
    with serve() as client:
        r = post_image(client, data)
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"code", "message"}
    assert " at 0x" not in r.json()["error"]["message"]  # no object reprs for clients


# --- colour modes, orientation, frames -------------------------------------------------------


def _grey() -> npt.NDArray[np.uint8]:
    return np.asarray(Image.fromarray(RGB).convert("L"))


def _alpha() -> npt.NDArray[np.uint8]:
    return ((np.arange(40)[None, :] * 6) % 256 * np.ones((30, 1))).astype(np.uint8)


def _over_white(rgb: npt.NDArray[np.uint8], a: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    a3 = a[:, :, None].astype(np.float64) / 255.0
    return np.rint(rgb * a3 + 255.0 * (1.0 - a3)).astype(np.uint8)


def _case(mode: str) -> tuple[bytes, npt.NDArray[np.uint8]]:
    """(PNG bytes in `mode`, the RGB image it stands for)."""
    grey, alpha = _grey(), _alpha()
    grey3 = np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "RGB":
        return png_of(RGB), RGB
    if mode == "L":
        return png_of(grey), grey3
    if mode == "1":
        bits = grey > 128
        return encode(Image.fromarray(bits), "PNG"), np.repeat(bits[:, :, None] * 255, 3, 2)
    if mode == "I;16":
        im16 = Image.fromarray(grey.astype(np.uint16) * 257)
        return encode(im16, "PNG"), grey3
    if mode == "RGBA-opaque":
        return png_of(np.dstack([RGB, np.full((30, 40), 255, np.uint8)])), RGB
    if mode == "RGBA":
        return png_of(np.dstack([RGB, alpha])), _over_white(RGB, alpha)
    if mode == "LA":
        la = Image.fromarray(np.dstack([grey, alpha]), mode="LA")
        return encode(la, "PNG"), _over_white(grey3, alpha)
    if mode == "P":
        p = Image.fromarray(RGB).quantize(64)
        return encode(p, "PNG"), np.asarray(p.convert("RGB"))
    if mode == "P-transparent":
        p = Image.fromarray(RGB).quantize(64)
        p.info["transparency"] = 0
        rgb = np.asarray(p.convert("RGB"))
        a = np.where(np.asarray(p) == 0, 0, 255).astype(np.uint8)
        return encode(p, "PNG", transparency=0), _over_white(rgb, a)
    raise AssertionError(mode)


MODES = ["RGB", "L", "1", "I;16", "RGBA-opaque", "RGBA", "LA", "P", "P-transparent"]


@pytest.mark.parametrize("mode", MODES)
def test_colour_modes_give_their_rgb_equivalent(mode: str) -> None:
    data, expected = _case(mode)
    seen = _seen_image(data)
    assert seen.dtype == np.uint8
    assert seen.shape == (30, 40, 3)
    assert np.abs(seen.astype(int) - expected.astype(int)).max() <= 1


def test_cmyk_jpeg_matches_its_rgb_jpeg() -> None:
    small = Image.fromarray(RGB).resize((8, 6))
    smooth = np.asarray(small.resize((40, 30), Image.Resampling.BILINEAR))
    rgb_jpeg = encode(Image.fromarray(smooth), "JPEG", quality=98)
    cmyk_jpeg = encode(Image.fromarray(smooth).convert("CMYK"), "JPEG", quality=98)
    from_rgb, from_cmyk = _seen_image(rgb_jpeg, "image/jpeg"), _seen_image(cmyk_jpeg, "image/jpeg")
    assert np.abs(from_rgb.astype(int) - from_cmyk.astype(int)).mean() < 3


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90° clockwise to display
    data = encode(Image.fromarray(RGB), "PNG", exif=exif)
    seen = _seen_image(data)
    assert seen.shape == (40, 30, 3)
    assert np.array_equal(seen, np.rot90(RGB, k=-1))
    jpeg = encode(Image.fromarray(RGB), "JPEG", exif=exif)
    assert _seen_image(jpeg, "image/jpeg").shape == (40, 30, 3)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animation_uses_the_first_frame(fmt: str) -> None:
    red, blue = (Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 0, 255)))
    data = encode(red, fmt, save_all=True, append_images=[blue], lossless=True, duration=100)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    seen = _seen_image(data, "image/webp" if fmt == "WEBP" else "image/png")
    assert (np.abs(seen.astype(int) - (255, 0, 0)).max()) <= 2


def test_gif_animation_uses_the_first_frame() -> None:
    red, blue = (Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 0, 255)))
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=100)
    seen = _seen_image(data, "image/gif", allowed_formats="gif")
    assert (seen == (255, 0, 0)).all()
