"""Where a training run's data comes from: COCO-format files on disk, or the synthetic
generator, run once into the run's data folder (deterministic, so a resumed or repeated run
trains on the same images)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from training.config import DataConfig, SyntheticData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetPaths:
    train_ann: Path
    train_images: Path
    val_ann: Path | None
    val_images: Path | None


def synthetic_dir(cache: Path, s: SyntheticData, split: str) -> Path:
    n, seed = (s.train_images, s.seed) if split == "train" else (s.val_images, s.seed + 1000)
    w, h = s.size
    return cache / f"synth-{split}-n{n}-s{seed}-{w}x{h}-p{s.persons[0]}-{s.persons[1]}"


def resolve_data(data: DataConfig, cache: Path, is_main: bool = True) -> DatasetPaths:
    """Paths of the train/val annotation files and image folders; generates synthetic data when
    the config asks for it and it is not there yet (only on the main process)."""
    if data.synthetic is not None:
        s = data.synthetic
        dirs = {split: synthetic_dir(cache, s, split) for split in ("train", "val")}
        if is_main:
            from training.synth.generate import generate_dataset

            for split, d in dirs.items():
                if (d / "person_keypoints.json").exists():
                    continue
                n, seed = (
                    (s.train_images, s.seed) if split == "train" else (s.val_images, s.seed + 1000)
                )
                log.info("generating %d synthetic %s images into %s", n, split, d)
                generate_dataset(
                    d, images=n, seed=seed, size=s.size, persons=s.persons, spec=data.spec
                )
        val = dirs["val"] if s.val_images > 0 else None
        return DatasetPaths(
            dirs["train"] / "person_keypoints.json",
            dirs["train"] / "images",
            None if val is None else val / "person_keypoints.json",
            None if val is None else val / "images",
        )
    root = Path(data.root)
    paths = DatasetPaths(
        root / data.train_ann,
        root / data.train_images,
        root / data.val_ann if data.val_ann else None,
        root / data.val_images if data.val_images else None,
    )
    for p in (paths.train_ann, paths.train_images, paths.val_ann, paths.val_images):
        if p is not None and not p.exists():
            raise FileNotFoundError(
                f"{p} does not exist: set data.root and the data paths in your config "
                "(see `scio-pose train backbone --help`)"
            )
    return paths


def coco_folder(folder: str | Path) -> tuple[Path, Path]:
    """The annotation file and image folder of a COCO-format folder in `scio-pose synth`'s layout
    (person_keypoints.json beside images/), checked to exist."""
    root = Path(folder)
    ann, images = root / "person_keypoints.json", root / "images"
    for p in (ann, images):
        if not p.exists():
            raise FileNotFoundError(
                f"{p} does not exist: expected a folder with person_keypoints.json and images/ "
                "(e.g. from `scio-pose synth`)"
            )
    return ann, images
