"""`scio-pose train detector`: a person detector trained with ultralytics, exported to ONNX with
NMS inside (the `detector.onnx` of a bundle), without downloading anything.

Three steps, each usable alone:

1. `coco_to_yolo`: COCO-format person boxes -> an ultralytics YOLO dataset in a work folder
   (images linked, not copied; one `0 cx cy w h` line per non-crowd person; `data.yaml`).
2. `train_detector`: ultralytics training from a model yaml (built from scratch) or from a
   user's `.pt`, then export and check (`export_onnx`, `check_parity`).
3. `detector.json` beside `detector.onnx`: the bundle's `DetectorInfo` plus provenance.

Offline by construction (`ultralytics_offline`). Every network path in ultralytics 8.4 that
training, validation, prediction and ONNX export can reach, and what switches it off:

- import-time DNS probe (`utils.is_online`), PyPI update check (`check_pip_update_available`),
  analytics events (`utils.events`), crash reports (sentry), AutoUpdate: `YOLO_OFFLINE=1` makes
  `ONLINE` False, which each of them checks; `sync=False` in the settings as well.
- pip-installing a missing requirement (`check_requirements`, e.g. onnxslim at export):
  `YOLO_AUTOINSTALL=0`; the `train` extra installs what export needs.
- the settings file in `~/.config/Ultralytics`: `YOLO_CONFIG_DIR` points at the run folder.
- `Arial.ttf` (`check_font`, called by every dataset check, not only by plots, and it sends a
  HEAD request whatever `ONLINE` says): the font is looked up in the config dir first, so a copy
  of matplotlib's DejaVuSans is put there under that name; and `plots=False`.
- `yolo26n.pt` for the AMP check: never on the CPU (`amp=False`); on CUDA `amp="bf16"`, which
  ultralytics runs without the check.
- pretrained weights: a yaml model is built from scratch (`pretrained=False`); `--weights` must
  be a local file (a bare name such as `yolo11n.pt` would be downloaded, so it is refused).
- Platform streaming (`ULTRALYTICS_API_KEY`): removed from the environment; the fresh settings
  hold no key. Integrations (ClearML, Comet, DVC, MLflow, Ray Tune, ...): off in the settings.
- COCO-json metrics (`faster-coco-eval` install): `save_json=False`.
- dataset auto-download: `data.yaml` names local folders only and has no `download:` key.

The environment variables are read when ultralytics is imported, so `ultralytics_offline` must
run first; it checks that they took effect and refuses to go on when ultralytics was imported
online before. Child processes (multi-GPU DDP) inherit them. tests/training/test_detector.py
trains and exports under an audit hook that fails on any name lookup, internet connection or
pip/curl process.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from models.bundle import DetectorInfo
from training.config import DETECTOR_SCORE_FLOOR
from training.data.sources import DatasetPaths

log = logging.getLogger(__name__)

PERSON_CATEGORY = 1  # COCO's person category id
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
ONNX_OPSET = 17
MAX_DET = 300  # rows of the exported output, [1, MAX_DET, 6]

OFFLINE_ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}
OFFLINE_SETTINGS: dict[str, Any] = {
    "sync": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}


class DetectorDataError(ValueError):
    """Input the detector cannot be trained on; the message says which file and why."""


@dataclass(frozen=True)
class DetectorTrainConfig:
    model: str = "yolo11n.yaml"  # a model yaml (packaged name or path), built from scratch
    weights: Path | None = None  # or a local ultralytics .pt to fine-tune (replaces `model`)
    imgsz: int = 256  # square training and export size (a multiple of 32)
    epochs: int = 30
    # Wall-clock budget in seconds (ultralytics' time mode): after the first epoch the number of
    # epochs, and with it the learning-rate schedule, is refitted to the budget; `epochs` is
    # then only the first estimate. None: train `epochs`.
    time_budget_s: float | None = None
    # ultralytics' learning-rate warm-up, in epochs (its default 3): over a large pool trained
    # for few epochs, 3 would be most of the run
    warmup_epochs: float = 3.0
    batch: int = 16
    # ultralytics' optimizer and initial learning rate. "auto" picks both by itself (AdamW at
    # 0.002 for one class and a short run) and ignores `lr0`; continuing a trained detector with
    # "auto" restarts at that rate (stop 24: val mAP50 0.82 -> 0.70 after the first epoch), so a
    # continuation names an optimizer and a smaller lr0.
    optimizer: str = "auto"
    lr0: float | None = None
    # ultralytics trains its last `close_mosaic` epochs without mosaic (and from the first epoch
    # on when the run has no more epochs than that): its default 10 means that a run of up to 10
    # epochs never sees a mosaic. 0 keeps mosaic to the end.
    close_mosaic: int = 10
    workers: int = 2  # data-loader processes (ultralytics uses none on the CPU)
    device: str = "auto"  # "auto" (CUDA if there is one), "cpu", "0", "0,1", ...
    seed: int = 0
    threads: int | None = None  # torch CPU threads for training; None: ultralytics' cores - 1
    score_threshold: float = 0.25  # DetectorInfo.score_threshold, the service's default
    # the floor baked into the exported NMS (DetectorInfo.score_floor); requests can go down to it
    export_conf: float = DETECTOR_SCORE_FLOOR
    # NMS IoU, at export and in the parity check (ultralytics' default 0.7). Higher keeps people
    # whose boxes overlap more (one behind another); the duplicates it also keeps are removed by
    # the pipeline's OKS-NMS on the keypoints.
    iou: float = 0.7
    export_only: bool = False  # no training: validate and export `weights` as they are
    parity_images: int = 4  # validation images compared between ONNX Runtime and predict


@dataclass(frozen=True)
class SplitStats:
    images: int
    persons: int  # boxes written
    crowd_skipped: int
    degenerate_skipped: int  # boxes with no area once clipped to the image
    empty_images: int  # images with an empty label file (background)


@dataclass(frozen=True)
class DetectorResult:
    onnx: Path
    info: DetectorInfo
    metrics: dict[str, float]
    parity: dict[str, float]
    meta: dict[str, Any]  # what detector.json holds


# -- COCO -> YOLO -----------------------------------------------------------------------------


def coco_to_yolo(ann_file: Path, images_dir: Path, root: Path, split: str) -> SplitStats:
    """Write `root/images/<split>/` (links to the images, flat) and `root/labels/<split>/*.txt`.

    Persons are category 1; crowd regions are skipped; every other person box is used, with or
    without keypoints, clipped to the image. Images without a person get an empty label file
    (ultralytics trains on them as background). The split folders are rebuilt from scratch, so
    the result depends only on the inputs.
    """
    records, boxes, crowd = _read_person_boxes(ann_file)
    if not records:
        raise DetectorDataError(f"{ann_file}: no images")
    image_out, label_out = root / "images" / split, root / "labels" / split
    for d in (image_out, label_out):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    (root / "labels" / f"{split}.cache").unlink(missing_ok=True)
    persons = degenerate = empty = 0
    for image_id in sorted(records):
        file_name, w, h = records[image_id]
        src = images_dir / file_name
        _check_image(src, (w, h), ann_file)
        # flat: ultralytics finds a label by swapping the last "/images/" in the image's path
        dst = image_out / Path(file_name).name
        label = label_out / (dst.stem + ".txt")
        if label.exists():
            raise DetectorDataError(f"{ann_file}: two images are named {dst.stem}.*")
        _link(src, dst)
        lines = []
        for xywh in boxes.get(image_id, []):
            row = yolo_row(xywh, (w, h))
            if row is None:
                degenerate += 1
                continue
            lines.append("0 " + " ".join(f"{v:.6f}" for v in row))
        label.write_text("".join(line + "\n" for line in lines))
        persons += len(lines)
        empty += not lines
    stats = SplitStats(len(records), persons, crowd, degenerate, empty)
    log.info("%s split from %s: %s", split, ann_file, stats)
    return stats


def yolo_row(
    bbox_xywh: npt.ArrayLike, image_wh: tuple[int, int]
) -> tuple[float, float, float, float] | None:
    """COCO [x, y, w, h] in pixels -> normalised (cx, cy, w, h), clipped to the image; None when
    nothing of the box is left inside it."""
    x, y, bw, bh = (float(v) for v in np.asarray(bbox_xywh, dtype=np.float64))
    w, h = image_wh
    x1, y1 = min(max(x, 0.0), w), min(max(y, 0.0), h)
    x2, y2 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
    if x2 <= x1 or y2 <= y1:
        return None
    return ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)


def write_data_yaml(root: Path, splits: tuple[str, ...] = ("train", "val")) -> Path:
    """ultralytics' dataset file: local folders only, one class `person` (no `download:` key,
    so nothing can be fetched for it)."""
    lines = [
        "# written by scio-pose train detector",
        f"path: {json.dumps(str(root.resolve()))}",
        *(f"{s}: images/{s}" for s in splits),
        "nc: 1",
        "names:",
        "  0: person",
    ]
    path = root / "data.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _read_person_boxes(
    ann_file: Path,
) -> tuple[dict[int, tuple[str, int, int]], dict[int, list[list[float]]], int]:
    """Images {id: (file_name, w, h)}, non-crowd person boxes per image id, crowd count."""
    if not ann_file.is_file():
        raise DetectorDataError(f"annotation file {ann_file} does not exist")
    try:
        data = json.loads(ann_file.read_text())
        records = {
            int(im["id"]): (str(im["file_name"]), int(im["width"]), int(im["height"]))
            for im in data.get("images", [])
        }
        boxes: dict[int, list[list[float]]] = {}
        crowd = 0
        for a in sorted(data.get("annotations", []), key=lambda a: int(a["id"])):
            if int(a.get("category_id", PERSON_CATEGORY)) != PERSON_CATEGORY:
                continue
            if a.get("iscrowd", 0):
                crowd += 1
                continue
            image_id = int(a["image_id"])
            if image_id not in records:
                raise DetectorDataError(f"{ann_file}: annotation {a['id']} names unknown image")
            boxes.setdefault(image_id, []).append([float(v) for v in a["bbox"]])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, DetectorDataError):
            raise
        raise DetectorDataError(f"cannot read COCO annotations {ann_file}: {e!r}") from e
    for file_name, _, _ in records.values():
        p = Path(file_name)
        if p.is_absolute() or ".." in p.parts or p.suffix.lower() not in IMAGE_SUFFIXES:
            raise DetectorDataError(f"{ann_file}: unusable image file name {file_name!r}")
    return records, boxes, crowd


def _check_image(path: Path, wh: tuple[int, int], ann_file: Path) -> None:
    """The image exists and has the size the annotations say (labels are normalised by it)."""
    try:
        with Image.open(path) as im:
            size = im.size
    except OSError as e:
        raise DetectorDataError(f"image {path} (from {ann_file}) cannot be read: {e}") from e
    if size != wh:
        raise DetectorDataError(f"{path} is {size[0]}x{size[1]}, {ann_file} says {wh[0]}x{wh[1]}")


def _link(src: Path, dst: Path) -> None:
    """A symlink to the image, else a hard link, else (no links on this filesystem) a copy."""
    src = src.resolve()
    try:
        dst.symlink_to(src)
        return
    except OSError:
        pass
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def prepare_dataset(paths: DatasetPaths, root: Path) -> tuple[Path, dict[str, SplitStats]]:
    """Both splits into `root` and their `data.yaml`; errors when there is nothing to learn."""
    if paths.val_ann is None or paths.val_images is None:
        raise DetectorDataError("a validation split is needed (its mAP goes into detector.json)")
    for p in (paths.train_images, paths.val_images):
        if not p.is_dir():
            raise DetectorDataError(f"image folder {p} does not exist")
    stats = {
        "train": coco_to_yolo(paths.train_ann, paths.train_images, root, "train"),
        "val": coco_to_yolo(paths.val_ann, paths.val_images, root, "val"),
    }
    if stats["train"].persons == 0:
        raise DetectorDataError(f"{paths.train_ann}: no person boxes to train on")
    if stats["val"].persons == 0:
        raise DetectorDataError(f"{paths.val_ann}: no person boxes to validate on")
    return write_data_yaml(root), stats


# -- ultralytics, offline ---------------------------------------------------------------------


def ultralytics_offline(config_dir: Path) -> ModuleType:
    """Import ultralytics with every download path switched off (see the module docstring);
    settings live in `config_dir`. Returns the `ultralytics` module."""
    config_dir = config_dir.resolve()
    font = config_dir / "Ultralytics" / "Arial.ttf"
    if "ultralytics" not in sys.modules:
        os.environ.update(OFFLINE_ENV)
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    if os.environ.pop("ULTRALYTICS_API_KEY", None):
        log.info("ULTRALYTICS_API_KEY removed from the environment: nothing is streamed")
    ul = importlib.import_module("ultralytics")
    utils = importlib.import_module("ultralytics.utils")
    checks = importlib.import_module("ultralytics.utils.checks")
    if utils.ONLINE or checks.AUTOINSTALL:
        raise RuntimeError(
            "ultralytics was imported before it could be switched offline; set "
            + " ".join(f"{k}={v}" for k, v in OFFLINE_ENV.items())
            + " in the environment, or call training.detector.ultralytics_offline first"
        )
    utils.SETTINGS.update({k: v for k, v in OFFLINE_SETTINGS.items() if k in utils.SETTINGS})
    _local_font(font)
    if Path(utils.USER_CONFIG_DIR).resolve() != font.parent:
        # imported earlier (offline) with another config dir: register the font with matplotlib,
        # whose font list check_font searches second, instead of writing into that dir
        from matplotlib import font_manager

        font_manager.fontManager.addfont(str(font))
    _restore_pillow_open()
    return ul


def _restore_pillow_open() -> None:
    """ultralytics replaces PIL.Image.open, process-wide, with a wrapper that on an unidentified
    image tries to install pi-heif and retries; our decoders (service.imageio) rely on Pillow's
    own errors for untrusted bytes, so Pillow's function is put back."""
    from PIL import Image

    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is not original:
        Image.open = original


