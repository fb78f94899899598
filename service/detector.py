"""The person detector: an ultralytics YOLO export with NMS inside (output [B, 300, 6]).

preprocess (letterbox) → infer (ONNX Runtime) → postprocess (undo the letterbox, keep persons).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from models.bundle import DetectorInfo
from models.geometry import resize_bilinear
from service.runtime import OnnxModel

F64 = npt.NDArray[np.float64]
PAD_VALUE = 114  # ultralytics' letterbox grey


def letterbox(
    image: npt.NDArray[np.uint8], size_hw: tuple[int, int]
) -> tuple[npt.NDArray[np.uint8], float, tuple[float, float]]:
    """Resize keeping the aspect ratio and pad to `size_hw`, centred (ultralytics' LetterBox
    with auto=False). Returns the padded image, the scale r and the (left, top) padding."""
    h, w = image.shape[:2]
    th, tw = size_hw
    r = min(th / h, tw / w)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    dw, dh = (tw - nw) / 2, (th - nh) / 2
    left, top = round(dw - 0.1), round(dh - 0.1)
    out = np.full((th, tw, 3), PAD_VALUE, dtype=np.uint8)
    resized = resize_bilinear(image, (nh, nw))  # OpenCV's bilinear, as ultralytics trains
    out[top : top + nh, left : left + nw] = resized
    return out, r, (float(left), float(top))


def detector_input(
    image: npt.NDArray[np.uint8], input_hw: tuple[int, int]
) -> tuple[npt.NDArray[np.float32], float, tuple[float, float]]:
    """The detector's input (1, 3, h, w) in [0, 1] for `image` letterboxed to `input_hw`, the
    letterbox scale and padding."""
    padded, r, pad = letterbox(image, input_hw)
    x = padded[None].astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    return x, r, pad


class PersonDetector:
    def __init__(self, model: OnnxModel, info: DetectorInfo) -> None:
        self.model = model
        self.info = info

    def network_input(
        self, image: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.float32], float, tuple[float, float]]:
        """The model's input (1, 3, h, w) in [0, 1], the letterbox scale and padding."""
        return detector_input(image, self.info.input_hw)

    def __call__(
        self, images: list[npt.NDArray[np.uint8]], min_score: float | None = None
    ) -> list[tuple[F64, F64]]:
        """Boxes [x1, y1, x2, y2] (n, 4) in image pixels and scores (n,), per image."""
        if not images:
            return []
        thr = self.info.score_threshold if min_score is None else min_score
        # One call per image: ultralytics unrolls its in-graph NMS loop over the batch size
        # used at export, so a batch-1 export answers only the first image of a larger batch.
        outs = []
        for im in images:
            x, r, pad = self.network_input(im)
            det = next(iter(self.model.run(**{self.model.input_names[0]: x}).values()))[0]
            outs.append((det, r, pad))
        results = []
        for (det, r, (left, top)), im in zip(outs, images, strict=True):
            keep = (det[:, 4] >= thr) & (det[:, 5].round() == self.info.person_class)
            d = det[keep].astype(np.float64)
            boxes = (d[:, :4] - [left, top, left, top]) / r
            h, w = im.shape[:2]
            boxes = np.clip(boxes, 0, [w, h, w, h])
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            results.append((boxes[ok], d[ok, 4]))
        return results
