"""Safe image decoding: untrusted bytes in, RGB uint8 (H, W, 3) out, or an `ApiError`.

The order of checks is the defence:
1. the body is capped while it is read (`read_capped`), before anything parses it;
2. the format is taken from the magic bytes and must be in the allowlist; Pillow is then told
   to use only that plugin, so EPS (Ghostscript), TIFF, PSD, PDF, SVG, ... never reach a parser;
3. `Image.open` reads only the header: width x height is checked against `max_pixels` before a
   single pixel is decoded (Pillow's own `DecompressionBombError` is caught as the same error);
4. decoding errors of any kind (truncated, corrupt, zero-size) become 422, never 500.

Colour: EXIF orientation is applied, the first frame of an animation is used, and every mode is
converted to the RGB it stands for. Transparent pixels are composited onto **white**, the
background on which such images (cut-outs, stickers) are shown and the deterministic choice for
the detector; 16-bit grey is scaled to 8 bits (v / 257, rounded) rather than clipped.
"""

from __future__ import annotations

import io
import logging
import re
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from service.errors import ApiError

log = logging.getLogger(__name__)

RGB = npt.NDArray[np.uint8]

_ORIENTATION = 0x0112  # EXIF tag (Pillow caches the parsed EXIF; exif_transpose reuses it)

# Pillow plugin name for each allowed format.
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF"}

# Formats we recognise only to name them in the 415 message; none of them is ever decoded.
_REFUSED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"%!PS", "postscript/eps"),
    (b"\xc5\xd0\xd3\xc6", "eps"),
    (b"8BPS", "psd"),
    (b"%PDF", "pdf"),
    (b"BM", "bmp"),
    (b"\x00\x00\x01\x00", "ico"),
    (b"\x00\x00\x00\x0cjP  ", "jpeg2000"),
    (b"\xff\x4f\xff\x51", "jpeg2000"),
    (b"<?xml", "xml/svg"),
    (b"<svg", "svg"),
)

# How much of a read error's text is worth showing to a client.
_MAX_DETAIL = 120


def sniff_format(data: bytes) -> str | None:
    """The decodable format named by the magic bytes ("jpeg", "png", "webp", "gif") or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def describe_refused(data: bytes) -> str:
    """A name for bytes we will not decode, for the error message."""
    head = data[:64].lstrip()
    for magic, name in _REFUSED_MAGIC:
        if head.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return f"iso-bmff ({data[8:12].decode('ascii', 'replace').strip()})"  # HEIC, AVIF, MP4
    return "unknown"


async def read_capped(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """Join a body's chunks, stopping with 413 as soon as more than `limit` bytes arrived."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            raise ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")
    return bytes(buf)


def check_format(data: bytes, allowed: frozenset[str]) -> str:
    if not data:
        raise ApiError(400, "empty_body", "the request carries no image bytes")
    fmt = sniff_format(data)
    if fmt is None or fmt not in allowed:
        kind = fmt or describe_refused(data)
        raise ApiError(
            415,
            "unsupported_media_type",
            f"not an accepted image (detected: {kind}); accepted: {', '.join(sorted(allowed))}",
        )
    return fmt


def open_checked(data: bytes, fmt: str, max_pixels: int) -> Image.Image:
    """Open (header only) with the one plugin for `fmt`; 413 if the header claims too many
    pixels, 422 if it is unreadable or zero-sized."""
    try:
        im = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]])
    except Image.DecompressionBombError:
        raise _too_many(max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise _corrupt(fmt, e) from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ApiError(422, "invalid_image", f"the {fmt} header gives a size of {w}x{h}")
    if w * h > max_pixels:
        raise ApiError(
            413, "too_many_pixels", f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}"
        )
    return im


@dataclass(frozen=True)
class Decoded:
    rgb: RGB  # what was decoded, EXIF-oriented
    scale: int  # 1, or the JPEG decoder's 2, 4 or 8: original pixel = (decoded + 0.5) * s - 0.5
    original_hw: tuple[int, int]  # the image's own size, EXIF-oriented


def decode_image(
    data: bytes, *, allowed: frozenset[str], max_pixels: int, max_side: int = 0
) -> Decoded:
    """Untrusted bytes -> RGB uint8 (H, W, 3), EXIF-oriented, first frame. With `max_side` > 0
    a large JPEG is decoded at 1/2, 1/4 or 1/8 of its size by the decoder itself (DCT scaling),
    keeping its long side >= `max_side`."""
    fmt = check_format(data, allowed)
    im = open_checked(data, fmt, max_pixels)
    return decode_opened(im, fmt, max_pixels, max_side)