def _local_font(dst: Path) -> None:
    """check_font('Arial.ttf') looks in the config dir before it goes online; any TrueType font
    does for ultralytics' labels, and matplotlib ships DejaVuSans."""
    if dst.exists():
        return
    import matplotlib

    src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def resolve_device(device: str) -> str:
    """'auto' -> '0' when CUDA is available, else 'cpu'; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def check_model_source(cfg: DetectorTrainConfig) -> str:
    """The model argument for ultralytics: a local .pt, or a yaml (path or packaged name).
    Names that ultralytics would fetch (URLs, bare .pt names) are refused."""
    if cfg.weights is not None:
        w = Path(cfg.weights)
        if "://" in str(cfg.weights) or w.suffix != ".pt":
            raise DetectorDataError(f"--weights must be a local .pt file, not {cfg.weights}")
        if not w.is_file():
            raise DetectorDataError(f"--weights {w} does not exist (nothing is downloaded)")
        return str(w.resolve())
    if "://" in cfg.model or Path(cfg.model).suffix not in (".yaml", ".yml"):
        raise DetectorDataError(f"--model must be a model yaml, not {cfg.model!r}")
    return cfg.model


# -- train, export, check ---------------------------------------------------------------------


def train_detector(
    cfg: DetectorTrainConfig, paths: DatasetPaths, out: Path, command: str = ""
) -> DetectorResult:
    """Train, export `out/detector.onnx` (NMS inside, batch 1, static square input) and write
    `out/detector.json`. The ultralytics run is `out/train`; the YOLO dataset `out/data/yolo`."""
    if cfg.imgsz % 32:
        raise DetectorDataError(
            f"imgsz must be a multiple of 32 (the model stride), not {cfg.imgsz}"
        )
    if not 0 < cfg.export_conf <= cfg.score_threshold < 1:
        raise DetectorDataError("need 0 < export_conf <= score_threshold < 1")
    if not 0 < cfg.iou < 1:
        raise DetectorDataError(f"the NMS IoU must be between 0 and 1, not {cfg.iou}")
    if cfg.lr0 is not None and (cfg.optimizer == "auto" or not cfg.lr0 > 0):
        raise DetectorDataError("--lr0 needs a positive value and an --optimizer other than auto")
    if cfg.export_only and cfg.weights is None:
        raise DetectorDataError("--export-only needs --weights (the .pt to export)")
    out = out.resolve()
    model_arg = check_model_source(cfg)
    data_yaml, stats = prepare_dataset(paths, out / "data" / "yolo")
    ul = ultralytics_offline(out / ".ultralytics")
    import torch

    device = resolve_device(cfg.device)
    # ultralytics sets torch's thread count for the whole process; give it back afterwards
    threads_before = torch.get_num_threads()
    try:
        fit = _validate if cfg.export_only else _train
        best, metrics, train_args = fit(ul, model_arg, cfg, data_yaml, out, device)
        onnx_path = export_onnx(ul, best, cfg, out / "export")
        val_images = sorted((out / "data" / "yolo" / "images" / "val").rglob("*.*"))
        parity = check_parity(ul, onnx_path, best, val_images[: cfg.parity_images], cfg)
    finally:
        torch.set_num_threads(threads_before)
    final = out / "detector.onnx"
    shutil.copyfile(onnx_path, final)
    info = DetectorInfo((cfg.imgsz, cfg.imgsz), 0, cfg.score_threshold, score_floor=cfg.export_conf)
    meta = {
        **asdict(info),
        "metrics": metrics,
        "parity": parity,
        "export": {"opset": ONNX_OPSET, "nms": True, "batch": 1, "dynamic": False}
        | {"conf": cfg.export_conf, "iou": cfg.iou, "max_det": MAX_DET},
        "model": Path(model_arg).name,
        "train": train_args,
        "data": {k: asdict(v) for k, v in stats.items()},
        "ultralytics_version": ul.__version__,
        "sha256": hashlib.sha256(final.read_bytes()).hexdigest(),
        "command": command,
    }
    (out / "detector.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("wrote %s and detector.json: %s", final, metrics)
    return DetectorResult(final, info, metrics, parity, meta)


def _train(
    ul: ModuleType,
    model_arg: str,
    cfg: DetectorTrainConfig,
    data_yaml: Path,
    out: Path,
    device: str,
) -> tuple[Path, dict[str, float], dict[str, Any]]:
    """ultralytics training into `out/train`; returns best.pt, its val metrics and the args."""
    import torch

    on_cpu = device == "cpu"
    # never the AMP check (it loads yolo26n.pt): fp32 on the CPU, bfloat16 autocast on CUDA
    amp: bool | str = False if on_cpu or not torch.cuda.is_bf16_supported() else "bf16"
    args: dict[str, Any] = {
        "data": str(data_yaml),
        "epochs": cfg.epochs,
        **({"time": cfg.time_budget_s / 3600} if cfg.time_budget_s else {}),
        "warmup_epochs": cfg.warmup_epochs,
        "optimizer": cfg.optimizer,
        **({"lr0": cfg.lr0} if cfg.lr0 is not None else {}),
        "close_mosaic": cfg.close_mosaic,
        "imgsz": cfg.imgsz,
        "batch": cfg.batch,
        "workers": cfg.workers,
        "device": device,
        "seed": cfg.seed,
        "deterministic": True,
        "pretrained": cfg.weights is not None,  # a yaml model is built from scratch
        "amp": amp,
        "plots": False,
        "save_json": False,
        "project": str(out),
        "name": "train",
        "exist_ok": True,
        "verbose": True,
    }
    model = ul.YOLO(model_arg)
    if on_cpu and cfg.threads:
        # ultralytics trains on cores - 1 torch threads (1 of 2 cores), which suits a shared
        # machine: a second thread mostly waits on the other jobs. More only when asked.
        n = cfg.threads
        model.add_callback("on_train_start", lambda _: torch.set_num_threads(n))
    log.info("training %s with %s", model_arg, args)
    results = model.train(**args)
    best = out / "train" / "weights" / "best.pt"
    return best, _box_metrics(results), {"model": model_arg, **args, "threads": cfg.threads}


def _validate(
    ul: ModuleType,
    model_arg: str,
    cfg: DetectorTrainConfig,
    data_yaml: Path,
    out: Path,
    device: str,
) -> tuple[Path, dict[str, float], dict[str, Any]]:
    """No training (`export_only`): a copy of the weights in `out/train/weights/best.pt`, their
    val metrics and the args, as `_train` returns them."""
    best = out / "train" / "weights" / "best.pt"
    best.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_arg, best)
    args: dict[str, Any] = {
        "data": str(data_yaml),
        "imgsz": cfg.imgsz,
        "batch": cfg.batch,
        "device": device,
        "iou": cfg.iou,
        "plots": False,
        "save_json": False,
        "project": str(out),
        "name": "val",
        "exist_ok": True,
        "verbose": False,
    }
    log.info("validating %s with %s", model_arg, args)
    results = ul.YOLO(str(best)).val(**args)
    return best, _box_metrics(results), {"export_only": True, "weights": model_arg, **args}


def _box_metrics(results: Any) -> dict[str, float]:
    """ultralytics' final validation (best.pt on the val split) as plain numbers."""
    d = dict(getattr(results, "results_dict", None) or {})
    names = {
        "precision": "metrics/precision(B)",
        "recall": "metrics/recall(B)",
        "map50": "metrics/mAP50(B)",
        "map50_95": "metrics/mAP50-95(B)",
    }
    return {k: float(d.get(v, float("nan"))) for k, v in names.items()}


