"""A deterministic stand-in for the ONNX pipeline, so API tests need no weights.

Per image it returns `persons` persons (or one per caller box) whose keypoints are derived from
the image size alone, records every image and options it was given (tests compare the pixels it
saw), and can sleep, fail, or return broken output on request.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from models.keypoints import COCO17, KeypointSpec
from service.results import PersonPose, PoseOptions, PoseResult, RefinedKeypoint
from service.settings import Settings


class FakeEstimator:
    def __init__(
        self,
        *,
        spec: KeypointSpec = COCO17,
        persons: int = 1,
        delay_s: float = 0.0,
        fail: bool = False,
        poison: str | None = None,  # "nan": a NaN keypoint; "outside": keypoints off the image
        warmup_error: Exception | None = None,
        keep_images: bool = True,  # False: `seen` is not kept (a server process under load)
    ) -> None:
        self.spec = spec
        self.refine_available = True
        self.persons = persons
        self.delay_s = delay_s
        self.fail = fail
        self.poison = poison
        self.warmup_error = warmup_error
        self.keep_images = keep_images
        self.warmed = False
        self.seen: list[tuple[npt.NDArray[np.uint8], PoseOptions]] = []
        self.batches: list[int] = []  # images per estimate_many call
        self.release = threading.Event()  # set it to end a delay early
        self._lock = threading.Lock()

    @property
    def info(self) -> dict[str, Any]:
        return {"name": "fake-bundle", "version": "0.0.1", "spec": self.spec.name}

    def warmup(self) -> None:
        if self.warmup_error is not None:
            raise self.warmup_error
        self.warmed = True

    def estimate_many(
        self, items: Sequence[tuple[npt.NDArray[np.uint8], PoseOptions]]
    ) -> list[PoseResult]:
        with self._lock:
            if self.keep_images:
                self.seen.extend(items)
            self.batches.append(len(items))
        if self.delay_s:
            self.release.wait(self.delay_s)
        if self.fail:
            raise RuntimeError("fake pipeline failure")
        return [self._one(image, options) for image, options in items]

    def _one(self, image: npt.NDArray[np.uint8], options: PoseOptions) -> PoseResult:
        h, w = image.shape[:2]
        boxes = options.boxes if options.boxes is not None else self._boxes(h, w)
        persons = [self._person(box, rank) for rank, box in enumerate(boxes)]
        persons = [p for p in persons if p.score >= (options.min_score or 0.0)]
        if options.max_persons is not None:
            persons = persons[: options.max_persons]
        refined = options.refine and self.refine_available
        if not refined:
            for p in persons:
                p.refinements = []
        return PoseResult(
            (h, w), persons, refined, {"detect_ms": 1.0, "backbone_ms": 2.0, "scio_ms": 0.5}
        )

    def _boxes(self, h: int, w: int) -> npt.NDArray[np.float64]:
        n = self.persons
        return np.array(
            [[w * i / n, 0.1 * h, w * (i + 1) / n - 1, 0.9 * h] for i in range(n)],
            dtype=np.float64,
        ).reshape(-1, 4)

    def _person(self, box: npt.NDArray[np.float64], rank: int) -> PersonPose:
        x1, y1, x2, y2 = (float(v) for v in box)
        k = self.spec.num_keypoints
        t = np.linspace(0.0, 1.0, k)
        kps = np.stack([x1 + (x2 - x1) * t, y1 + (y2 - y1) * t, 0.9 - 0.5 * t], axis=1)
        if self.poison == "nan":
            kps[0, 0] = np.nan
        elif self.poison == "outside":
            kps[0, :2] = (-50.0, -7.0)
            kps[-1, :2] = (x2 + 1e4, y2 + 1e4)
        refs = [
            RefinedKeypoint(
                g.d,
                g.name,
                1.5 if i % 2 == 0 else 0.0,
                0.4 if i % 2 == 0 else None,  # odd groups: Γ not run (its loss read nowhere)
                0.2 if i % 2 == 0 else None,
                i % 2 == 0,
                0.75 if i % 2 == 0 else None,
            )
            for i, g in enumerate(self.spec.groups)
        ]
        score = 0.9 - 0.1 * rank
        # the first person with a calibrated confidence, the others without
        confidence = 0.65 if rank == 0 else None
        return PersonPose(np.array(box, dtype=np.float64), score, score, kps, refs, confidence)


def factory_for(estimator: FakeEstimator) -> Any:
    """An `estimator_factory` for `create_app` that hands out this fake."""

    def factory(settings: Settings) -> FakeEstimator:
        return estimator

    return factory
