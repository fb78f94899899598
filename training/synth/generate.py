"""Generating a dataset: one image at a time from its own seed, in parallel, into COCO files.

Image `i` of a run with seed `s` draws all its randomness from SeedSequence(s, spawn_key=(i,)),
so an image does not depend on which worker made it or on how many workers there were; results
come back in index order, so the JSON files are byte-identical for the same arguments.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from models.keypoints import KeypointSpec, get_spec
from training.synth.detections import simulate_detections
from training.synth.labels import (
    PersonLabel,
    coco_annotation,
    crowd_index,
    label_persons,
    visibility_counts,
)
from training.synth.render import Canvas
from training.synth.scene import Scene, finish_image, plan_scene, render_scene

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
MAX_PERSONS = 99  # annotation ids are image_id * 100 + person


@dataclass(frozen=True)
class SynthConfig:
    width: int = 640
    height: int = 480
    persons: tuple[int, int] = (1, 6)  # min, max people per image
    spec: str = "coco17"
    seed: int = 0

    def __post_init__(self) -> None:
        if not (8 <= self.width <= 8192 and 8 <= self.height <= 8192):
            raise ValueError(f"image size {self.width}x{self.height} out of range")
        lo, hi = self.persons
        if not (0 <= lo <= hi <= MAX_PERSONS):
            raise ValueError(f"persons must satisfy 0 <= min <= max <= {MAX_PERSONS}")
        get_spec(self.spec)


@dataclass
class Sample:
    """One generated image with everything the tests and the contact sheet look at."""

    index: int
    image_id: int
    file_name: str
    image: npt.NDArray[np.uint8]  # (H, W, 3) RGB, before JPEG
    scene: Scene
    canvas: Canvas  # colour before camera effects, depth and owner maps
    labels: list[PersonLabel]
    detections: list[dict[str, Any]]
    crowd_index: float


def image_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for image `index`'s scene and its simulated detections."""
    scene_ss, det_ss = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(2)
    return np.random.default_rng(scene_ss), np.random.default_rng(det_ss)


def make_sample(cfg: SynthConfig, index: int) -> Sample:
    """Image `index` of the dataset `cfg` describes: scene, pixels, labels and detections."""
    spec = get_spec(cfg.spec)
    scene_rng, det_rng = image_rngs(cfg.seed, index)
    scene = plan_scene(scene_rng, cfg.width, cfg.height, cfg.persons)
    canvas = render_scene(scene)
    image = finish_image(scene, canvas.rgb)
    labels = label_persons(canvas, [(p.body, p.scale) for p in scene.persons], spec)
    image_id = index + 1
    boxes = np.array([lab.bbox for lab in labels]).reshape(-1, 4)
    visible = np.array([visible_fraction(lab) for lab in labels])
    dets = simulate_detections(det_rng, boxes, visible, image_id, cfg.width, cfg.height)
    return Sample(
        index, image_id, f"{index:08d}.jpg", image, scene, canvas, labels, dets, crowd_index(labels)
    )


def visible_fraction(label: PersonLabel) -> float:
    v = label.keypoints[:, 2]
    return float((v == 2).sum() / max(int((v > 0).sum()), 1))


@dataclass
class ImageResult:
    image: dict[str, Any]
    annotations: list[dict[str, Any]]
    detections: list[dict[str, Any]]
    counts: npt.NDArray[np.int64]  # (K, 3) v = 0, 1, 2 per keypoint


def _work(job: tuple[SynthConfig, int, str]) -> ImageResult:
    cfg, index, image_dir = job
    s = make_sample(cfg, index)
    Image.fromarray(s.image).save(
        Path(image_dir) / s.file_name, quality=s.scene.finish.jpeg_quality
    )
    anns = [coco_annotation(lab, s.image_id * 100 + lab.person, s.image_id) for lab in s.labels]
    image = {
        "id": s.image_id,
        "file_name": s.file_name,
        "width": cfg.width,
        "height": cfg.height,
        "crowdIndex": round(s.crowd_index, 4),
    }
    k = get_spec(cfg.spec).num_keypoints
    return ImageResult(image, anns, s.detections, visibility_counts(s.labels, k))


@dataclass
class Summary:
    images: int
    persons: int
    counts: npt.NDArray[np.int64]  # (K, 3) v = 0, 1, 2 per keypoint over all annotations
    spec: KeypointSpec
    files: list[Path] = field(default_factory=list)


def _results(cfg: SynthConfig, n: int, image_dir: Path, workers: int) -> Iterator[ImageResult]:
    jobs = [(cfg, i, str(image_dir)) for i in range(n)]
    if workers <= 1 or n < 2:
        yield from map(_work, jobs)
        return
    # spawn, not fork: the caller may hold threads (torch, a test runner); workers import little.
    with mp.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_work, jobs, chunksize=max(1, min(8, n // (workers * 4))))


def generate(
    cfg: SynthConfig, out: Path, n: int, workers: int | None = None, progress: bool | None = None
) -> Summary:
    """Write out/images/*.jpg, out/person_keypoints.json and out/detections.json."""
    spec = get_spec(cfg.spec)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    workers = min(workers or os.cpu_count() or 1, max(n, 1))
    show = sys.stderr.isatty() if progress is None else progress
    log.info("generating %d images (%dx%d) with %d workers", n, cfg.width, cfg.height, workers)
    from tqdm import tqdm

    images, anns, dets = [], [], []
    counts = np.zeros((spec.num_keypoints, 3), np.int64)
    bar = tqdm(total=n, unit="img", disable=not show, file=sys.stderr)
    for r in _results(cfg, n, image_dir, workers):
        images.append(r.image)
        anns.extend(r.annotations)
        dets.extend(r.detections)
        counts += r.counts
        bar.update(1)
    bar.close()
    coco = {
        "info": {
            "description": "scio-pose synthetic people",
            "version": str(GENERATOR_VERSION),
            "seed": cfg.seed,
            "spec": cfg.spec,
            "persons": list(cfg.persons),
        },
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [spec.coco_category()],
    }
    files = [out / "person_keypoints.json", out / "detections.json"]
    files[0].write_text(json.dumps(coco, separators=(",", ":")))
    files[1].write_text(json.dumps(dets, separators=(",", ":")))
    return Summary(n, len(anns), counts, spec, files)


def generate_dataset(
    out: Path,
    images: int,
    seed: int = 0,
    size: tuple[int, int] = (640, 480),
    persons: tuple[int, int] = (1, 6),
    spec: str = "coco17",
    workers: int | None = None,
    progress: bool | None = None,
) -> Summary:
    """`scio-pose synth` as a function: size is (w, h), persons (min, max) per image."""
    cfg = SynthConfig(width=size[0], height=size[1], persons=persons, spec=spec, seed=seed)
    return generate(cfg, Path(out), images, workers=workers, progress=progress)


def rate_table(summary: Summary) -> str:
    """Per-keypoint visible / occluded / outside rates, as a plain text table."""
    total = max(int(summary.counts[0].sum()), 1)
    lines = [f"{'keypoint':<16}{'visible':>9}{'occluded':>10}{'outside':>9}"]
    for name, (v0, v1, v2) in zip(summary.spec.keypoint_names, summary.counts, strict=True):
        lines.append(f"{name:<16}{v2 / total:>9.1%}{v1 / total:>10.1%}{v0 / total:>9.1%}")
    lines.append(f"({summary.persons} persons in {summary.images} images)")
    return "\n".join(lines)
