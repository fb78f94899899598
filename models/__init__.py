"""What a model is: keypoint specs, the heatmap codec, crop geometry and the SCIO search.

Importing this package never imports torch. The PyTorch networks live in submodules
(`models.hrnet`, `models.pose_resnet`, `models.scio_nets`, `models.checkpoint`) that import torch
themselves and are only loaded by training code.
"""

from models.codec import HeatmapCodec, decode_argmax, decode_dark, flip_back, render_gaussians
from models.geometry import (
    affine_matrices,
    box_to_center_scale,
    heatmap_to_image,
    transform_points,
    warp_affine,
)
from models.keypoints import COCO17, CROWDPOSE14, SPECS, KeypointSpec, ScioGroup, get_spec

__all__ = [
    "COCO17",
    "CROWDPOSE14",
    "SPECS",
    "HeatmapCodec",
    "KeypointSpec",
    "ScioGroup",
    "affine_matrices",
    "box_to_center_scale",
    "decode_argmax",
    "decode_dark",
    "flip_back",
    "get_spec",
    "heatmap_to_image",
    "render_gaussians",
    "transform_points",
    "warp_affine",
]
