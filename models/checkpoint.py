"""Loading weights from the files people have, and our own self-describing checkpoint format.

`load_weights(model, path)` accepts, for the backbones of `models.zoo`:

- official HRNet / SimpleBaseline files: a flat state dict (`pose_hrnet_w32_256x192.pth`);
- DataParallel dicts, every key prefixed `module.` (the official `checkpoint.pth`);
- dicts wrapped under `state_dict` (mmengine/mmcv files, the official `checkpoint.pth`, ours);
- MMPose 1.x names (`backbone.*`, `head.final_layer.*`, `head.deconv_layers.N.*`, and
  `data_preprocessor.*`, which is dropped) and MMPose 0.x names (`keypoint_head.*`).

Files are read with `weights_only=True`. Missing `num_batches_tracked` buffers (older
SimpleBaseline files lack them) are filled with 0 here, explicitly, rather than left to torch's
`_metadata` version check; any other mismatch raises `CheckpointError` naming the keys, before
`load_state_dict(strict=True)` runs.

Our own format (`save_checkpoint`) stores the architecture name and config as plain data next to
the weights, so `load_model` / `load_scio_net` rebuild the network from the file alone:
`{"format": "scio-pose-checkpoint", "version": 1, "arch", "config", "state_dict", "meta"}`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import torch
from torch import Tensor, nn

from models.hrnet import HRNetConfig
from models.pose_resnet import PoseResNetConfig
from models.scio_nets import ScioNet, ScioNetConfig
from models.zoo import Backbone, BackboneConfig, build_backbone

log = logging.getLogger(__name__)
C = TypeVar("C")

FORMAT = "scio-pose-checkpoint"
FORMAT_VERSION = 1
ARCHS: dict[str, type[BackboneConfig] | type[ScioNetConfig]] = {
    "hrnet": HRNetConfig,
    "pose_resnet": PoseResNetConfig,
    "scio_net": ScioNetConfig,
}
_SHOW = 5  # keys named per kind of mismatch in an error message
_MMPOSE_HEAD_PREFIXES = ("head.", "keypoint_head.")  # 1.x, 0.x


class CheckpointError(ValueError):
    """A file that is not a checkpoint, or one whose weights do not fit the model."""


@dataclass(frozen=True)
class Checkpoint:
    arch: str
    config: BackboneConfig | ScioNetConfig
    state_dict: dict[str, Tensor]
    meta: dict[str, Any]


# --- reading weights from any supported naming ------------------------------------------------


def _torch_load(path: str | os.PathLike[str]) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: cannot be read with weights_only=True (it pickles more than tensors and "
            f"plain data). Re-save just its state dict: torch.save(sd, path). Detail: {e}"
        ) from e


def normalize_state_dict(obj: Mapping[str, object]) -> tuple[dict[str, Tensor], str]:
    """Unwrap and rename a loaded object to our key names. Returns (state dict, naming)."""
    inner = obj.get("state_dict")
    wrapped = isinstance(inner, Mapping)
    if isinstance(inner, Mapping):
        obj = inner
    sd: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"not a state dict: {key!r} holds a {type(value).__name__}")
        sd[str(key)] = value
    naming = "wrapped" if wrapped else "flat"
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        naming += "+dataparallel"
    if any(k.startswith("backbone.") for k in sd):
        naming += (
            "+mmpose-0.x" if any(k.startswith("keypoint_head.") for k in sd) else "+mmpose-1.x"
        )
        sd = {_mmpose_key(k): v for k, v in sd.items() if not k.startswith("data_preprocessor.")}
    return sd, naming


def _mmpose_key(key: str) -> str:
    """`backbone.X` -> X; `head.final_layer.*` / `keypoint_head.deconv_layers.N.*` -> ours."""
    if key.startswith("backbone."):
        return key.removeprefix("backbone.")
    for prefix in _MMPOSE_HEAD_PREFIXES:
        if key.startswith(prefix):
            return key.removeprefix(prefix)
    return key  # left as it is, so the mismatch check names it


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    sd, naming = normalize_state_dict(obj)
    log.info("read %d tensors from %s (%s)", len(sd), path, naming)
    return sd


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else "")


def check_state_dict(
    model: nn.Module, sd: Mapping[str, Tensor], origin: str = "weights"
) -> dict[str, Tensor]:
    """Return sd with missing `num_batches_tracked` filled in; raise on any other mismatch.

    `origin` names where the weights came from in the error message (e.g. the file).
    """
    expected = model.state_dict()
    sd = dict(sd)
    filled = [k for k in expected if k.endswith("num_batches_tracked") and k not in sd]
    for key in filled:
        sd[key] = torch.zeros((), dtype=torch.long)  # unknown count; only momentum=None uses it
    if filled:
        log.info("filled %d missing num_batches_tracked buffers with 0", len(filled))
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} (file {tuple(sd[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    problems = [
        f"{len(found)} {kind}: {_names(found)}"
        for kind, found in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", wrong),
        )
        if found
    ]
    if problems:
        raise CheckpointError(f"{origin} do not fit {type(model).__name__}: " + "; ".join(problems))
    return sd


def load_weights(model: nn.Module, source: str | os.PathLike[str] | Mapping[str, object]) -> str:
    """Load a file (any supported naming) or an already loaded dict into `model`, strictly.
    Returns the naming found (`normalize_state_dict`: e.g. "wrapped+mmpose-1.x", "flat")."""
    if isinstance(source, Mapping):
        sd, naming = normalize_state_dict(source)
        origin = "weights"
    else:
        obj = _torch_load(source)
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a dict of tensors")
        sd, naming = normalize_state_dict(obj)
        log.info("read %d tensors from %s (%s)", len(sd), source, naming)
        origin = f"weights in {source}"
    model.load_state_dict(check_state_dict(model, sd, origin), strict=True)
    return naming


# --- our own format -----------------------------------------------------------------------


def config_to_dict(config: BackboneConfig | ScioNetConfig) -> dict[str, Any]:
    """Plain dicts, lists and primitives only, so the file loads with weights_only=True."""
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Inverse of `config_to_dict`: lists back to tuples, nested dicts back to dataclasses.

    Fields missing from `data` take their defaults (files from before a field was added);
    unknown fields are an error (a file from a newer version, or another architecture).
    """
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"{cls.__name__} has no fields {unknown}")
    return cls(**{k: _coerce(hints[k], v) for k, v in data.items()})


