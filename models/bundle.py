"""The model bundle: a directory with `bundle.json` and the ONNX files it names.

`bundle.json` carries everything the service needs besides the weights: the keypoint spec (with
its SCIO groups), input/heatmap sizes, sigma, normalisation and colour order, the decoder, the
detector's input size, the SCIO search settings, each file's sha256 (checked at load), and the
provenance (what it was trained on, with which commands, and its metrics).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.codec import check_flip_shift
from models.keypoints import KeypointSpec
from models.pairs import PairSplit
from models.postprocess import OKS_THRE, PersonScoreModel

BUNDLE_FORMAT = "scio-pose-bundle"
FORMAT_VERSION = 1

# Roles of the files a bundle may hold. `pose` is required; the rest are optional.
POSE = "pose"  # image -> heatmaps, features
DETECTOR = "detector"  # ultralytics export with NMS inside, output [N, 300, 6]
GAMMA_CONTEXT = "scio_gamma_context"  # Γ's candidate-independent part
GAMMA_HEAD = "scio_gamma_head"  # Γ's per-candidate part
PHI = "scio_phi"  # Φ, whole
# `pose` quantized to INT8 (training.quantize): what the service runs where the backbone runs on
# the CPU, unless told otherwise (service.pipeline's `precision`)
POSE_INT8 = "pose_int8"
# `detector` quantized to INT8 (training.quantize): run with `pose_int8`, where that runs
DETECTOR_INT8 = "detector_int8"
ROLES = (POSE, DETECTOR, GAMMA_CONTEXT, GAMMA_HEAD, PHI, POSE_INT8, DETECTOR_INT8)


class BundleError(ValueError):
    """A bundle that cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class PoseModelInfo:
    arch: str  # variant name, e.g. "hrnet_small"
    input_hw: tuple[int, int]
    heatmap_hw: tuple[int, int]
    sigma: float  # Gaussian of the targets, in heatmap pixels (also G(x) of the SCIO search)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color_order: str  # "RGB" or "BGR", the order the network expects
    feature_channels: int
    decode: str = "argmax"  # "argmax" (official quarter shift) or "dark"
    # heatmap px the mirrored input's heatmaps move right when the flip test averages them
    # (models.codec.flip_back): 1, the official shift, for official weights; the exact
    # (s - 1) / s of models.codec.exact_flip_shift for networks this project trains (0.5 at
    # the stride-2 testbed). bundle.json true / false (earlier bundles) read as 1 / 0.
    flip_shift: float = 1.0
    # The flip test by default: what a request that does not say `flip` gets. Chosen when the
    # bundle is built (the SCIO settings are then fitted on flip-averaged heatmaps).
    flip_test: bool = False
    # Left/right pairs decoded on one spot, split by the joints next to them (models.pairs);
    # None: decoded as they are. Chosen on a tuning split when the bundle is built.
    pair_split: PairSplit | None = None


