"""What `scio-pose predict` reads: image files, folders of them, and videos, as one stream of
frames.

Images are decoded exactly as `/pose` decodes an upload (`service.imageio.decode_image`: magic
bytes decide the format, EXIF orientation applied, the pixel limit checked from the header), so
`predict` and the service see the same pixels. Folders are walked recursively in sorted order;
files whose suffix is neither an image's nor a video's are skipped. Videos are decoded with
OpenCV's `VideoCapture` (its pip wheels carry FFmpeg; OpenCV is already what the pipeline crops
with), frame by frame, never all at once.

A file that cannot be read or decoded, or a frame that cannot be decoded, becomes a `Frame` with
`error` set: the caller reports it and goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.errors import ApiError
from service.imageio import decode_image
from service.settings import KNOWN_FORMATS

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg"})


@dataclass(frozen=True)
class Source:
    path: Path
    name: str  # as reported: the path given, or relative to the folder given
    video: bool
    rel: Path  # where its annotated copy goes under --render: relative to the folder, or its name


@dataclass
class Frame:
    source: Source
    index: int  # frame index in a video; 0 for an image
    timestamp_s: float | None  # position in a video; None for an image
    image: npt.NDArray[np.uint8] | None  # RGB (H, W, 3); None when `error` is set
    error: str | None = None
    fps: float = 0.0  # the video's frame rate (0 for images or when the container does not say)


class SourceError(ValueError):
    """A source argument that names nothing readable (a usage error, reported before any work)."""


def expand_sources(args: Sequence[str | Path]) -> list[Source]:
    """Files and folders (recursive, sorted) -> the sources to read, in order."""
    out: list[Source] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None)
            if not found:
                log.warning("%s: no image or video files in this folder", arg)
            out += [
                Source(p, str(p.relative_to(path)), _kind(p) == "video", p.relative_to(path))
                for p in found
            ]
        elif path.is_file():
            out.append(Source(path, str(arg), _kind(path) == "video", Path(path.name)))
        else:
            raise SourceError(f"{arg}: no such file or folder")
    return out


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def read_frames(sources: Sequence[Source], max_pixels: int) -> Iterator[Frame]:
    for source in sources:
        if source.video:
            yield from _video_frames(source)
        else:
            yield _image_frame(source, max_pixels)


def _image_frame(source: Source, max_pixels: int) -> Frame:
    try:
        data = source.path.read_bytes()
        decoded = decode_image(data, allowed=KNOWN_FORMATS, max_pixels=max_pixels)
    except OSError as e:
        return Frame(source, 0, None, None, f"cannot read: {e.strerror or e}")
    except ApiError as e:
        return Frame(source, 0, None, None, e.message)
    return Frame(source, 0, None, decoded.rgb)


def open_video(path: Path) -> Any:
    """An opened `cv2.VideoCapture` (OpenCV is a base dependency: the crops use it too)."""
    import cv2

    return cv2.VideoCapture(str(path))


def _video_frames(source: Source) -> Iterator[Frame]:
    import cv2

    cap = open_video(source.path)
    try:
        if not cap.isOpened():
            yield Frame(source, 0, None, None, "cannot open as a video")
            return
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        index = 0
        failures = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                # the end, or a frame the decoder could not read: grab() tells them apart
                # only by whether the stream goes on, so allow a few in a row
                total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
                if index >= total or failures >= 3:
                    break
                failures += 1
                yield Frame(source, index, _timestamp(index, fps), None, "corrupt frame", fps)
                index += 1
                continue
            failures = 0
            rgb = np.ascontiguousarray(bgr[:, :, ::-1])
            yield Frame(source, index, _timestamp(index, fps), rgb, fps=fps)
            index += 1
        if index == 0:
            yield Frame(source, 0, None, None, "no frames could be decoded")
    finally:
        cap.release()


def _timestamp(index: int, fps: float) -> float | None:
    return index / fps if fps > 0 else None
