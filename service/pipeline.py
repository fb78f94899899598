"""The pose pipeline on ONNX Runtime; the object both the service and `scio-pose evaluate` run.

One call handles many images: detect persons (or take the caller's boxes) → affine crops of all
persons of all images → one backbone call for all of them (the mirrored crops of a flip test go
into the same call) → SCIO refinement of the distal keypoints → decode → back-project → rescore
and OKS-NMS. Never imports torch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.bundle import (
    DETECTOR,
    DETECTOR_INT8,
    GAMMA_CONTEXT,
    GAMMA_HEAD,
    PHI,
    POSE,
    POSE_INT8,
    Bundle,
    BundleError,
    load_bundle,
)
from models.codec import HeatmapCodec, fuse_flip
from models.geometry import (
    affine_matrices,
    box_to_center_scale,
    half_body_box,
    heatmap_to_image,
    transform_points,
    warp_affine,
)
from models.pairs import PairSplit, split_pairs
from models.postprocess import OKS_THRE, oks_nms, person_features, rescore
from models.preprocess import Normalization, to_network_input
from models.scio_search import ScioSearchConfig, SearchResult, refine, wants_phi
from service.detector import PersonDetector
from service.results import PersonPose, PoseOptions, PoseResult, RefinedKeypoint
from service.runtime import OnnxModel, cpu_has_int8_dot, runs_on_cpu, usable_cores
from service.scio_onnx import OnnxPredictor, OnnxVerifier
from service.settings import PRECISIONS

log = logging.getLogger(__name__)
F64 = npt.NDArray[np.float64]

# The head view (`PoseOptions.head_view`): the backbone run again on the half-body crop around
# the decoded upper-body joints, whose face keypoints replace the first crop's
# (benchmarks/second_view.py). Keypoints whose name contains one of these words:
HEAD_VIEW_PLACED_BY = ("nose", "eye", "ear", "shoulder", "elbow", "wrist")
HEAD_VIEW_REPLACES = ("nose", "eye", "ear")
# the view's scale relative to the first crop's: never larger, never below this share
HEAD_VIEW_MIN_SCALE = 0.3


@dataclass
class _Persons:
    """All persons of one call, concatenated over images (N = total persons)."""

    item: npt.NDArray[np.intp]  # (N,) which image
    boxes: F64  # (N, 4) x1, y1, x2, y2
    box_scores: F64  # (N,)
    centers: F64  # (N, 2)
    scales: F64  # (N, 2)


@dataclass
class BackbonePass:
    """What `PosePipeline.backbone_pass` hands to `finish`."""

    persons: _Persons
    heatmaps: npt.NDArray[np.float32]  # (N, K, h, w), flip-fused where asked
    features: npt.NDArray[np.float32]  # (N, C, h, w)
    coords: F64  # (N, K, 2) decoded, heatmap pixels
    scores: F64  # (N, K)
    timings: dict[str, float]


def with_mirrored(
    x: npt.NDArray[np.float32], flip: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float32]:
    """The network's batch: the inputs (N, 3, H, W), then the mirrored copies of those `flip`
    marks (the flip test), which `fuse_flip` averages back into the first N."""
    if not flip.any():
        return x
    return np.concatenate([x, np.ascontiguousarray(x[flip][..., ::-1])])


class PosePipeline:
    """Implements `service.results.PoseEstimator` on a bundle."""

    def __init__(
        self,
        bundle: Bundle,
        device: str = "auto",
        intra_op_threads: int | None = None,
        max_batch: int = 64,
        scio_config: ScioSearchConfig | None = None,
        io_binding: bool | None = None,
        scio_parallel: bool | None = None,
        precision: str = "auto",
        pair_split: bool | PairSplit = True,
    ) -> None:
        """`scio_config` overrides the bundle's SCIO search settings (evaluation ablations).
        `precision`: which backbone graph runs: "auto" = the bundle's INT8 copy (`pose_int8`)
        where the backbone runs on a CPU with 8-bit dot products and the bundle has one, else
        the float graph; "fp32" or "int8" to choose (`backbone_precision`). The detector's INT8
        copy (`detector_int8`), where the bundle has one, runs with the INT8 backbone.
        `io_binding`: None = on where the models run on CUDA/TensorRT (`service.runtime`).
        `scio_parallel`: Φ and Γ's context side by side, each on half the threads (they read
        the same inputs and not each other); None = where there are at least two threads and
        the SCIO settings run Φ.
        `pair_split`: left/right pairs decoded on one spot split by their anchors
        (models.pairs): True = as the bundle says, False = never, or these settings (tuning)."""
        m = bundle.manifest
        self.bundle = bundle
        self.spec = m.spec
        self.max_batch = max_batch
        self.codec = HeatmapCodec(m.pose.input_hw, m.pose.heatmap_hw, m.pose.sigma)
        self.norm = Normalization(m.pose.mean, m.pose.std, m.pose.color_order)
        self.pair_split = (
            pair_split if isinstance(pair_split, PairSplit)
            else m.pose.pair_split if pair_split else None
        )  # fmt: skip
        if self.pair_split is not None:
            self.pair_split.check(self.spec)
        load = partial(
            OnnxModel.load, device=device, intra_op_threads=intra_op_threads, io_binding=io_binding
        )
        self.precision = backbone_precision(bundle, device, precision)
        self.pose = load(_req(bundle.path(POSE_INT8 if self.precision == "int8" else POSE)))
        # the detector's INT8 copy runs beside the INT8 backbone, where the bundle has one
        int8_det = self.precision == "int8" and bundle.path(DETECTOR_INT8) is not None
        self.detector_precision = "int8" if int8_det else "fp32"
        det_path = bundle.path(DETECTOR_INT8 if int8_det else DETECTOR)
        self.detector = (
            PersonDetector(load(det_path), m.detector)
            if det_path is not None and m.detector is not None
            else None
        )
        # OKS-NMS between persons: the bundle's detector setting, else the official value
        self.oks_nms = m.detector.oks_nms if m.detector is not None else OKS_THRE
        self.min_person_score = m.detector.min_person_score if m.detector is not None else 0.0
        # the calibrated score of the persons the detector finds, where the bundle has one
        self.person_score = self.detector.info.person_score if self.detector is not None else None
        self.verifier: OnnxVerifier | None = None
        self.predictor: OnnxPredictor | None = None
        self.scio_config = scio_config or ScioSearchConfig()
        self._info: tuple[ScioSearchConfig, dict[str, Any]] | None = None
        self._in_pixels: tuple[ScioSearchConfig, ScioSearchConfig] | None = None
        self._parallel: ThreadPoolExecutor | None = None
        if bundle.has_scio:
            self._load_scio(bundle, load, scio_config, scio_parallel, intra_op_threads)
        self.refine_available = self.verifier is not None
        self._head_placed_by = np.flatnonzero(self.spec.named(HEAD_VIEW_PLACED_BY))
        self._head_replaces = np.flatnonzero(self.spec.named(HEAD_VIEW_REPLACES))
        # a spec without face keypoints (CrowdPose's head and neck) has no head view
        self.head_view_available = len(self._head_replaces) > 0 and len(self._head_placed_by) > 1
        log.info(
            "loaded bundle %s %s from %s on %s", m.name, m.version, bundle.root, self.pose.providers
        )

    def _load_scio(
        self,
        bundle: Bundle,
        load: Callable[..., OnnxModel],
        override: ScioSearchConfig | None,
        parallel: bool | None,
        intra_op_threads: int | None,
    ) -> None:
        """Γ and Φ, and the settings they run with. Φ and Γ's context, which may run at the same
        time (`parallel`, see `__init__`), get half the threads each; Γ's head all of them."""
        settings = bundle.manifest.scio or {}
        names = tuple(settings.get("groups", ()))
        expected = tuple(g.name for g in self.spec.groups)
        members = settings.get("group_members")
        spec_members = self.spec.to_dict()["groups"]
        if names != expected or (members is not None and members != spec_members):
            raise ValueError(
                f"the bundle's SCIO networks were trained for groups {names} "
                f"({members}), its keypoint spec has {spec_members}"
            )
        self.scio_config = override or ScioSearchConfig.from_dict(settings.get("search", {}))
        phi = bundle.path(PHI)
        threads = intra_op_threads or usable_cores()
        if parallel is None:  # where Φ runs at these settings (else Γ's context runs alone)
            parallel = threads >= 2 and wants_phi(self.scio_config, phi is not None)
        side_by_side = load
        if parallel:
            side_by_side = partial(load, intra_op_threads=max(1, threads // 2))
            self._parallel = ThreadPoolExecutor(1, thread_name_prefix="scio-phi")
        self.verifier = OnnxVerifier(
            side_by_side(_req(bundle.path(GAMMA_CONTEXT))), load(_req(bundle.path(GAMMA_HEAD)))
        )
        if phi is not None:
            self.predictor = OnnxPredictor(side_by_side(phi))

    @classmethod
    def from_path(cls, path: str | Path, **kw: Any) -> PosePipeline:
        return cls(load_bundle(path), **kw)

    @property
    def info(self) -> dict[str, Any]:
        """Bundle metadata; built once per SCIO configuration (every response names the bundle,
        and serialising the settings each time cost a quarter of a millisecond)."""
        cached = self._info
        if cached is None or cached[0] is not self.scio_config:
            cached = self._info = (self.scio_config, self._build_info())
        return dict(cached[1])

    def _build_info(self) -> dict[str, Any]:
        m = self.bundle.manifest
        return {
            "name": m.name,
            "version": m.version,
            "spec": m.spec.name,
            "keypoints": list(m.spec.keypoint_names),
            "input_hw": list(m.pose.input_hw),
            "heatmap_hw": list(m.pose.heatmap_hw),
            "detector": self.detector is not None,
            "detector_threshold": self.detector.info.score_threshold if self.detector else None,
            "detector_score_floor": self.detector.info.score_floor if self.detector else None,
            "oks_nms": self.oks_nms,
            "min_person_score": self.min_person_score if self.detector else None,
            "person_score": self.person_score.to_dict() if self.person_score else None,
            "flip_test": m.pose.flip_test,
            "flip_min_score": self.detector.info.flip_min_score if self.detector else None,
            "pair_split": self.pair_split.to_dict() if self.pair_split else None,
            "refine_available": self.refine_available,
            "head_view_available": self.head_view_available,
            "scio": self.scio_config.to_dict() if self.refine_available else None,
            "providers": self.pose.providers,
            "precision": self.precision,
            "detector_precision": self.detector_precision if self.detector else None,
            "provenance": m.provenance,
        }

    def flips(self, flip: bool | None) -> bool:
        """Whether a request runs the flip test: its own `flip`, else the bundle's default."""
        return self.bundle.manifest.pose.flip_test if flip is None else flip

    def _flip_mask(
        self, items: Sequence[tuple[npt.NDArray[np.uint8], PoseOptions]], p: _Persons
    ) -> npt.NDArray[np.bool_]:
        """Which persons run the flip test: those of a request that sets `flip` as it says;
        otherwise the bundle's default, except that the detector's boxes scoring below its
        `flip_min_score` run without it."""
        flip = np.array([self.flips(items[i][1].flip) for i in p.item], dtype=bool)
        floor = self.detector.info.flip_min_score if self.detector else 0.0
        if floor > 0 and flip.any():
            by_default = np.array(
                [items[i][1].flip is None and items[i][1].boxes is None for i in p.item],
                dtype=bool,
            )
            flip &= ~(by_default & (p.box_scores < floor))
        return flip

    def warmup(self) -> None:
        """One full pass on a blank image, so the first request does not pay session start-up."""
        blank = np.zeros((self.codec.input_hw[0] * 2, self.codec.input_hw[1] * 2, 3), np.uint8)
        box = np.array([[0.0, 0.0, blank.shape[1] - 1.0, blank.shape[0] - 1.0]])
        self.estimate_many([(blank, PoseOptions(boxes=box, flip=True))])
        if self.detector is not None:
            self.detector([blank])

    def estimate(self, image: npt.NDArray[np.uint8], options: PoseOptions) -> PoseResult:
        return self.estimate_many([(image, options)])[0]

    def estimate_many(
        self, items: Sequence[tuple[npt.NDArray[np.uint8], PoseOptions]]
    ) -> list[PoseResult]:
        return self.finish(items, self.backbone_pass(items))

    def backbone_pass(
        self, items: Sequence[tuple[npt.NDArray[np.uint8], PoseOptions]]
    ) -> BackbonePass:
        """Detection, crops, the backbone and decoding: everything before SCIO."""
        timings: dict[str, float] = {}
        t = time.perf_counter()
        persons = self._persons(items)
        timings["detect_ms"] = _ms(t)

        t = time.perf_counter()
        crops = self._crops(items, persons)
        timings["preprocess_ms"] = _ms(t)

        t = time.perf_counter()
        heatmaps, features = self._backbone(crops, self._flip_mask(items, persons))
        timings["backbone_ms"] = _ms(t)

        t = time.perf_counter()
        coords, scores = self.codec.decode(heatmaps, self.bundle.manifest.pose.decode)
        bp = self.with_pair_split(
            BackbonePass(persons, heatmaps, features, coords, scores, timings), self.pair_split
        )
        timings["decode_heatmaps_ms"] = _ms(t)

        if self.head_view_available and any(o.head_view for _, o in items):
            want = np.array([items[i][1].head_view for i in persons.item], dtype=bool)
            if want.any():  # else the requests that asked have no persons
                t = time.perf_counter()
                bp = self._head_view(items, bp, np.flatnonzero(want))
                timings["head_view_ms"] = _ms(t)
        return bp

    def head_view_crops(self, bp: BackbonePass, sel: npt.NDArray[np.intp]) -> tuple[F64, F64]:
        """Centers and scales (len(sel), 2) of the head view of the persons `sel` of `bp`: the
        official half-body crop (the box of the decoded upper-body joints grown to the network's
        aspect ratio, x1.5, centred on their mean), kept between HEAD_VIEW_MIN_SCALE and 1 times
        the first crop's scale."""
        p, hw = bp.persons, self.codec.heatmap_hw
        joints = heatmap_to_image(
            bp.coords[sel][:, self._head_placed_by], p.centers[sel], p.scales[sel], hw
        )
        aspect = self.codec.input_hw[1] / self.codec.input_hw[0]
        centers, scales = half_body_box(joints, aspect)
        first = p.scales[sel]
        return centers, np.clip(scales, HEAD_VIEW_MIN_SCALE * first, first)

    def _head_view(
        self,
        items: Sequence[tuple[npt.NDArray[np.uint8], PoseOptions]],
        bp: BackbonePass,
        sel: npt.NDArray[np.intp],
    ) -> BackbonePass:
        """`bp` with the face keypoints (position and peak) of the persons `sel` taken from the
        backbone's pass over their head view (`head_view_crops`), decoded as the first crop
        (flip test as the person's, pair split), in the first crop's heatmap pixels. The maps
        SCIO reads stay the first crop's."""
        p, hw = bp.persons, self.codec.heatmap_hw
        centers, scales = self.head_view_crops(bp, sel)
        view = _Persons(p.item[sel], p.boxes[sel], p.box_scores[sel], centers, scales)
        heatmaps, features = self._backbone(self._crops(items, view), self._flip_mask(items, view))
        coords, scores = self.codec.decode(heatmaps, self.bundle.manifest.pose.decode)
        vp = self.with_pair_split(
            BackbonePass(view, heatmaps, features, coords, scores, {}), self.pair_split
        )
        image = heatmap_to_image(vp.coords, centers, scales, hw)
        first = transform_points(image, affine_matrices(p.centers[sel], p.scales[sel], None, hw))
        k = self._head_replaces
        out_coords, out_scores = bp.coords.copy(), bp.scores.copy()
        out_coords[sel[:, None], k] = first[:, k]
        out_scores[sel[:, None], k] = vp.scores[:, k]
        return replace(bp, coords=out_coords, scores=out_scores)

    def with_pair_split(self, bp: BackbonePass, split: PairSplit | None) -> BackbonePass:
        """`bp` with `split` applied to its decoded keypoints (models.pairs; None or no pairs:
        `bp` itself): what `backbone_pass` does with the pipeline's own settings, for passes
        decoded without them (tuning and benchmarks)."""
        if split is None or not split.pairs:
            return bp
        coords, scores, _ = split_pairs(
            bp.heatmaps, bp.coords, bp.scores, split, self.codec, self.bundle.manifest.pose.decode
        )
        return replace(bp, coords=coords, scores=scores)

    def finish(
        self,
        items: Sequence[tuple[npt.NDArray[np.uint8], PoseOptions]],
        bp: BackbonePass,
        scio_config: ScioSearchConfig | None = None,
        all_losses: bool = False,
    ) -> list[PoseResult]:
        """SCIO (with `scio_config`, default the bundle's), back-projection and person scoring.
        Several calls on one pass compare SCIO settings on identical backbone outputs.
        `all_losses`: Γ's loss for every refined keypoint (evaluation reports); by default Γ
        runs only where its loss changes the result, and elsewhere the losses are None."""
        timings = dict(bp.timings)
        t = time.perf_counter()
        search = self._refine(
            items,
            bp.persons,
            bp.heatmaps,
            bp.features,
            bp.coords,
            bp.scores,
            scio_config,
            all_losses,
        )
        coords = bp.coords
        if search is not None:
            coords = search.coords
            timings["refine_ms"] = _ms(t)

        t = time.perf_counter()
        p = bp.persons
        kp_img = heatmap_to_image(coords, p.centers, p.scales, self.codec.heatmap_hw)
        results = self._assemble(items, p, kp_img, bp.scores, search)
        timings["postprocess_ms"] = _ms(t)
        for r in results:
            r.timings_ms = dict(timings)
        return results

    # -- stages -------------------------------------------------------------------------------

    def _persons(self, items: Sequence[tuple[npt.NDArray[np.uint8], PoseOptions]]) -> _Persons:
        per_item: list[tuple[F64, F64]] = [(np.zeros((0, 4)), np.zeros(0)) for _ in items]
        need = [i for i, (_, o) in enumerate(items) if o.boxes is None]
        if need:
            if self.detector is None:
                raise RuntimeError("this bundle has no detector: pass person boxes")
            default = self.detector.info.score_threshold
            wanted = [default if (t := items[i][1].detector_threshold) is None else t for i in need]
            # one call at the lowest threshold asked for, then each image's own
            found = self.detector([items[i][0] for i in need], min_score=min(wanted))
            for i, (b, s), t in zip(need, found, wanted, strict=True):
                keep = s >= t
                per_item[i] = (b[keep], s[keep])
        for i, (_, o) in enumerate(items):
            if o.boxes is not None:
                b = np.asarray(o.boxes, dtype=np.float64).reshape(-1, 4)
                s = (
                    np.ones(len(b))
                    if o.box_scores is None
                    else np.asarray(o.box_scores, dtype=np.float64).reshape(-1)
                )
                w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
                # the official code crops a cleaned GT box of width or height 0 too (the crop
                # takes its size from the other side); with both 0 there is no crop
                official_ok = (w >= 0) & (h >= 0) & ((w > 0) | (h > 0))
                ok = official_ok if o.official else (w > 0) & (h > 0)
                per_item[i] = (b[ok], s[ok])
        boxes = np.concatenate([b for b, _ in per_item]) if items else np.zeros((0, 4))
        scores = np.concatenate([s for _, s in per_item]) if items else np.zeros(0)
        item = (
            np.concatenate([np.full(len(b), i) for i, (b, _) in enumerate(per_item)]).astype(
                np.intp
            )
            if items
            else np.zeros(0, np.intp)
        )
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        aspect = self.codec.input_hw[1] / self.codec.input_hw[0]
        centers, scales = box_to_center_scale(xywh, aspect)
        return _Persons(item, boxes, scores, centers, scales)

    def _crops(
        self, items: Sequence[tuple[npt.NDArray[np.uint8], PoseOptions]], p: _Persons
    ) -> npt.NDArray[np.uint8]:
        h, w = self.codec.input_hw
        out = np.zeros((len(p.item), h, w, 3), np.uint8)
        mats = affine_matrices(p.centers, p.scales, None, self.codec.input_hw)
        for i in np.unique(p.item):
            sel = np.flatnonzero(p.item == i)
            out[sel] = warp_affine(items[i][0], mats[sel], self.codec.input_hw)
        return out

    def network_input(
        self, items: Sequence[tuple[npt.NDArray[np.uint8], PoseOptions]]
    ) -> npt.NDArray[np.float32]:
        """The backbone's input for the items' persons as `backbone_pass` makes it (their crops,
        then the mirrored copies of those that run the flip test), without running it: what an
        INT8 copy is calibrated on (training.quantize)."""
        persons = self._persons(items)
        return self._network_input(self._crops(items, persons), self._flip_mask(items, persons))

    def _network_input(
        self, crops: npt.NDArray[np.uint8], flip: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.float32]:
        return with_mirrored(to_network_input(crops, self.norm), flip)

    def _backbone(
        self, crops: npt.NDArray[np.uint8], flip: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Heatmaps (N, K, h, w), flip-averaged where asked, and features (N, C, h, w)."""
        n = len(crops)
        x = self._network_input(crops, flip)
        hms, feats = [], []
        for start in range(0, len(x), self.max_batch):
            out = self.pose.run(image=x[start : start + self.max_batch])
            hms.append(out["heatmaps"])
            feats.append(out["features"])
        if not hms:
            k, (hh, hw) = self.spec.num_keypoints, self.codec.heatmap_hw
            c = self.bundle.manifest.pose.feature_channels
            return np.zeros((0, k, hh, hw), np.float32), np.zeros((0, c, hh, hw), np.float32)
        # one batch (the usual case) is used as ONNX Runtime returned it, without copies
        heat = hms[0] if len(hms) == 1 else np.concatenate(hms)
        features = (feats[0] if len(feats) == 1 else np.concatenate(feats))[:n]
        heatmaps = heat[:n].copy() if flip.any() else heat
        if flip.any():
            heatmaps[flip] = fuse_flip(
                heatmaps[flip],
                heat[n:],
                self.spec.flip_index,
                shift=self.bundle.manifest.pose.flip_shift,
            )
        return heatmaps, features

    def _refine(
        self,
        items: Sequence[tuple[npt.NDArray[np.uint8], PoseOptions]],
        p: _Persons,
        heatmaps: npt.NDArray[np.float32],
        features: npt.NDArray[np.float32],
        coords: F64,
        scores: F64,
        config: ScioSearchConfig | None = None,
        all_losses: bool = False,
    ) -> SearchResult | None:
        """SCIO on the persons of the items that asked for it; None when nothing to do."""
        if self.verifier is None:
            return None
        want = np.array([items[i][1].refine for i in p.item], dtype=bool)
        if not want.any():
            return None
        sel = np.flatnonzero(want)
        all_coords = coords
        if len(sel) < len(want):  # else (the usual case) no copies of the maps
            heatmaps, features, coords, scores = (
                heatmaps[sel], features[sel], coords[sel], scores[sel]
            )  # fmt: skip
        part = refine(
            heatmaps,
            features,
            coords,
            scores,
            self.spec.groups,
            self.verifier,
            self._pixel_settings(config or self.scio_config),
            phi=self.predictor,
            decode=self.bundle.manifest.pose.decode,
            sigma=self.codec.sigma,
            flip_index=self.spec.flip_index,
            diagnostics=False,
            all_losses=all_losses,
            parallel=self._parallel,
        )
        # Back onto all persons: row person indices refer to `sel`.
        if len(sel) < len(want):
            full = all_coords.copy()
            full[sel] = part.coords
            part.coords = full
            part.person = sel[part.person]
        return part

    def _pixel_settings(self, config: ScioSearchConfig) -> ScioSearchConfig:
        """`config` in heatmap pixels, converted once per settings object."""
        cached = self._in_pixels
        if cached is None or cached[0] is not config:
            cached = self._in_pixels = (config, config.in_pixels(self.codec.sigma))
        return cached[1]

    def _assemble(
        self,
        items: Sequence[tuple[npt.NDArray[np.uint8], PoseOptions]],
        p: _Persons,
        kp_img: F64,
        kp_scores: F64,
        search: SearchResult | None = None,
    ) -> list[PoseResult]:
        scores = rescore(p.box_scores, kp_scores)
        confidence = self._person_confidence(items, p, kp_scores)
        # what a minimum reads: the calibrated confidence where there is one
        admit = np.where(np.isnan(confidence), scores, confidence)
        areas = np.prod(p.scales * 200.0, axis=1)
        refinements = self._refinements(search, p)
        results = []
        for i, (image, o) in enumerate(items):
            h, w = image.shape[:2]
            sel = np.flatnonzero(p.item == i)
            if len(sel) and (o.boxes is None or o.oks_nms):
                keep = oks_nms(
                    np.concatenate([kp_img[sel], kp_scores[sel, :, None]], 2),
                    scores[sel],
                    areas[sel],
                    self.spec.sigmas_array,
                    thresh=self.oks_nms if o.oks_nms_threshold is None else o.oks_nms_threshold,
                    official_order=o.official,
                )
                sel = sel[keep]
            floor = o.min_score
            if floor is None:  # the bundle's for the persons its detector found
                floor = self.min_person_score if o.boxes is None else 0.0
            sel = sel[admit[sel] >= floor]
            sel = sel[np.argsort(-scores[sel], kind="stable")]
            if o.max_persons is not None:
                sel = sel[: o.max_persons]
            persons = []
            for j in sel:
                kp = np.empty((self.spec.num_keypoints, 3))
                if o.official:  # the official results are not clipped
                    kp[:, :2] = kp_img[j]
                else:
                    kp[:, 0] = np.clip(kp_img[j, :, 0], 0, w - 1)
                    kp[:, 1] = np.clip(kp_img[j, :, 1], 0, h - 1)
                kp[:, 2] = kp_scores[j]
                persons.append(
                    PersonPose(
                        bbox=p.boxes[j].copy(),
                        bbox_score=float(p.box_scores[j]),
                        score=float(scores[j]),
                        keypoints=kp,
                        refinements=refinements.get(int(j), []),
                        confidence=None if np.isnan(confidence[j]) else float(confidence[j]),
                    )
                )
            # true only where SCIO examined a keypoint of a returned person
            refined = any(person.refinements for person in persons)
            results.append(PoseResult(image_hw=(h, w), persons=persons, refined=refined))
        return results

    def _person_confidence(
        self,
        items: Sequence[tuple[npt.NDArray[np.uint8], PoseOptions]],
        p: _Persons,
        kp_scores: F64,
    ) -> F64:
        """Each person's calibrated P(correct pose), for the persons the bundle's detector found
        where it has a person score model (not under the official protocol); NaN elsewhere."""
        out = np.full(len(p.item), np.nan)
        if self.person_score is None or not len(out):
            return out
        found = np.array([items[i][1].boxes is None and not items[i][1].official for i in p.item])
        if found.any():
            hw = np.array([items[i][0].shape[:2] for i in p.item[found]])
            feats = person_features(p.box_scores[found], kp_scores[found], p.boxes[found], hw)
            out[found] = self.person_score(feats)
        return out

    def _refinements(
        self, search: SearchResult | None, p: _Persons
    ) -> dict[int, list[RefinedKeypoint]]:
        """Each person's examined keypoints (person index -> list), built in one pass."""
        if search is None or not len(search.person):
            return {}
        rows = len(search.person)
        px_per_hm = p.scales[search.person, 0] * 200.0 / self.codec.heatmap_hw[1]
        moved = (np.linalg.norm(search.end - search.backbone, axis=1) * px_per_hm).tolist()
        before, after, confidence = (
            _finite_or_none(v, rows)
            for v in (search.loss_before, search.loss_after, search.confidence)
        )
        names = [g.name for g in self.spec.groups]
        out: dict[int, list[RefinedKeypoint]] = {}
        for r, (j, k, g, ok) in enumerate(
            zip(
                search.person.tolist(),
                search.keypoint.tolist(),
                search.group.tolist(),
                search.accepted.tolist(),
                strict=True,
            )
        ):
            out.setdefault(j, []).append(
                RefinedKeypoint(
                    keypoint=k,
                    group=names[g],
                    displacement_px=moved[r],
                    loss_before=before[r],
                    loss_after=after[r],
                    accepted=bool(ok),
                    confidence=confidence[r],
                )
            )
        return out


def _finite_or_none(values: F64, rows: int) -> list[float | None]:
    """values[:rows] as floats, None where not finite or missing (an array shorter than rows)."""
    v = np.asarray(values, dtype=np.float64)[:rows].tolist()
    return [x if math.isfinite(x) else None for x in v] + [None] * (rows - len(v))


def backbone_precision(bundle: Bundle, device: str, precision: str) -> str:
    """ "int8" or "fp32": which backbone graph a pipeline runs (PosePipeline's `precision`).
    `auto` takes the bundle's INT8 copy only where the backbone runs on the CPU and that CPU
    has 8-bit dot-product instructions (`service.runtime.cpu_has_int8_dot`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    has_int8 = bundle.path(POSE_INT8) is not None
    if precision == "int8" and not has_int8:
        raise BundleError(
            f"{bundle.root} has no INT8 backbone (pose_int8): add one with "
            "`scio-pose rebundle --int8 DATA`, or use precision fp32"
        )
    if precision == "auto":
        return "int8" if has_int8 and runs_on_cpu(device) and cpu_has_int8_dot() else "fp32"
    if precision == "int8" and not cpu_has_int8_dot():
        log.warning(
            "precision int8 on a CPU without 8-bit dot-product instructions (VNNI, AMX, Arm "
            "dot product): slower than there, and its sums may saturate; check accuracy"
        )
    return precision


def _req(path: Path | None) -> Path:
    assert path is not None, "load_bundle guarantees the pose model"
    return path


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def load_estimator(settings: Any) -> PosePipeline:
    """The service's estimator factory: the bundle, device and threads from the settings."""
    return PosePipeline.from_path(
        settings.bundle,
        device=getattr(settings, "device", "auto"),
        intra_op_threads=getattr(settings, "intra_op_threads", None),
        precision=getattr(settings, "precision", "auto"),
    )
