"""Top-down training samples: one person crop, its target heatmaps and weights.

The augmentation is the official one (`../shared/reference/official-topdown-facts.md` §6):
scale jitter, rotation with probability 0.6, horizontal flip with the left/right swap, and the
half-body crop. Randomness comes from a generator seeded by (seed, epoch, index), so a sample is
the same whichever data-loader worker draws it, and a resumed run sees the same stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch.utils.data import Dataset

from models.codec import HeatmapCodec
from models.geometry import (
    affine_matrices,
    box_to_center_scale,
    clean_gt_boxes,
    flip_keypoints_horizontal,
    half_body_box,
    transform_points,
    warp_affine,
)
from models.keypoints import KeypointSpec
from models.preprocess import Normalization, to_network_input
from training.config import AugmentConfig
from training.data.coco import CocoKeypoints, ImageRecord, PersonAnn

F64 = npt.NDArray[np.float64]

# Keypoints that count as "upper body" for the half-body crop, by spec.
_UPPER_NAMES = ("nose", "eye", "ear", "shoulder", "elbow", "wrist", "head", "neck")


class TopDownDataset(Dataset[dict[str, Any]]):
    def __init__(
        self,
        coco: CocoKeypoints,
        images_dir: str | Path,
        codec: HeatmapCodec,
        norm: Normalization,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        limbs: tuple[tuple[int, int], ...] = (),
    ) -> None:
        self.coco = coco
        self.spec: KeypointSpec = coco.spec
        self.images_dir = Path(images_dir)
        self.codec = codec
        self.norm = norm
        self.augment = augment
        self.seed = seed
        self.limbs = limbs  # skeleton edges whose limb targets each sample carries too
        self.epoch = 0
        self.instances: list[tuple[ImageRecord, PersonAnn]] = coco.training_instances()
        self._upper = self.spec.named(_UPPER_NAMES)
        self._aspect = codec.input_hw[1] / codec.input_hw[0]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.instances)

    def load_image(self, im: ImageRecord) -> npt.NDArray[np.uint8]:
        path = self.images_dir / im.file_name
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(index, self.epoch)

    def item(self, index: int, epoch: int) -> dict[str, Any]:
        """Person `index` as augmented in pass `epoch` (the same whoever asks)."""
        im, person = self.instances[index]
        image = self.load_image(im)
        joints = person.keypoints[:, :2].copy()
        vis = (person.keypoints[:, 2] > 0).astype(np.float64)
        box = clean_gt_boxes(person.bbox_xywh[None], (im.height, im.width))
        center, scale = (a[0] for a in box_to_center_scale(box, self._aspect))
        rotation = 0.0
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, epoch, index))
            image, joints, vis, center, scale, rotation = self._augment(
                rng, image, joints, vis, center, scale
            )
        matrix = affine_matrices(center[None], scale[None], rotation, self.codec.input_hw)
        crop = warp_affine(image, matrix, self.codec.input_hw)
        joints_in = transform_points(joints[None], matrix)[0]
        target, weight = self.codec.encode(joints_in, vis)
        extra: dict[str, Any] = {}
        if self.limbs:
            limb_maps, limb_weight = self.codec.encode_limbs(joints_in, weight, self.limbs)
            extra = {
                "limbs": torch.from_numpy(limb_maps),
                "limb_weight": torch.from_numpy(limb_weight),
            }
        return {
            **extra,
            "image": torch.from_numpy(to_network_input(crop, self.norm)[0]),
            "target": torch.from_numpy(target),
            "target_weight": torch.from_numpy(weight),
            "joints": torch.from_numpy(joints_in.astype(np.float32)),  # input pixels
            "image_id": im.image_id,
            "ann_id": person.ann_id,
            # the crop, for back-projection (official center/scale, scale in units of 200 px)
            "center": torch.from_numpy(center.astype(np.float32)),
            "scale": torch.from_numpy(np.asarray(scale, dtype=np.float32)),
            "rotation": torch.tensor(rotation, dtype=torch.float32),
        }

    def _augment(
        self,
        rng: np.random.Generator,
        image: npt.NDArray[np.uint8],
        joints: F64,
        vis: F64,
        center: F64,
        scale: F64,
    ) -> tuple[npt.NDArray[np.uint8], F64, F64, F64, F64, float]:
        a = self.augment
        assert a is not None
        if vis.sum() > a.half_body_min_joints and rng.random() < a.half_body_prob:
            half = self._half_body(rng, joints, vis)
            if half is not None:
                center, scale = half
        sf, rf = a.scale_factor, a.rotation_factor
        scale = scale * float(np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf))
        rotation = 0.0
        if rng.random() <= a.rotation_prob:
            rotation = float(np.clip(rng.standard_normal() * rf, -2 * rf, 2 * rf))
        if rng.random() <= a.flip_prob:
            width = image.shape[1]
            image = np.ascontiguousarray(image[:, ::-1])
            flipped = flip_keypoints_horizontal(
                np.concatenate([joints, vis[:, None]], 1), width, self.spec.flip_index
            )
            joints, vis = flipped[:, :2], flipped[:, 2]
            center = np.array([width - 1 - center[0], center[1]])
        return image, joints, vis, center, scale, rotation

    def _half_body(self, rng: np.random.Generator, joints: F64, vis: F64) -> tuple[F64, F64] | None:
        """Official half_body_transform: a box around the labelled upper (or lower) joints,
        grown to the aspect ratio and enlarged 1.5x. The official coin is randn() < 0.5."""
        labelled = vis > 0
        upper = joints[labelled & self._upper]
        lower = joints[labelled & ~self._upper]
        if rng.standard_normal() < 0.5 and len(upper) > 2:
            sel = upper
        else:
            sel = lower if len(lower) > 2 else upper
        if len(sel) < 2:
            return None
        return half_body_box(sel, self._aspect)


class SampleStream(Dataset[dict[str, Any]]):
    """`base` addressed by (pass, person) keys, which a `StreamSampler` hands out.

    The pass travels with the key, so data-loader worker processes need no `set_epoch` (a
    persistent worker keeps its own copy of the dataset, and an epoch set in the main process
    never reaches it) and a resumed run sees exactly the samples it would have seen.
    """

    def __init__(self, base: TopDownDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        return self.base.item(index, epoch)
