"""COCO-format person keypoint annotations: COCO, CrowdPose and our synthetic sets.

Reads the annotation JSON directly (no pycocotools needed for reading) and applies the official
instance filtering (`../shared/reference/official-topdown-facts.md` §3): ground-truth boxes are
cleaned, and a training instance needs a non-empty cleaned box and at least one labelled keypoint.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.geometry import clean_gt_boxes
from models.keypoints import KeypointSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    file_name: str
    height: int
    width: int


@dataclass(frozen=True)
class PersonAnn:
    ann_id: int
    image_id: int
    bbox_xywh: npt.NDArray[np.float64]  # (4,) as in the file
    keypoints: npt.NDArray[np.float64]  # (K, 3) x, y, v
    area: float
    iscrowd: bool
    num_keypoints: int


class CocoKeypoints:
    """One COCO-format keypoint annotation file.

    `spec` must have as many keypoints as the file's person category; names are compared and a
    difference is logged (CrowdPose calls top_head "head"), a count mismatch is an error.
    """

    def __init__(self, ann_file: str | Path, spec: KeypointSpec) -> None:
        self.ann_file = Path(ann_file)
        self.spec = spec
        try:
            data: dict[str, Any] = json.loads(self.ann_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read COCO annotations {self.ann_file}: {e}") from e
        self._check_category(data)
        self.images: dict[int, ImageRecord] = {
            int(im["id"]): ImageRecord(
                int(im["id"]), str(im["file_name"]), int(im["height"]), int(im["width"])
            )
            for im in data.get("images", [])
        }
        self._persons: dict[int, list[PersonAnn]] = defaultdict(list)
        k = spec.num_keypoints
        for a in data.get("annotations", []):
            if int(a.get("category_id", 1)) != 1:
                continue
            kp = np.asarray(a.get("keypoints") or [0.0] * (3 * k), dtype=np.float64)
            if kp.size != 3 * k:
                raise ValueError(
                    f"{self.ann_file}: annotation {a.get('id')} has {kp.size // 3} keypoints, "
                    f"spec {spec.name} has {k}"
                )
            image_id = int(a["image_id"])
            if image_id not in self.images:
                raise ValueError(f"{self.ann_file}: annotation {a.get('id')} names unknown image")
            self._persons[image_id].append(
                PersonAnn(
                    ann_id=int(a["id"]),
                    image_id=image_id,
                    bbox_xywh=np.asarray(a["bbox"], dtype=np.float64),
                    keypoints=kp.reshape(k, 3),
                    area=float(a.get("area", 0.0)),
                    iscrowd=bool(a.get("iscrowd", 0)),
                    num_keypoints=int(a.get("num_keypoints", int((kp[2::3] > 0).sum()))),
                )
            )

    def _check_category(self, data: dict[str, Any]) -> None:
        cats = [c for c in data.get("categories", []) if int(c.get("id", 0)) == 1]
        if not cats or "keypoints" not in cats[0]:
            return  # tolerate files without a keypoint category; annotations are checked anyway
        names = list(cats[0]["keypoints"])
        if len(names) != self.spec.num_keypoints:
            raise ValueError(
                f"{self.ann_file}: person category has {len(names)} keypoints, "
                f"spec {self.spec.name} has {self.spec.num_keypoints}"
            )
        if tuple(names) != self.spec.keypoint_names:
            log.info("%s: keypoint names differ from spec %s", self.ann_file, self.spec.name)

    @property
    def image_ids(self) -> list[int]:
        return sorted(self.images)

    def persons(self, image_id: int) -> list[PersonAnn]:
        """Every person annotation of the image, crowd regions included."""
        return list(self._persons.get(image_id, []))

    def labelled_persons(self, image_id: int) -> list[PersonAnn]:
        """The image's non-crowd persons with at least one labelled keypoint, boxes as
        annotated (no cleaning), in annotation order."""
        return [p for p in self.persons(image_id) if not p.iscrowd and p.keypoints[:, 2].max() > 0]

    def training_instances(self, official: bool = False) -> list[tuple[ImageRecord, PersonAnn]]:
        """Non-crowd persons with at least one labelled keypoint and a usable cleaned box, in
        image-id then annotation order. `official`: exactly the official code's filter
        (coco.py:164-171): area > 0 and a cleaned box with x2 >= x1, y2 >= y1, so a box 1 px
        wide (cleaned width 0) is kept and an annotation of area 0 dropped; otherwise (training,
        and evaluation by default) the cleaned box must have a positive width and height and
        the area is not looked at."""
        out = []
        for image_id in self.image_ids:
            im = self.images[image_id]
            for p in self._persons.get(image_id, []):
                if p.iscrowd or p.keypoints[:, 2].max() <= 0:
                    continue
                box = clean_gt_boxes(p.bbox_xywh[None], (im.height, im.width))[0]
                if official:
                    if p.area <= 0 or box[2] < 0 or box[3] < 0:
                        continue
                elif box[2] <= 0 or box[3] <= 0:
                    continue
                out.append((im, p))
        return out


def load_detections(
    path: str | Path, image_ids: set[int] | None = None, min_score: float = 0.0
) -> dict[int, list[tuple[npt.NDArray[np.float64], float]]]:
    """A COCO results file of person boxes -> {image_id: [(bbox_xywh, score), ...]}.

    Only category 1 is kept, and scores >= min_score (official IMAGE_THRE is 0.0). Boxes are used
    raw, as the official code does with detector boxes.
    """
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read detections {path}: {e}") from e
    if not isinstance(rows, list):
        raise ValueError(f"{path}: a detections file is a JSON list of results")
    out: dict[int, list[tuple[npt.NDArray[np.float64], float]]] = defaultdict(list)
    for r in rows:
        if int(r.get("category_id", 1)) != 1 or float(r["score"]) < min_score:
            continue
        image_id = int(r["image_id"])
        if image_ids is not None and image_id not in image_ids:
            continue
        out[image_id].append((np.asarray(r["bbox"], dtype=np.float64), float(r["score"])))
    return dict(out)