@dataclass(frozen=True)
class DetectorInfo:
    input_hw: tuple[int, int]  # letterboxed square input of the ONNX model
    person_class: int = 0
    score_threshold: float = 0.25  # the service's default: boxes scoring below it are dropped
    # the lowest score the exported model returns at all (the confidence its built-in NMS keeps;
    # `train detector --export-conf`): a request may lower the threshold down to it. 0: unknown
    score_floor: float = 0.0
    # OKS above which the pipeline keeps only the better-scored of two persons' poses (OKS-NMS):
    # the official code's 0.9 unless the bundle's build chose another for its detector, whose
    # duplicate boxes on one person it removes. `scio-pose evaluate` uses 0.9 (AP's protocol).
    oks_nms: float = OKS_THRE
    # Persons the detector found whose person score (box score × mean keypoint score above 0.2,
    # models.postprocess.rescore; their calibrated confidence where `person_score` gives one) is
    # below this are not answered; a request's `min_score`
    # overrides it, and persons in caller-given boxes are answered whatever their score. Chosen
    # on a tuning split when the bundle is built (benchmarks/pose_answers.py --choose); 0: all.
    min_person_score: float = 0.0
    # A calibrated person score for the persons the detector finds (models.postprocess.
    # PersonScoreModel: the probability of a correct pose), their `confidence`, which
    # `min_person_score` then reads instead of the official score (which still orders them);
    # None: none. Fitted on a tuning split when the bundle is built (benchmarks/person_score.py
    # --choose).
    person_score: PersonScoreModel | None = None
    # With the flip test on by default (`pose.flip_test`), the detector's boxes scoring below
    # this run without it: one crop through the backbone instead of two for the doubtful boxes
    # a low threshold admits. A request's own `flip` applies to every box; 0: every box flips.
    flip_min_score: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_min_score <= 1.0:
            raise ValueError(
                f"the flip test's minimum box score must be in [0, 1], not {self.flip_min_score}"
            )
        if not 0.0 < self.oks_nms <= 1.0:
            raise ValueError(f"the OKS-NMS threshold must be in (0, 1], not {self.oks_nms}")
        if not 0.0 <= self.min_person_score <= 1.0:
            raise ValueError(
                f"the minimum person score must be in [0, 1], not {self.min_person_score}"
            )
        if not 0.0 <= self.score_floor <= self.score_threshold <= 1.0:
            raise ValueError(
                "need 0 <= score_floor <= score_threshold <= 1, not "
                f"{self.score_floor} and {self.score_threshold}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorInfo:
        """From bundle.json's `detector` or a training run's detector.json (extra keys ignored)."""
        return cls(
            input_hw=_pair(d["input_hw"]),
            person_class=int(d.get("person_class", 0)),
            score_threshold=float(d.get("score_threshold", 0.25)),
            # bundle.json's, else the confidence a training run's detector.json exported with
            score_floor=float(d.get("score_floor", (d.get("export") or {}).get("conf", 0.0))),
            oks_nms=float(d.get("oks_nms", OKS_THRE)),
            min_person_score=float(d.get("min_person_score", 0.0)),
            flip_min_score=float(d.get("flip_min_score", 0.0)),
            person_score=(
                PersonScoreModel.from_dict(d["person_score"]) if d.get("person_score") else None
            ),
        )


def _detector_json(info: DetectorInfo) -> dict[str, Any]:
    d = asdict(info)
    d["person_score"] = info.person_score.to_dict() if info.person_score else None
    return d


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the bundle directory
    sha256: str


@dataclass(frozen=True)
class BundleManifest:
    name: str
    version: str
    spec: KeypointSpec
    pose: PoseModelInfo
    files: dict[str, FileEntry]
    detector: DetectorInfo | None = None
    scio: dict[str, Any] | None = None  # search and network settings, read by models.scio_search
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "spec": self.spec.to_dict(),
            "pose": {
                **asdict(self.pose),
                "pair_split": self.pose.pair_split.to_dict() if self.pose.pair_split else None,
            },
            "detector": _detector_json(self.detector) if self.detector else None,
            "scio": self.scio,
            "files": {k: asdict(v) for k, v in self.files.items()},
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BundleManifest:
        if d.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"not a scio-pose bundle (format {d.get('format')!r})")
        if int(d.get("format_version", 0)) != FORMAT_VERSION:
            raise BundleError(
                f"bundle format version {d.get('format_version')} is not supported "
                f"(this scio-pose reads version {FORMAT_VERSION})"
            )
        try:
            p = d["pose"]
            pose = PoseModelInfo(
                arch=str(p["arch"]),
                input_hw=_pair(p["input_hw"]),
                heatmap_hw=_pair(p["heatmap_hw"]),
                sigma=float(p["sigma"]),
                mean=_triple(p["mean"]),
                std=_triple(p["std"]),
                color_order=str(p["color_order"]),
                feature_channels=int(p["feature_channels"]),
                decode=str(p.get("decode", "argmax")),
                flip_shift=_flip_shift(p.get("flip_shift", True)),
                flip_test=bool(p.get("flip_test", False)),
                pair_split=PairSplit.from_dict(p["pair_split"]) if p.get("pair_split") else None,
            )
            det = d.get("detector")
            detector = DetectorInfo.from_dict(det) if det else None
            files = {
                str(k): FileEntry(str(v["path"]), str(v["sha256"])) for k, v in d["files"].items()
            }
            spec = KeypointSpec.from_dict(d["spec"])
            if pose.pair_split is not None:
                pose.pair_split.check(spec)
            return cls(
                name=str(d["name"]),
                version=str(d["version"]),
                spec=spec,
                pose=pose,
                files=files,
                detector=detector,
                scio=d.get("scio"),
                provenance=dict(d.get("provenance") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"bundle.json is malformed: {type(e).__name__}: {e}") from e


def _flip_shift(v: Any) -> float:
    """pose.flip_shift: heatmap px in [0, 1]; true / false, as bundles wrote it before it could
    be a fraction, are the official one pixel / none."""
    try:
        if isinstance(v, (bool, int, float)):
            return check_flip_shift(v)
    except ValueError:
        pass
    raise ValueError(f"pose.flip_shift must be a number in [0, 1] or a boolean, not {v!r}")


def _pair(v: Any) -> tuple[int, int]:
    a, b = v
    return int(a), int(b)


def _triple(v: Any) -> tuple[float, float, float]:
    a, b, c = v
    return float(a), float(b), float(c)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: BundleManifest

    def path(self, role: str) -> Path | None:
        entry = self.manifest.files.get(role)
        return None if entry is None else self.root / entry.path

    @property
    def has_scio(self) -> bool:
        return all(r in self.manifest.files for r in (GAMMA_CONTEXT, GAMMA_HEAD))


def load_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """Read `root/bundle.json` and check that every named file exists and matches its sha256."""
    root = Path(root)
    meta = root / "bundle.json"
    if not meta.is_file():
        raise BundleError(f"{root} is not a bundle: {meta.name} is missing")
    try:
        manifest = BundleManifest.from_json(json.loads(meta.read_text()))
    except json.JSONDecodeError as e:
        raise BundleError(f"{meta} is not valid JSON: {e}") from e
    if POSE not in manifest.files:
        raise BundleError(f"{meta} names no '{POSE}' model")
    for role, entry in manifest.files.items():
        p = (root / entry.path).resolve()
        if root.resolve() not in p.parents:
            raise BundleError(f"{role}: path {entry.path!r} leaves the bundle directory")
        if not p.is_file():
            raise BundleError(f"{role}: {entry.path} is missing from {root}")
        if verify and sha256_file(p) != entry.sha256:
            raise BundleError(f"{role}: {entry.path} does not match its sha256 in bundle.json")
    return Bundle(root, manifest)


def write_bundle(
    root: str | Path,
    manifest: BundleManifest,
    sources: dict[str, Path],
) -> Bundle:
    """Write a bundle atomically: copy `sources` (role -> file), fill in their sha256, write
    bundle.json, then move the finished directory into place. An existing bundle at `root` is
    replaced only once the new one is complete, so a crash never leaves half a bundle."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        files: dict[str, FileEntry] = {}
        if DETECTOR_INT8 in sources and DETECTOR not in sources:
            raise BundleError("an INT8 detector (detector_int8) needs its float detector")
        for role, src in sources.items():
            if role not in ROLES:
                raise BundleError(f"unknown bundle file role {role!r}; roles are {ROLES}")
            name = f"{role}.onnx" if role != POSE else "pose.onnx"
            shutil.copyfile(src, tmp / name)
            files[role] = FileEntry(name, sha256_file(tmp / name))
        final = BundleManifest(
            name=manifest.name,
            version=manifest.version,
            spec=manifest.spec,
            pose=manifest.pose,
            files=files,
            detector=manifest.detector if DETECTOR in files else None,
            scio=manifest.scio,
            provenance=manifest.provenance,
        )
        (tmp / "bundle.json").write_text(json.dumps(final.to_json(), indent=2) + "\n")
        old = None
        if root.exists():
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            root.rename(old)
        tmp.rename(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_bundle(root)