def _coerce(tp: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return config_from_dict(tp, value)
    if get_origin(tp) is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value, strict=True))
    if tp is float:
        return float(value)
    return value


def _arch_of(config: object) -> str:
    for name, cls in ARCHS.items():
        if type(config) is cls:
            return name
    raise TypeError(f"no checkpoint architecture for {type(config).__name__}")


def save_checkpoint(
    path: str | os.PathLike[str],
    model: Backbone | ScioNet,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Write model (config + weights) and `meta` (plain data: epoch, metrics...) atomically."""
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "arch": _arch_of(model.config),
        "config": config_to_dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": _plain(dict(meta or {})),
    }
    atomic_save(payload, Path(path))
    log.info("saved %s checkpoint to %s", payload["arch"], path)


def atomic_save(obj: object, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    obj = _torch_load(path)
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a {FORMAT} file (official and MMPose weights go through "
            "load_weights into a model built from a zoo config)"
        )
    if obj.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {obj.get('version')} is not supported")
    arch = obj.get("arch")
    if arch not in ARCHS:
        raise CheckpointError(f"{path}: unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    if not isinstance(obj.get("config"), Mapping):
        raise CheckpointError(f"{path}: has no model config")
    config = config_from_dict(ARCHS[arch], obj["config"])
    sd, _ = normalize_state_dict(obj)
    return Checkpoint(arch, config, sd, dict(obj.get("meta") or {}))


def load_model(path: str | os.PathLike[str]) -> Backbone:
    """Rebuild a backbone from one of our checkpoints, in eval mode."""
    ckpt = read_checkpoint(path)
    if isinstance(ckpt.config, ScioNetConfig):
        raise CheckpointError(f"{path}: holds a SCIO network; use load_scio_net")
    model = build_backbone(ckpt.config)
    model.load_state_dict(check_state_dict(model, ckpt.state_dict, str(path)), strict=True)
    return model.eval()


def load_scio_net(path: str | os.PathLike[str]) -> ScioNet:
    """Rebuild Φ or Γ from one of our checkpoints, in eval mode."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt.config, ScioNetConfig):
        raise CheckpointError(f"{path}: holds a {ckpt.arch} backbone; use load_model")
    net = ScioNet(ckpt.config)
    net.load_state_dict(check_state_dict(net, ckpt.state_dict, str(path)), strict=True)
    return net.eval()


__all__ = [
    "ARCHS",
    "Checkpoint",
    "CheckpointError",
    "atomic_save",
    "check_state_dict",
    "config_from_dict",
    "config_to_dict",
    "load_model",
    "load_scio_net",
    "load_weights",
    "normalize_state_dict",
    "read_checkpoint",
    "read_state_dict",
    "save_checkpoint",
]
