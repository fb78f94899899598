"""Network input normalisation, shared by training crops and the service (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # of RGB, on the 0-1 scale
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    color_order: str = "RGB"  # the order the network expects; official PoseResNet wants BGR

    def __post_init__(self) -> None:
        if self.color_order not in ("RGB", "BGR"):
            raise ValueError(f"color_order must be RGB or BGR, not {self.color_order!r}")


def to_network_input(crops: npt.NDArray[np.uint8], norm: Normalization) -> npt.NDArray[np.float32]:
    """RGB uint8 crops (N, h, w, 3) -> normalised float32 (N, 3, h, w) in the network's order."""
    order = slice(None, None, -1) if norm.color_order == "BGR" else slice(None)
    mean = np.asarray(norm.mean, dtype=np.float32)[order]
    std = np.asarray(norm.std, dtype=np.float32)[order]
    x = (crops[..., order].astype(np.float32) / np.float32(255.0) - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
