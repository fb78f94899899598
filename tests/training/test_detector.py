import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from models.bundle import DetectorInfo
from training.data.sources import DatasetPaths
from training.detector import (
    DetectorDataError,
    coco_to_yolo,
    prepare_dataset,
    write_data_yaml,
    yolo_row,
)

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT.parent / "shared" / "data" / "coco-val-mini"


def _coco(path: Path, images: list[tuple[int, str, int, int]], anns: list[dict[str, Any]]) -> Path:
    """A COCO keypoint file; images are (id, file_name, w, h), written as PNGs beside it."""
    (path.parent / "images").mkdir(parents=True, exist_ok=True)
    for _, name, w, h in images:
        (path.parent / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (90, 120, 150)).save(path.parent / "images" / name)
    data = {
        "images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, w, h in images],
        "annotations": anns,
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}],
    }
    path.write_text(json.dumps(data))
    return path


def _person(ann_id: int, image_id: int, bbox: list[float], **kw: Any) -> dict[str, Any]:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": bbox, **kw}


def test_yolo_row_is_the_normalised_centre_and_size_clipped_to_the_image() -> None:
    assert yolo_row([20, 10, 40, 30], (200, 100)) == pytest.approx((0.2, 0.25, 0.2, 0.3))
    # sticks out left and bottom: clipped to x 0..40, y 80..100
    assert yolo_row([-10, 80, 50, 40], (200, 100)) == pytest.approx((0.1, 0.9, 0.2, 0.2))
    assert yolo_row([210, 10, 20, 20], (200, 100)) is None  # wholly outside
    assert yolo_row([5, 5, 0, 20], (200, 100)) is None  # no width


def test_coco_to_yolo_writes_exact_labels_skips_crowds_and_keeps_backgrounds(
    tmp_path: Path,
) -> None:
    kp = [0.0] * 51
    kp[0:3] = [30, 20, 2]
    ann = _coco(
        tmp_path / "src" / "ann.json",
        [
            (7, "a.png", 200, 100),
            (3, "b.png", 64, 48),
            (5, "c.png", 32, 32),
            (9, "s/d.png", 40, 20),
        ],
        [
            _person(11, 7, [20, 10, 40, 30], keypoints=kp, num_keypoints=1, iscrowd=0),
            _person(12, 7, [-10, 80, 50, 40]),  # no keypoints at all: still a person box
            _person(13, 7, [0, 0, 100, 100], iscrowd=1),  # crowd region: skipped
            {"id": 14, "image_id": 7, "category_id": 2, "bbox": [1, 1, 5, 5]},  # not a person
            _person(15, 3, [0, 0, 64, 48], iscrowd=1),  # b.png: a crowd only
            _person(16, 7, [150, 10, 0, 10]),  # degenerate: no width
            _person(17, 9, [0, 0, 40, 20]),  # in a subfolder: linked flat as d.png
        ],
    )
    root = tmp_path / "yolo"
    stats = coco_to_yolo(ann, tmp_path / "src" / "images", root, "train")
    labels = root / "labels" / "train"
    assert (labels / "a.txt").read_text() == (
        "0 0.200000 0.250000 0.200000 0.300000\n0 0.100000 0.900000 0.200000 0.200000\n"
    )
    assert (labels / "b.txt").read_text() == ""  # only a crowd region: background
    assert (labels / "c.txt").read_text() == ""  # no annotations: background
    assert (labels / "d.txt").read_text() == "0 0.500000 0.500000 1.000000 1.000000\n"
    for name in ("a.png", "b.png", "c.png", "s/d.png"):
        linked = root / "images" / "train" / Path(name).name
        assert linked.samefile(tmp_path / "src" / "images" / name)
    assert stats.images == 4
    assert stats.persons == 3
    assert stats.crowd_skipped == 2
    assert stats.degenerate_skipped == 1
    assert stats.empty_images == 2

    before = {p.name: p.read_bytes() for p in labels.iterdir()}
    coco_to_yolo(ann, tmp_path / "src" / "images", root, "train")  # rebuilt: same bytes
    assert {p.name: p.read_bytes() for p in labels.iterdir()} == before

    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load(write_data_yaml(root).read_text())
    assert data["names"] == {0: "person"}
    assert data["nc"] == 1
    assert Path(data["path"]) == root.resolve()
    assert (data["train"], data["val"]) == ("images/train", "images/val")
    assert "download" not in data


