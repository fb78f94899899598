"""Draw poses onto the image with Pillow: boxes, skeletons, keypoints; a keypoint that SCIO
moved is drawn as a magenta ring. Keypoints below `DRAW_THRESHOLD` are not drawn (the JSON still
has them). Fonts: Pillow's bundled default font, nothing is downloaded."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from models.keypoints import KeypointSpec
from service.results import PersonPose

DRAW_THRESHOLD = 0.3  # as MMPose's visualiser: low-score keypoints only clutter the picture
_PALETTE = ((255, 128, 0), (0, 200, 255), (80, 220, 80), (255, 220, 0), (200, 120, 255))
_MOVED = (255, 0, 255)
_OUTLINE = (0, 0, 0)


def render_png(
    image: npt.NDArray[np.uint8], persons: list[PersonPose], spec: KeypointSpec
) -> bytes:
    """RGB (H, W, 3) and clipped persons -> PNG bytes of the annotated image."""
    buf = io.BytesIO()
    draw_poses(image, persons, spec).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def draw_poses(
    image: npt.NDArray[np.uint8],
    persons: list[PersonPose],
    spec: KeypointSpec,
    labels: list[str] | None = None,
    colours: list[int] | None = None,
) -> Image.Image:
    """The annotated image. `labels`: the text at each box's corner (default: `person_label`);
    `colours`: a palette index per person (default: its position; a tracker passes the track ID
    so a person keeps its colour across frames)."""
    canvas = Image.fromarray(image)  # (H, W, 3) uint8 -> RGB
    draw = ImageDraw.Draw(canvas)
    lw = max(2, round(max(canvas.size) / 320))
    font = ImageFont.load_default(size=max(10, 6 * lw))
    for i, person in enumerate(persons):
        colour = _PALETTE[(i if colours is None else colours[i]) % len(_PALETTE)]
        _draw_person(draw, person, spec, colour, lw)
        x1, y1 = float(person.bbox[0]), float(person.bbox[1])
        draw.text(
            (x1 + lw, y1 + lw),
            person_label(person) if labels is None else labels[i],
            fill=colour,
            font=font,
            stroke_width=1,
            stroke_fill=_OUTLINE,
        )
    return canvas


def person_label(person: PersonPose) -> str:
    """The text at a person's box: its score, and its calibrated confidence where it has one."""
    if person.confidence is None:
        return f"{person.score:.2f}"
    return f"{person.score:.2f} p={person.confidence:.2f}"


def _draw_person(
    draw: ImageDraw.ImageDraw,
    person: PersonPose,
    spec: KeypointSpec,
    colour: tuple[int, int, int],
    lw: int,
) -> None:
    draw.rectangle([float(v) for v in person.bbox], outline=colour, width=lw)
    kps = person.keypoints
    shown = kps[:, 2] >= DRAW_THRESHOLD
    for a, b in spec.skeleton:
        if shown[a] and shown[b]:
            draw.line([(kps[a, 0], kps[a, 1]), (kps[b, 0], kps[b, 1])], fill=colour, width=lw)
    moved = {r.keypoint for r in person.refinements if r.accepted}
    r = lw + 1
    for j, (x, y, _) in enumerate(kps):
        if not shown[j]:
            continue
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=_OUTLINE)
        if j in moved:
            ring = 2 * r + lw
            draw.ellipse([x - ring, y - ring, x + ring, y + ring], outline=_MOVED, width=lw)
