"""Training configuration: frozen dataclasses, named presets, and TOML files over them.

A config file is TOML whose keys are the dataclass fields; it may start from a preset:

    preset = "hrnet-w32-coco"
    epochs = 100
    [data]
    root = "/data/coco"

Unknown keys are errors, so a typo never silently trains the wrong thing. TOML has no null:
`false` switches an optional table off (`synthetic = false` to train on files from a preset
that generates synthetic data).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# The score the NMS inside an exported person detector keeps boxes down to (`train detector
# --export-conf`, `convert --detector-pt`): bundle.json's `detector.score_floor`, the lowest
# `detector_threshold` a request can use. ultralytics' own export default is 0.25.
DETECTOR_SCORE_FLOOR = 0.05


@dataclass(frozen=True)
class AugmentConfig:
    scale_factor: float = 0.35  # sf: scale *= clip(N(0,1)·sf + 1, 1 - sf, 1 + sf)
    rotation_factor: float = 45.0  # rf: rotation = clip(N(0,1)·rf, -2rf, 2rf) degrees
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8  # need more labelled joints than this to try a half-body crop


@dataclass(frozen=True)
class SyntheticData:
    """Data that `scio-pose synth` generates on first use (deterministic per seed)."""

    train_images: int = 4000
    val_images: int = 400
    seed: int = 1  # the validation set uses seed + 1000, so the two never share images
    size: tuple[int, int] = (256, 256)  # (w, h), as the synth command takes it
    persons: tuple[int, int] = (1, 4)


@dataclass(frozen=True)
class DataConfig:
    spec: str = "coco17"
    # COCO-format data: annotation files and image folders, relative to `root`.
    root: str = ""
    train_ann: str = ""
    train_images: str = ""
    val_ann: str = ""
    val_images: str = ""
    # Or generate it: when set, the paths above are ignored.
    synthetic: SyntheticData | None = None


@dataclass(frozen=True)
class BackboneTrainConfig:
    arch: str = "hrnet_small"  # a name from models.zoo.VARIANTS
    input_hw: tuple[int, int] = (128, 96)
    sigma: float | None = None  # None: 2 at 64x48 heatmaps, 3 at 96x72, else h/32
    unbiased_targets: bool = False  # True: Gaussians at the sub-pixel joint position
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    epochs: int = 210
    batch_size: int = 32  # per process
    lr: float = 1e-3
    lr_steps: tuple[int, ...] = (170, 200)  # epochs where the learning rate drops
    lr_factor: float = 0.1
    workers: int = 4  # data-loader processes per training process
    seed: int = 0
    init_weights: str = ""  # an official or MMPose checkpoint to start from
    val_every: int = 1  # reports (epochs, or report_every samples) between validations
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on the CPU)
    torch_threads: int = 0  # intra-op threads per process; 0 = torch's default
    # The schedule in samples (person crops, summed over processes). 0: `epochs` passes over
    # the training persons, with `lr_steps` in epochs. Otherwise the run is `train_samples`
    # long and the learning rate drops by `lr_factor` at each fraction in `lr_drops`.
    train_samples: int = 0
    lr_drops: tuple[float, ...] = (0.8, 0.95)
    warmup_samples: int = 0  # linear warm-up of the learning rate
    report_every: int = 0  # samples between log rows and validations; 0: one epoch
    # bfloat16 autocast on the CPU: only where it has native bf16 (avx512_bf16 or AMX) and only
    # when asked; elsewhere it is emulated and slower.
    cpu_bf16: bool = False
    # The model's weights and the input batches in channels-last (NHWC) memory, the layout
    # oneDNN's fast convolutions use on CPUs (measured in benchmarks/results/train_throughput_*).
    channels_last: bool = False
    # An auxiliary training loss: a separate head on the backbone's features predicts, for
    # every skeleton edge that belongs to one side (shin, thigh, forearm, ...), a map of the
    # segment between its two keypoints, weighted this much against the keypoint loss. The
    # head is dropped from the trained model (it never reaches the bundle); its purpose is
    # features that know which side a limb is on, so that left and right ankles do not share
    # one map (benchmarks/results/mirror_pairs.md). 0: off. Measured at 1 over 420k samples
    # (README, "An auxiliary limb loss"): the sides part, but validation AP 33.8 against 38.6.
    limb_loss_weight: float = 0.0
    # An exponential moving average of the weights and BatchNorm statistics, updated after every
    # optimizer step with decay min(ema_decay, (1 + step) / (10 + step)); each validation scores
    # it beside the trained weights (`val_ema_*` in log.jsonl), and a finished run writes it as
    # `final.pt` (the trained weights as `final_raw.pt`). 0: off, in every preset: at 0.999 over
    # cpu-testbed's 300k-sample step schedule it led before the drop, ended level in validation
    # and 0.3-0.6 AP lower held out (README, "Stop 42: a moving average of the weights").
    ema_decay: float = 0.0


_COCO = DataConfig(
    spec="coco17",
    root="data/coco",
    train_ann="annotations/person_keypoints_train2017.json",
    train_images="images/train2017",
    val_ann="annotations/person_keypoints_val2017.json",
    val_images="images/val2017",
)
_CROWDPOSE = DataConfig(
    spec="crowdpose14",
    root="data/crowdpose",
    train_ann="json/crowdpose_trainval.json",
    train_images="images",
    val_ann="json/crowdpose_test.json",
    val_images="images",
)
_HRNET_AUG = AugmentConfig(scale_factor=0.35, rotation_factor=45.0, half_body_prob=0.3)
_RESNET_AUG = AugmentConfig(scale_factor=0.3, rotation_factor=40.0, half_body_prob=0.0)

# The paper's settings (Adam, lr 1e-3, 210 epochs, drops at 170 and 200) for the full presets;
# cpu-small is sized to train on two CPU cores in under 45 minutes.
PRESETS: dict[str, BackboneTrainConfig] = {
    "cpu-small": BackboneTrainConfig(
        arch="hrnet_small",
        input_hw=(128, 96),
        sigma=1.5,
        # Sub-pixel targets: at 32x24 heatmaps integer centres cost up to 2 input pixels, and the
        # SCIO networks see sub-pixel Gaussians anyway.
        unbiased_targets=True,
        data=DataConfig(spec="coco17", synthetic=SyntheticData()),
        augment=AugmentConfig(scale_factor=0.3, rotation_factor=30.0, half_body_prob=0.2),
        epochs=14,  # about 2.7 min per epoch on two quiet cores: within the 45 minutes
        batch_size=32,
        lr=2e-3,
        lr_steps=(10, 13),
        # One compute thread and one loader process keep two cores busy; two OpenMP threads
        # next to a loader oversubscribe them, and spin-waiting then costs 5-20x.
        workers=1,
        torch_threads=1,
    ),
    # The SCIO testbed (issue 12): 64x48 heatmaps (the paper's resolution) from a 128x96 input
    # through one stride-2 deconvolution, trained on a pool of 30,000 synthetic images (about
    # 75,000 persons, so the run sees each person about twice rather than 14 times), the
    # schedule in samples. hrnet_small at 256x192 gives the same 64x48 heatmaps at 3x the cost
    # per sample (13.5 against 40 samples/s on two cores); in 15 min of training each
    # (benchmarks/results/testbed_equal_wall_time.md) it reached PCK 0.284 / AP 0.2 against
    # 0.426 / 4.7 here, the two being alike at equal samples.
    "cpu-testbed": BackboneTrainConfig(
        arch="hrnet_small_up",
        input_hw=(128, 96),
        sigma=2.0,
        unbiased_targets=True,
        data=DataConfig(spec="coco17", synthetic=SyntheticData(train_images=30000, val_images=400)),
        augment=AugmentConfig(scale_factor=0.3, rotation_factor=30.0, half_body_prob=0.2),
        train_samples=160_000,
        lr_drops=(0.75, 0.92),
        warmup_samples=3_000,
        report_every=20_000,
        batch_size=32,
        lr=2e-3,
        # Measured (benchmarks/results/train_throughput_cpu-testbed.md): on two cores, two
        # compute threads beside one loader process train fastest (49 samples/s, against 36-40
        # for 1+1, 2+0 and 1+2).
        workers=1,
        torch_threads=2,
        # Channels-last memory: the same fp32 arithmetic, 1.22x the samples/s with these two
        # threads on a 2-core Intel Xeon with AVX-512 (80 -> 98; train_throughput_cpu-testbed_amx
        # .md; with one thread, as beside the 3-hour build's detector, 70 against 72: no gain);
        # not measured on the AMD EPYC machines of earlier stops (train_throughput.py measures
        # both layouts on any machine). bf16 autocast, 1.35x faster again on that machine's
        # AMX, ended 0.7 / 1.6 AP lower at equal samples with two seeds
        # (cpu_bf16_equal_samples.md): off here. At 300k samples (stop 43, bf16_300k_*.md) it
        # was not lower once the build's pair split was chosen for it, and with one thread
        # 1.67x faster (train_throughput_cpu-testbed_intel_stop43_1thread.md), so the 3-hour
        # build turns it on (`train backbone --cpu-bf16`; scripts/build-demo-bundle).
        channels_last=True,
    ),
    "hrnet-w32-coco": BackboneTrainConfig(
        arch="hrnet_w32", input_hw=(256, 192), data=_COCO, augment=_HRNET_AUG, batch_size=32
    ),
    "hrnet-w48-coco": BackboneTrainConfig(
        arch="hrnet_w48", input_hw=(384, 288), data=_COCO, augment=_HRNET_AUG, batch_size=24
    ),
    "resnet152-coco": BackboneTrainConfig(
        arch="pose_resnet_152", input_hw=(384, 288), data=_COCO, augment=_RESNET_AUG
    ),
    "hrnet-w32-crowdpose": BackboneTrainConfig(
        arch="hrnet_w32", input_hw=(256, 192), data=_CROWDPOSE, augment=_HRNET_AUG
    ),
    "hrnet-w48-crowdpose": BackboneTrainConfig(
        arch="hrnet_w48", input_hw=(384, 288), data=_CROWDPOSE, augment=_HRNET_AUG, batch_size=24
    ),
    "resnet152-crowdpose": BackboneTrainConfig(
        arch="pose_resnet_152", input_hw=(384, 288), data=_CROWDPOSE, augment=_RESNET_AUG
    ),
}


@dataclass(frozen=True)
class ScioTrainConfig:
    # Narrow, with the per-candidate head at half resolution: on two CPU cores a training step
    # costs 0.18 s (Φ) + 0.36 s (Γ) for 32 persons, against 0.52 + 0.85 s at widths
    # (16, 24, 32, 48) / (8, 12, 16, 24) with a full-resolution head, and the search is cheaper.
    context_widths: tuple[int, ...] = (8, 12, 16, 24)
    head_widths: tuple[int, ...] = (4, 8, 8, 12)
    context_blocks: int = 1
    head_start_level: int = 1  # 1: Γ/Φ heads at half resolution (see models/scio_nets.py)
    # 1: Γ/Φ contexts pool their inputs to half resolution first (models/scio_nets.py)
    context_start_level: int = 0
    context_stem: str = "pool"  # "strided": see models/scio_nets.py
    gamma_feature_dropout: float = 0.3  # P(Γ sees no f for a sample), so it must use D
    phi_feature_dropout: float = 0.0
    passes: int = 2  # augmented passes over the training persons for the cached backbone outputs
    val_persons: int = 1500  # at most this many validation persons for the sensitivity report
    epochs: int = 6
    batch_size: int = 32  # persons per step (each brings all its groups)
    lr: float = 1e-3
    rank_weight: float = 1.0  # λ
    rank_margin: float = 0.1  # m: wanted loss gap at |δ| = 4 px (L2 norm units)
    # Listwise term: the search's own decision (argmin over a lattice around an estimate),
    # trained as a softmax over -s/τ against a target peaked at the candidates nearest the truth.
    listwise_weight: float = 0.0
    listwise_jitter: float = 1.5  # std of the start around the truth, heatmap px
    listwise_tau: float = 0.05  # temperature of the loss differences
    # The search's own decision (issue 13): a listwise term over the candidates the search
    # compares: a lattice of radius `candidates_radius` around where the search starts (Φ's or
    # the backbone's D, half the rows each), `candidates_sample` of its points per step, plus
    # the backbone's D, Φ's D (hard negatives) and the true D, all of a row in one Γ batch;
    # target: the true D (candidates_sigma 0), or softmax(-d²/(2·candidates_sigma²)) of the
    # candidates' distance to it.
    candidates_weight: float = 0.0
    candidates_radius: float = 4.0
    candidates_sample: int = 24
    candidates_sigma: float = 0.0
    candidates_tau: float = 0.05
    # The self-constraint loss Γ is trained for and the search then uses: "l2" (the paper) or
    # "normalized" (both maps scaled to unit norm, so Γ cannot win on amplitude alone).
    score: str = "l2"
    max_train_persons: int = 0  # cap on cached training persons (memory); 0: all
    # Where Φ and Γ train: "" is the backbone run's own training data; a folder with
    # person_keypoints.json and images/ (e.g. `scio-pose synth`'s output) gives them images the
    # backbone never saw, whose errors look like those at inference (the backbone fits its own
    # training images better than new ones).
    data: str = ""
    # Cache the backbone's heatmaps flip-fused, as a bundle with the flip test serves them.
    flip_test: bool = False
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    groups: str = "design"  # "design": DESIGN.md's table; "proximal": A = the torso joint


SCIO_PRESETS: dict[str, ScioTrainConfig] = {
    "cpu-small": ScioTrainConfig(),
    # For the 64x48 testbed backbone: Γ trained on the search's decision with the normalised
    # score, 8 lattice points per row; one pass over at most 8,000 cached persons (64x48 maps
    # and features in float16 take about 0.3 MB a person). At 64x48 a Γ step with the
    # candidates term costs about 2x a plain one (measured: 5.3 against 2.5 s for 32 persons
    # on one busy core; 16 s with 24 lattice points), so two epochs.
    "cpu-testbed": ScioTrainConfig(
        passes=1,
        max_train_persons=8_000,
        epochs=2,
        candidates_weight=1.0,
        candidates_sample=8,
        score="normalized",
    ),
    "paper": ScioTrainConfig(
        context_widths=(32, 48, 64, 96),
        head_widths=(8, 16, 24, 32),
        context_blocks=2,
        head_start_level=0,
        passes=1,
        epochs=40,
        batch_size=36,  # the paper's batch size
    ),
}


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build a (nested) frozen dataclass from plain data, checking names and types."""
    assert is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(where + k for k in unknown)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}") for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if (value is None or value is False) and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name)
    if isinstance(tp, type) and is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value, f"{name}.")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        item = args[0]
        return tuple(_coerce(item, v, name) for v in value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise ValueError(f"{name}: expected {tp.__name__}, got {value!r}")
    return value


def merge(base: T, overrides: dict[str, Any]) -> T:
    """`base` with `overrides` applied; nested tables update nested dataclasses field by field."""
    assert is_dataclass(base)
    assert not isinstance(base, type)
    current = dataclasses.asdict(base)
    _deep_update(current, overrides)
    return from_dict(type(base), current)


def _deep_update(target: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(target.get(k), dict):
            _deep_update(target[k], v)
        else:
            target[k] = v


def load_backbone_config(
    preset: str | None = None, config_file: str | Path | None = None
) -> BackboneTrainConfig:
    base = BackboneTrainConfig()
    overrides: dict[str, Any] = {}
    if config_file is not None:
        try:
            overrides = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"cannot read config {config_file}: {e}") from e
        preset = overrides.pop("preset", preset)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        base = PRESETS[preset]
    return merge(base, overrides)


def to_plain(config: Any) -> dict[str, Any]:
    """JSON/checkpoint-safe dict of a config."""
    d: dict[str, Any] = dataclasses.asdict(config)
    return d


__all__ = [
    "PRESETS",
    "SCIO_PRESETS",
    "BackboneTrainConfig",
    "DataConfig",
    "ScioTrainConfig",
    "SyntheticData",
    "from_dict",
    "load_backbone_config",
    "merge",
    "replace",
    "to_plain",
]