def test_bad_input_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    images = tmp_path / "src" / "images"
    with pytest.raises(DetectorDataError, match="does not exist"):
        coco_to_yolo(tmp_path / "missing.json", images, tmp_path / "y", "train")
    nobody = _coco(tmp_path / "src" / "nobody.json", [(1, "a.png", 32, 32)], [])
    paths = DatasetPaths(nobody, images, nobody, images)
    with pytest.raises(DetectorDataError, match="no person boxes"):
        prepare_dataset(paths, tmp_path / "y")
    wrong = _coco(tmp_path / "src" / "wrong.json", [(1, "a.png", 32, 32)], [])
    data = json.loads(wrong.read_text())
    data["images"][0]["width"] = 64  # the file is 32 wide
    wrong.write_text(json.dumps(data))
    with pytest.raises(DetectorDataError, match="is 32x32"):
        coco_to_yolo(wrong, images, tmp_path / "y", "train")


def test_cli_exits_non_zero_on_bad_input(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from service.cli import main

    ann = _coco(
        tmp_path / "src" / "ann.json", [(1, "a.png", 32, 32)], [_person(1, 1, [1, 1, 9, 9])]
    )
    images = tmp_path / "src" / "images"
    common = ["train", "detector", "--out", str(tmp_path / "run"), "--train-ann", str(ann)]
    data = ["--train-images", str(images), "--val-ann", str(ann), "--val-images", str(images)]
    assert main([*common, "--train-images", str(images)]) == 2
    assert "--val-ann" in caplog.text
    assert main([*common, *data, "--weights", "yolo11n.pt"]) == 2  # would be downloaded
    assert "nothing is downloaded" in caplog.text
    missing = ["--val-ann", str(ann), "--val-images", str(tmp_path / "nowhere")]
    assert main([*common, "--train-images", str(images), *missing]) == 2
    assert "nowhere does not exist" in caplog.text
    assert main([*common, *data, "--export-only"]) == 2
    assert "--export-only needs --weights" in caplog.text
    assert main([*common, *data, "--nms-iou", "1.5"]) == 2
    assert "between 0 and 1" in caplog.text
    assert main([*common, *data, "--lr0", "0.001"]) == 2  # "auto" would ignore it
    assert "an --optimizer other than auto" in caplog.text


def test_close_mosaic_must_be_a_count(capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    for bad in ("-1", "two"):
        with pytest.raises(SystemExit) as exc:
            main(["train", "detector", "--out", "x", "--synthetic", "--close-mosaic", bad])
        assert exc.value.code == 2
        assert "--close-mosaic" in capsys.readouterr().err


_NETWORK: list[str] = []
_WATCHING = False
_HOOKED = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Records name lookups, internet connections and installer/downloader processes."""
    if not _WATCHING:
        return
    if event == "socket.getaddrinfo" or (event == "socket.connect" and isinstance(args[1], tuple)):
        _NETWORK.append(f"{event} {args[1] if event == 'socket.connect' else args[0]}")
    elif event == "subprocess.Popen" and any(
        w in str(args[1]) for w in ("pip", "curl", "wget", "uv")
    ):
        _NETWORK.append(f"{event} {args[1]}")


def _run_offline(args: list[str]) -> None:
    """`scio-pose ARGS` succeeds with no name lookup, connection or installer process."""
    from service.cli import main

    global _WATCHING
    _NETWORK.clear()
    _WATCHING = True
    try:
        assert main(args) == 0
    finally:
        _WATCHING = False
    assert _NETWORK == []


@pytest.mark.skipif(not (MINI / "person_keypoints.json").exists(), reason="no coco-val-mini")
def test_train_export_and_serve_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1 epoch on the 20 coco-val-mini images at 128 px, export, and the service's detector on
    the result; no name lookup, connection or pip/curl process is allowed on the way."""
    if importlib.util.find_spec("ultralytics") is None:  # not importorskip: import it offline
        pytest.skip("ultralytics is not installed")
    from service.detector import PersonDetector
    from service.runtime import OnnxModel

    # what ultralytics_offline and ultralytics' import set is undone after the test
    for var in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    global _HOOKED
    if not _HOOKED:  # audit hooks cannot be removed; this one only records while watching
        sys.addaudithook(_audit)
        _HOOKED = True
    out = tmp_path / "run"
    mini = [
        "--train-ann",
        str(MINI / "person_keypoints.json"),
        "--train-images",
        str(MINI / "images"),
    ]
    mini += ["--val-ann", str(MINI / "person_keypoints.json"), "--val-images", str(MINI / "images")]
    args = ["train", "detector", *mini, "--out", str(out), "--epochs", "1", "--imgsz", "128"]
    args += [
        "--batch",
        "8",
        "--device",
        "cpu",
        "--export-conf",
        "0.001",
        "--score-threshold",
        "0.1",
        # a budget shorter than one epoch: ultralytics' time mode stops after the first
        "--time-budget",
        "1",
        "--warmup-epochs",
        "0.5",
        "--optimizer",
        "AdamW",
        "--lr0",
        "0.001",
        # mosaic from the first epoch (ultralytics' default 10 would close it for a 1-epoch run)
        "--close-mosaic",
        "0",
    ]
    _run_offline(args)

    meta = json.loads((out / "detector.json").read_text())
    assert meta["input_hw"] == [128, 128]
    assert meta["person_class"] == 0
    assert meta["score_threshold"] == 0.1
    assert 0 <= meta["metrics"]["map50"] <= 1
    assert 0 <= meta["metrics"]["map50_95"] <= meta["metrics"]["map50"]
    assert meta["parity"]["max_box_diff_px"] <= 0.5
    assert meta["data"]["train"] == {
        "images": 20,
        "persons": 72,  # 73 annotations, one of them a crowd region
        "crowd_skipped": 1,
        "degenerate_skipped": 0,
        "empty_images": 0,
    }
    assert "train detector" in meta["command"]
    assert meta["train"]["time"] == pytest.approx(1 / 3600)  # hours, as ultralytics takes it
    assert meta["train"]["warmup_epochs"] == 0.5
    assert (meta["train"]["optimizer"], meta["train"]["lr0"]) == ("AdamW", 0.001)
    assert meta["train"]["close_mosaic"] == 0
    # what ultralytics itself trained with
    assert "close_mosaic: 0\n" in (out / "train" / "args.yaml").read_text()
    import ultralytics.utils

    if ultralytics.utils.USER_CONFIG_DIR.parent == out / ".ultralytics":
        assert (
            json.loads((ultralytics.utils.USER_CONFIG_DIR / "settings.json").read_text())["sync"]
            is False
        )

    assert meta["export"]["iou"] == 0.7

    # the trained weights exported again with another NMS IoU, without training
    again = tmp_path / "again"
    best = out / "train" / "weights" / "best.pt"
    args = ["train", "detector", *mini, "--out", str(again), "--weights", str(best)]
    args += ["--export-only", "--nms-iou", "0.8", "--imgsz", "128", "--device", "cpu"]
    _run_offline(args)
    meta2 = json.loads((again / "detector.json").read_text())
    assert meta2["export"]["iou"] == 0.8
    assert meta2["train"]["export_only"] is True
    assert meta2["train"]["weights"] == str(best.resolve())
    assert meta2["metrics"]["map50"] == pytest.approx(meta["metrics"]["map50"], abs=0.02)
    assert meta2["parity"]["max_box_diff_px"] <= 0.5
    assert (again / "train" / "weights" / "best.pt").read_bytes() == best.read_bytes()

    model = OnnxModel.load(out / "detector.onnx", device="cpu")
    assert model.session.get_outputs()[0].shape == [1, 300, 6]
    detector = PersonDetector(
        model, DetectorInfo.from_dict(json.loads((out / "detector.json").read_text()))
    )
    image = np.asarray(Image.open(MINI / "images" / "000000000139.jpg").convert("RGB"))
    [(boxes, scores)] = detector([image], min_score=0.001)
    assert boxes.shape == (len(scores), 4)
    assert ((scores >= 0) & (scores <= 1)).all()
    h, w = image.shape[:2]
    assert (boxes >= 0).all()
    assert (boxes[:, [0, 2]] <= w).all()
    assert (boxes[:, [1, 3]] <= h).all()


def test_importing_ultralytics_leaves_pillow_open_alone(tmp_path: Path) -> None:
    """ultralytics wraps PIL.Image.open to install pi-heif on an unidentified image; after
    `ultralytics_offline` an unknown file gets Pillow's own error, nothing is installed."""
    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics is in the train extra")
    import io

    from PIL import Image, UnidentifiedImageError

    from training.detector import ultralytics_offline

    ultralytics_offline(tmp_path / "ul")
    assert Image.open.__module__ == "PIL.Image"
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(b"\x89PNG\r\n\x1a\n not a png"))
