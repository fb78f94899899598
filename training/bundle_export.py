"""Assemble a model bundle from trained (or converted) models: export each to ONNX, check parity
against torch, and write the bundle with its sha256s and provenance (models.bundle)."""

from __future__ import annotations

import logging
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.bundle import (
    DETECTOR,
    GAMMA_CONTEXT,
    GAMMA_HEAD,
    PHI,
    POSE,
    Bundle,
    BundleManifest,
    DetectorInfo,
    PoseModelInfo,
    write_bundle,
)
from models.keypoints import KeypointSpec, get_spec
from models.pairs import PairSplit
from models.zoo import Backbone
from training.onnx_export import PARITY_RTOL, backbone_parity, export_backbone, worst_abs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScioExport:
    """Trained SCIO networks and their settings, ready to be written into a bundle."""

    gamma_context: Path  # ONNX files, already parity-checked by their exporter
    gamma_head: Path
    phi: Path | None
    settings: dict[str, Any]  # search defaults, prior, network config (models.scio_search)


@dataclass(frozen=True)
class BundleSpec:
    name: str
    version: str
    arch: str  # the backbone variant, e.g. "hrnet_small"
    spec: KeypointSpec
    sigma: float
    decode: str = "argmax"
    flip_test: bool = False  # the flip test by default (a request can still say flip=false)
    # heatmap px the flip test moves the mirrored input's heatmaps (PoseModelInfo.flip_shift):
    # the official 1 for official weights
    flip_shift: float = 1.0
    pair_split: PairSplit | None = None  # collapsed left/right pairs split (models.pairs)
    detector_onnx: Path | None = None
    detector_info: DetectorInfo | None = None
    scio: ScioExport | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    parity_rtol: float = PARITY_RTOL  # ONNX Runtime vs torch, relative to each output's scale


def git_commit() -> str:
    """The commit of the code doing the export, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def build_bundle(out: str | Path, model: Backbone, b: BundleSpec) -> Bundle:
    """Export `model` (and the optional detector and SCIO networks) into a bundle at `out`."""
    cfg = model.config
    if cfg.num_keypoints != b.spec.num_keypoints:
        raise ValueError(
            f"the model has {cfg.num_keypoints} keypoints, spec {b.spec.name} has "
            f"{b.spec.num_keypoints}"
        )
    with tempfile.TemporaryDirectory(prefix="scio-export-") as tmp:
        pose_path = export_backbone(model, Path(tmp) / "pose.onnx")
        parity = backbone_parity(model, pose_path, rtol=b.parity_rtol)
        for output, r in parity.items():
            print(
                f"parity pose.onnx {output}: max |ONNX Runtime - torch| {r['max_abs_diff']:.2e} "
                f"of max |torch| {r['max_abs_reference']:.3g} (relative {r['relative']:.1e})"
            )
        sources: dict[str, Path] = {POSE: pose_path}
        if b.detector_onnx is not None:
            sources[DETECTOR] = b.detector_onnx
        scio_settings = None
        if b.scio is not None:
            sources[GAMMA_CONTEXT] = b.scio.gamma_context
            sources[GAMMA_HEAD] = b.scio.gamma_head
            if b.scio.phi is not None:
                sources[PHI] = b.scio.phi
            scio_settings = b.scio.settings
        h, w = cfg.input_hw
        manifest = BundleManifest(
            name=b.name,
            version=b.version,
            spec=b.spec,
            pose=PoseModelInfo(
                arch=b.arch,
                input_hw=(h, w),
                heatmap_hw=(h // cfg.output_stride, w // cfg.output_stride),
                sigma=b.sigma,
                mean=tuple(cfg.mean),  # type: ignore[arg-type]
                std=tuple(cfg.std),  # type: ignore[arg-type]
                color_order=cfg.color_order,
                feature_channels=model.feature_channels,
                decode=b.decode,
                flip_test=b.flip_test,
                flip_shift=b.flip_shift,
                pair_split=b.pair_split,
            ),
            files={},
            detector=b.detector_info,
            scio=scio_settings,
            provenance={
                **b.provenance,
                "commit": git_commit(),
                "parity_max_abs_diff": {"pose": worst_abs(parity)},
                "parity": {"pose": parity},
            },
        )
        bundle = write_bundle(out, manifest, sources)
    log.info("wrote bundle %s to %s", b.name, out)
    return bundle


__all__ = ["BundleSpec", "ScioExport", "build_bundle", "get_spec", "git_commit"]