def export_onnx(ul: ModuleType, pt: Path, cfg: DetectorTrainConfig, work: Path) -> Path:
    """ONNX with NMS inside, batch 1, static square input, opset 17; checks the output is
    [1, 300, 6] for one class. Runs on a copy so nothing is written beside `pt`."""
    work.mkdir(parents=True, exist_ok=True)
    copy = work / "detector.pt"
    shutil.copyfile(pt, copy)
    path = Path(
        ul.YOLO(str(copy)).export(
            format="onnx",
            nms=True,
            imgsz=cfg.imgsz,
            batch=1,
            dynamic=False,
            simplify=True,
            opset=ONNX_OPSET,
            conf=cfg.export_conf,
            iou=cfg.iou,
            max_det=MAX_DET,
            device="cpu",
        )
    )
    from service.runtime import OnnxModel

    m = OnnxModel.load(path, device="cpu")
    ins, outs = m.session.get_inputs(), m.session.get_outputs()
    want_in, want_out = [1, 3, cfg.imgsz, cfg.imgsz], [1, MAX_DET, 6]
    if len(ins) != 1 or list(ins[0].shape) != want_in or list(outs[0].shape) != want_out:
        raise RuntimeError(
            f"{path}: input {[i.shape for i in ins]}, output {[o.shape for o in outs]}; "
            f"expected {want_in} -> {want_out} (a one-class detector with NMS inside)"
        )
    return path


