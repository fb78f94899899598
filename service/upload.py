"""The image bytes of a /pose request: multipart field `image`, or the raw body.

The content type is checked before the body is read, and the body is counted while it streams
in (chunked uploads included), so an oversized upload is refused at the cap, not after it has
been buffered. Only bytes are accepted: there is no URL or path parameter, and a body that
holds a URL or a path is just a body that is not an image.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.errors import ApiError
from service.imageio import read_capped

# Raw-body content types; the magic bytes decide the format, these only say "this is an image"
# (image/jpg is not registered, but clients send it).
RAW_TYPES = frozenset(
    {"image/jpeg", "image/jpg", "image/png", "image/webp", "image/gif", "application/octet-stream"}
)
MULTIPART = "multipart/form-data"
FIELD = "image"
# Boundaries and part headers around the image in a multipart body.
MULTIPART_SLACK = 64 * 1024


class _InMemoryParser(MultiPartParser):
    spool_max_size = 2**31  # the whole body is already in memory and capped; keep the part there


async def read_image_bytes(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if mime == MULTIPART:
        body = await _read_body(request, max_bytes + MULTIPART_SLACK, timeout_s)
        data = await _image_part(request, body)
    elif mime in RAW_TYPES:
        data = await _read_body(request, max_bytes, timeout_s)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the image as multipart/form-data field '{FIELD}' or as the raw body with "
            f"Content-Type image/jpeg, image/png or image/webp (got {mime or 'none'!r})",
        )
    if len(data) > max_bytes:
        raise ApiError(413, "payload_too_large", f"the image is larger than {max_bytes} bytes")
    return data


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, capped at `limit` bytes (413) and `timeout_s` seconds (408)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")
    try:
        async with asyncio.timeout(timeout_s):
            return await read_capped(request.stream(), limit)
    except TimeoutError:
        raise ApiError(
            408,
            "body_timeout",
            f"the request body did not arrive within {timeout_s:g} s (SCIO_BODY_TIMEOUT_S)",
            headers={"Connection": "close"},
        ) from None


async def read_image_parts(
    request: Request, max_bytes: int, max_images: int, timeout_s: float
) -> list[bytes]:
    """The `image` parts of a multipart body, in order (/pose/batch): at least one, at most
    `max_images`, all within `max_bytes` together."""
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if mime != MULTIPART:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the images as multipart/form-data, one field '{FIELD}' per image "
            f"(got {mime or 'none'!r})",
        )
    body = await _read_body(request, max_bytes + MULTIPART_SLACK, timeout_s)
    parts = await _image_parts(request, body, max_images)
    if sum(len(p) for p in parts) > max_bytes:
        raise ApiError(
            413, "payload_too_large", f"the images are larger than {max_bytes} bytes together"
        )
    return parts


async def _image_part(request: Request, body: bytes) -> bytes:
    parts = await _image_parts(request, body, 1)
    return parts[0]


async def _image_parts(request: Request, body: bytes, max_images: int) -> list[bytes]:
    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    # one file more than allowed parses, so that too many images get their own answer
    parser = _InMemoryParser(request.headers, replay(), max_files=max_images + 1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if e.message.startswith("Too many files"):
            raise _too_many(max_images) from None
        raise ApiError(
            400, "bad_multipart", f"cannot parse the multipart body: {e.message}"
        ) from None
    try:
        files = form.getlist(FIELD)
        if not files or not all(isinstance(part, UploadFile) for part in files):
            raise ApiError(422, "missing_image", f"multipart field '{FIELD}' must be a file upload")
        if len(files) > max_images:
            raise _too_many(max_images)
        others = sorted({k for k in form if k != FIELD})
        if others:
            # refine, boxes, flip... are query parameters; a form field would be ignored silently
            raise ApiError(
                422,
                "unexpected_form_field",
                f"unexpected multipart field(s) {', '.join(repr(k) for k in others)}: send only "
                f"the file field '{FIELD}'; options such as refine or boxes go in the query "
                "string (/pose?refine=false)",
            )
        return [await part.read() for part in files if isinstance(part, UploadFile)]
    finally:
        await form.close()


def _too_many(max_images: int) -> ApiError:
    if max_images == 1:
        message = f"one '{FIELD}' part per request here; send several images to /pose/batch"
    else:
        message = f"at most {max_images} '{FIELD}' parts per request (SCIO_MAX_IMAGES_PER_REQUEST)"
    return ApiError(422, "too_many_images", message)