def probe_image(data: bytes, *, allowed: frozenset[str], max_pixels: int) -> int:
    """The checks `decode_image` makes before decoding (format, header, pixel limit), and the
    decode's memory cost in bytes (`decode_cost_bytes`); raises the same errors."""
    fmt = check_format(data, allowed)
    im = open_checked(data, fmt, max_pixels)
    try:
        return decode_cost_bytes(im, fmt)
    finally:
        im.close()


def decode_opened(im: Image.Image, fmt: str, max_pixels: int, max_side: int = 0) -> Decoded:
    """`decode_image` after `open_checked`; closes `im`."""
    try:
        im.seek(0)
        w, h = im.size
        scale = 1
        if max_side > 0 and fmt == "jpeg":
            s = next((s for s in (8, 4, 2) if max(w, h) // s >= max_side), 1)
            drafted = im.draft(None, (w // s, h // s)) if s > 1 else None
            if drafted is not None:
                scale = round(w / drafted[1][2])
        im.load()
        if im.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):  # a quarter turn swaps the sides
            w, h = h, w
        ImageOps.exif_transpose(im, in_place=True)  # no copy when there is nothing to turn
        return Decoded(to_rgb(im), scale, (h, w))
    except Image.DecompressionBombError:
        raise _too_many(max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise _corrupt(fmt, e) from None
    finally:
        im.close()


# Rows converted at a time: the conversion's temporaries stay a few MB, so decoding an image
# costs what Pillow holds plus the RGB array, whatever its mode (`decode_cost_bytes`).
_BLOCK_PIXELS = 1 << 20


def to_rgb(im: Image.Image) -> RGB:
    """Any Pillow mode -> the RGB uint8 (H, W, 3) it stands for (alpha over white), converted a
    block of rows at a time."""
    w, h = im.size
    out = np.empty((h, w, 3), dtype=np.uint8)
    rows = max(1, _BLOCK_PIXELS // max(w, 1))
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        out[y0:y1] = _block_to_rgb(im.crop((0, y0, w, y1)) if (y0, y1) != (0, h) else im)
    return out


def _block_to_rgb(im: Image.Image) -> RGB:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _grey16_to_rgb(im)
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        return _over_white(im)
    if mode != "RGB":
        im = im.convert("RGB")  # L, 1, CMYK (Adobe inversion handled by the JPEG plugin), YCbCr
    return np.asarray(im, dtype=np.uint8)


def _grey16_to_rgb(im: Image.Image) -> RGB:
    # Pillow's own I;16 -> L conversion clips at 255 instead of scaling: v / 257, rounded
    v = np.asarray(im).astype(np.int64)
    grey = np.clip((v + 128) // 257, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _over_white(im: Image.Image) -> RGB:
    rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)  # premultiplied modes unpremultiply
    rgb, alpha = rgba[:, :, :3], rgba[:, :, 3:]
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


# Bytes per pixel Pillow holds for a decoded image of each mode (RGB is stored as 4 bytes).
_PIL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def decode_cost_bytes(im: Image.Image, fmt: str) -> int:
    """Peak memory that decoding this opened (header-only) image takes, from its header: what
    Pillow holds (its mode's bytes per pixel; alpha and 16-bit included), a second copy while a
    JPEG's EXIF orientation is applied, the RGB array, and the row blocks' temporaries."""
    w, h = im.size
    pil = _PIL_BYTES.get(im.mode, 4)
    per_pixel = pil + 3 + (pil if fmt == "jpeg" else 0)
    # the row blocks: `_BLOCK_PIXELS` (at least one row), never more than the image
    block = min(w * h, max(_BLOCK_PIXELS, w))
    return w * h * per_pixel + 64 * block


def _too_many(max_pixels: int) -> ApiError:
    # Pillow's own message quotes its internal limit, not this service's setting
    return ApiError(
        413, "too_many_pixels", f"image too large: more than the limit of {max_pixels} pixels"
    )


_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _corrupt(fmt: str, e: BaseException) -> ApiError:
    log.debug("undecodable %s upload: %r", fmt, e)
    # Pillow names the in-memory file by its repr (<_io.BytesIO object at 0x...>): not for clients
    detail = _OBJECT_REPR.sub("the upload", str(e))[:_MAX_DETAIL] or type(e).__name__
    return ApiError(422, "invalid_image", f"cannot decode the {fmt} image: {detail}")
