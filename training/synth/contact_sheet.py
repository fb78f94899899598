"""A contact sheet of generated samples with their labels drawn, for looking at the generator.

    python -m training.synth.contact_sheet --out docs/synthetic_samples.png

Each tile is one image with the skeleton drawn: the person's left side in blue, right side in
orange, the middle in green; filled dots are visible keypoints (v = 2), hollow rings occluded
ones (v = 1); thin white boxes are the ground-truth boxes, dashed yellow ones the simulated
detections. Captions say what each sample shows (views of its large people, crowds, people cut
by the border, small people, occluders); samples are chosen to show all of these. The last tile
is the owner label map (one shade per person and body part) the labels were read from.
"""

from __future__ import annotations

import argparse
import logging
from itertools import pairwise
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from models.keypoints import KeypointSpec, get_spec
from training.synth.generate import Sample, SynthConfig, make_sample
from training.synth.render import BACKGROUND, OCCLUDER

log = logging.getLogger(__name__)

LEFT, RIGHT, MIDDLE = (60, 140, 255), (255, 140, 30), (40, 220, 90)


def _side(name: str) -> tuple[int, int, int]:
    return LEFT if name.startswith("left") else RIGHT if name.startswith("right") else MIDDLE


def _dashed_box(draw: ImageDraw.ImageDraw, box: list[float], color: tuple[int, int, int]) -> None:
    x, y, w, h = box
    corners = [(x, y), (x + w, y), (x + w, y + h), (x, y + h), (x, y)]
    for (x0, y0), (x1, y1) in pairwise(corners):
        n = max(int(np.hypot(x1 - x0, y1 - y0) / 6), 1)
        for i in range(0, n, 2):
            t0, t1 = i / n, min(i + 1, n) / n
            draw.line([(x0 + (x1 - x0) * t0, y0 + (y1 - y0) * t0),
                       (x0 + (x1 - x0) * t1, y0 + (y1 - y0) * t1)], fill=color)  # fmt: skip


def draw_labels(sample: Sample, spec: KeypointSpec) -> Image.Image:
    """The image with boxes, detections and skeletons drawn on it."""
    img = Image.fromarray(sample.image)
    draw = ImageDraw.Draw(img)
    for det in sample.detections:
        _dashed_box(draw, det["bbox"], (255, 230, 0))
    names = spec.keypoint_names
    r = max(2, round(min(sample.image.shape[:2]) / 110))
    for lab in sample.labels:
        x, y, w, h = (float(c) for c in lab.bbox)
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=(255, 255, 255), width=1)
        kps = lab.keypoints
        for i, j in spec.skeleton:
            if kps[i, 2] > 0 and kps[j, 2] > 0:
                col = _side(names[i]) if _side(names[i]) == _side(names[j]) else MIDDLE
                draw.line([(kps[i, 0], kps[i, 1]), (kps[j, 0], kps[j, 1])], fill=col, width=1)
        for (px, py, v), name in zip(kps, names, strict=True):
            dot = [px - r, py - r, px + r, py + r]
            if v == 2:
                draw.ellipse(dot, fill=_side(name), outline=(0, 0, 0))
            elif v == 1:
                draw.ellipse(dot, outline=_side(name), width=max(1, r // 2))
    return img


def owner_map(sample: Sample) -> Image.Image:
    """The owner label map: each person one colour, occluders grey, background black."""
    owner = sample.canvas.owner
    palette = np.random.default_rng(0).integers(60, 255, (128, 3)).astype(np.uint8)
    out = palette[np.clip(owner, 0, 127)]
    out[owner == BACKGROUND] = 0
    out[owner == OCCLUDER] = 110
    shade = np.clip((sample.canvas.part.astype(np.float32) % 5) / 8 + 0.5, 0, 1)
    out = (out * shade[..., None]).astype(np.uint8)
    return Image.fromarray(out)


def features(sample: Sample) -> list[str]:
    """What a sample shows, for choosing and captioning tiles."""
    h = sample.scene.height
    out = []
    big = [p for p in sample.scene.persons if p.scale > 0.35 * h]
    for name, lo, hi in (("front", 0, 35), ("side", 65, 115), ("back", 145, 181)):
        if any(lo <= abs(p.yaw) < hi for p in big):
            out.append(name)
    if len(sample.labels) >= 4:
        out.append("crowd")
    if any((lab.keypoints[:, 2] == 0).any() for lab in sample.labels):
        out.append("cut by border")
    if any(p.scale < 0.3 * h for p in sample.scene.persons):
        out.append("small")
    out += sorted({"held " * o.held + o.kind for o in sample.scene.occluders})
    return out


def choose(cfg: SynthConfig, count: int, pool: int) -> list[Sample]:
    """Greedily pick samples (among the first `pool`) that show something not shown yet; then
    fill up in index order, so the rest is an unselected draw."""
    candidates = [make_sample(cfg, i) for i in range(pool)]
    feats = {c.index: set(features(c)) for c in candidates}
    shown: set[str] = set()
    chosen: list[Sample] = []
    while len(chosen) < min(count, pool):
        taken = {c.index for c in chosen}
        rest = [c for c in candidates if c.index not in taken]
        best = max(rest, key=lambda c: (len(feats[c.index] - shown), -c.index))
        chosen.append(best)
        shown |= feats[best.index]
    return sorted(chosen, key=lambda c: c.index)


def contact_sheet(cfg: SynthConfig, count: int, columns: int, pool: int) -> Image.Image:
    """`count` labelled samples, plus the owner map of the last one, in a grid."""
    spec = get_spec(cfg.spec)
    samples = choose(cfg, count, pool)
    tiles = [(draw_labels(s, spec), f"#{s.index}: " + ", ".join(features(s))) for s in samples]
    tiles.append((owner_map(samples[-1]), f"#{samples[-1].index}: owner label map"))
    rows = -(-len(tiles) // columns)
    pad = 3
    size = (columns * (cfg.width + pad) + pad, rows * (cfg.height + pad) + pad)
    sheet = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for t, (tile, caption) in enumerate(tiles):
        x, y = pad + (t % columns) * (cfg.width + pad), pad + (t // columns) * (cfg.height + pad)
        sheet.paste(tile, (x, y))
        draw.text(
            (x + 3, y + 2), caption, fill="white", font=font, stroke_width=2, stroke_fill="black"
        )
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/synthetic_samples.png"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    parser.add_argument("--samples", type=int, default=11)
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--pool", type=int, default=40, help="samples to choose from")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = SynthConfig(width=args.size[0], height=args.size[1], seed=args.seed)
    sheet = contact_sheet(cfg, args.samples, args.columns, args.pool)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    log.info("wrote %s (%d KiB)", args.out, args.out.stat().st_size // 1024)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