def check_parity(
    ul: ModuleType,
    onnx_path: Path,
    pt: Path,
    images: list[Path],
    cfg: DetectorTrainConfig,
    box_tol: float = 0.5,
    score_tol: float = 0.001,
) -> dict[str, float]:
    """ONNX Runtime (through the service's own letterbox and session) against ultralytics'
    predict on the same letterboxed input. Detections clearly above the export threshold on
    either side must have a counterpart on the other within `box_tol` pixels and `score_tol`."""
    from service.detector import letterbox
    from service.runtime import OnnxModel

    ort_model = OnnxModel.load(onnx_path, device="cpu")
    yolo = ul.YOLO(str(pt))
    size = (cfg.imgsz, cfg.imgsz)
    margin = 0.005  # a box this close to the threshold may fall either side of it
    worst_box = worst_score = 0.0
    compared = 0
    for path in images:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        padded, _, _ = letterbox(rgb, size)
        x = padded[None].astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
        det = next(iter(ort_model.run(**{ort_model.input_names[0]: x}).values()))[0]
        det = det[det[:, 4] > cfg.export_conf].astype(np.float64)
        det[:, :4] = det[:, :4].clip(0, cfg.imgsz)  # predict clips boxes to the image
        res = yolo.predict(
            padded[..., ::-1].copy(),  # ultralytics takes numpy images as BGR
            imgsz=cfg.imgsz,
            conf=cfg.export_conf,
            iou=cfg.iou,
            max_det=MAX_DET,
            device="cpu",
            verbose=False,
        )[0]
        ref = np.concatenate(
            [res.boxes.xyxy.cpu().numpy(), res.boxes.conf.cpu().numpy()[:, None]], axis=1
        ).astype(np.float64)
        for a, b in ((ref, det), (det, ref)):
            for row in a[a[:, 4] >= cfg.export_conf + margin]:
                db, ds = _nearest(row, b)
                worst_box, worst_score = max(worst_box, db), max(worst_score, ds)
                compared += 1
    parity = {
        "images": float(len(images)),
        "detections_compared": float(compared),
        "max_box_diff_px": worst_box,
        "max_score_diff": worst_score,
    }
    log.info("ONNX Runtime vs ultralytics predict: %s", parity)
    if worst_box > box_tol or worst_score > score_tol:
        raise RuntimeError(f"{onnx_path} disagrees with ultralytics' predict on {pt}: {parity}")
    return parity


def _nearest(row: npt.NDArray[np.float64], others: npt.NDArray[np.float64]) -> tuple[float, float]:
    """Largest coordinate and score difference to the best-overlapping row of `others`
    (inf when there is none)."""
    if len(others) == 0:
        return float("inf"), float("inf")
    b = others[:, :4]
    ix = np.clip(np.minimum(row[2], b[:, 2]) - np.maximum(row[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(row[3], b[:, 3]) - np.maximum(row[1], b[:, 1]), 0, None)
    inter = ix * iy
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    iou = inter / np.maximum(area(row) + area(b) - inter, 1e-9)
    j = int(np.argmax(iou))
    if iou[j] <= 0:
        return float("inf"), float("inf")
    return float(np.abs(row[:4] - b[j]).max()), float(abs(row[4] - others[j, 4]))
