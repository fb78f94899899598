"""`scio-pose predict` on the bundled demo models: records equal `/pose`, bad files are skipped
and reported, outputs appear whole; a synthetic video keeps each figure's track ID, and the 1€
filter calms a still figure's keypoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.cli import main
from tests.service.support import bundle_client

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "bundles" / "demo"
MINI = ROOT.parent / "shared" / "data" / "coco-val-mini" / "images"
pytestmark = pytest.mark.skipif(not (DEMO / "bundle.json").exists(), reason="no bundles/demo")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of synthetic images (with a subfolder), and two COCO photos when present."""
    from training.synth.generate import generate_dataset

    d = tmp_path_factory.mktemp("synth")
    generate_dataset(d, images=4, seed=77, size=(256, 256), persons=(1, 3), progress=False)
    folder = d / "images"
    sub = folder / "more"
    sub.mkdir()
    for p in sorted(MINI.glob("*.jpg"))[:2]:
        shutil.copy(p, sub / p.name)
    return folder


@pytest.fixture(scope="module")
def client() -> Any:
    with bundle_client(DEMO) as c:
        yield c


def _predict(*argv: str | Path) -> int:
    return main(["predict", "--bundle", str(DEMO), "--device", "cpu", "--quiet", *map(str, argv)])


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same_persons(a: list[dict[str, Any]], b: list[dict[str, Any]], tol: float) -> None:
    assert len(a) == len(b)
    for p, q in zip(a, b, strict=True):
        np.testing.assert_allclose(p["keypoints"], q["keypoints"], atol=tol, rtol=0)
        np.testing.assert_allclose(p["bbox"], q["bbox"], atol=tol, rtol=0)
        assert [r["keypoint"] for r in p["refinements"]] == [
            r["keypoint"] for r in q["refinements"]
        ]


@pytest.mark.parametrize(("batch", "tol"), [(1, 0.0), (3, 1e-3)])
def test_records_equal_the_pose_endpoint(
    images: Path, client: Any, tmp_path: Path, batch: int, tol: float
) -> None:
    out = tmp_path / "out.jsonl"
    assert _predict(images, "--out", out, "--batch", batch) == 0
    records = _records(out)
    files = sorted(p for p in images.rglob("*") if p.is_file())
    assert [r["source"] for r in records] == [str(p.relative_to(images)) for p in files]
    found = 0
    for rec, path in zip(records, files, strict=True):
        r = client.post("/pose", content=path.read_bytes(), headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert (rec["width"], rec["height"]) == (answer["width"], answer["height"])
        assert rec["refined"] == answer["refined"]
        assert rec["frame"] == 0
        assert rec["timestamp_s"] is None
        _same_persons(rec["persons"], answer["persons"], tol)
        found += len(rec["persons"])
    assert found >= 3  # the demo detector finds synthetic people


def test_options_reach_the_pipeline(images: Path, tmp_path: Path) -> None:
    plain, off, few = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    assert _predict(images, "--out", plain) == 0
    assert _predict(images, "--out", off, "--no-refine") == 0
    assert _predict(images, "--out", few, "--max-persons", "1") == 0
    assert any(r["refined"] for r in _records(plain))
    assert not any(r["refined"] for r in _records(off))
    assert all(len(r["persons"]) <= 1 for r in _records(few))
    nobody = tmp_path / "d.jsonl"
    assert _predict(images, "--out", nobody, "--detector-threshold", "1") == 0
    assert any(r["persons"] for r in _records(plain))
    assert not any(r["persons"] for r in _records(nobody))  # no box scores 1 or more


def test_boxes_from_replace_the_detector(images: Path, tmp_path: Path) -> None:
    name = sorted(p.name for p in images.glob("*.jpg"))[0]
    boxes = tmp_path / "boxes.json"
    out = tmp_path / "out.jsonl"
    # keyed by the source as reported (the path given) or by the file's own name
    for key in (str(images / name), name):
        boxes.write_text(json.dumps({key: [[10, 10, 120, 240]], "other.jpg": []}))
        assert _predict(images / name, "--boxes-from", boxes, "--out", out) == 0
        (rec,) = _records(out)
        assert len(rec["persons"]) == 1
        assert rec["persons"][0]["bbox"] == [10.0, 10.0, 120.0, 240.0]
    boxes.write_text(json.dumps({name: []}))  # [] means nobody, as /pose?boxes=[]
    assert _predict(images / name, "--boxes-from", boxes, "--out", out) == 0
    assert _records(out)[0]["persons"] == []


def test_bad_files_are_skipped_and_reported(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(images, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image, not looked at")
    out = tmp_path / "out.jsonl"
    assert _predict(folder, "--out", out) == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err
    assert "Traceback" not in err
    sources = [r["source"] for r in _records(out)]
    assert "broken.jpg" not in sources
    assert len(sources) == len([p for p in images.rglob("*") if p.is_file()])


def test_usage_errors_exit_2_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.jsonl"
    assert _predict(tmp_path / "missing.jpg", "--out", out) == 2
    assert "missing.jpg" in capsys.readouterr().err
    bad = tmp_path / "boxes.json"
    bad.write_text("{not json")
    (tmp_path / "a.png").write_bytes(b"")
    assert _predict(tmp_path / "a.png", "--boxes-from", bad, "--out", out) == 2
    assert "not JSON" in capsys.readouterr().err
    assert _predict(tmp_path / "a.png", "--oks-nms", "0", "--out", out) == 2
    assert "--oks-nms must lie in (0, 1]" in capsys.readouterr().err
    assert _predict(tmp_path / "a.png", "--detector-threshold", "2", "--out", out) == 2
    assert "--detector-threshold must lie in [0, 1]" in capsys.readouterr().err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_coco_format_uses_the_file_number(tmp_path: Path) -> None:
    if not MINI.exists():
        pytest.skip("no ../shared/data/coco-val-mini")
    files = sorted(MINI.glob("*.jpg"))[:3]
    out = tmp_path / "results.json"
    assert _predict(*files, "--format", "coco", "--out", out) == 0
    results = json.loads(out.read_text())
    ids = {int(p.stem) for p in files}
    assert {r["image_id"] for r in results} <= ids
    for r in results:
        assert r["category_id"] == 1
        assert len(r["keypoints"]) == 17 * 3
        assert len(r["bbox"]) == 4


def test_render_writes_annotated_images(images: Path, tmp_path: Path) -> None:
    from PIL import Image

    render = tmp_path / "render"
    assert _predict(images, "--render", render, "--out", tmp_path / "o.jsonl") == 0
    for p in images.rglob("*.jpg"):
        drawn = render / p.relative_to(images)
        assert drawn.exists(), drawn
        with Image.open(drawn) as im, Image.open(p) as orig:
            assert im.size == orig.size


# --- video -------------------------------------------------------------------------------------


def _pan_video(path: Path, frames: int, step: int, noise: float = 0.0) -> list[list[list[float]]]:
    """Two synthetic figures in a scene wider than the frame; the camera pans `step` px a frame
    (0: a still camera, with `noise` grey levels of fresh noise per frame). Returns each frame's
    true boxes [x1, y1, x2, y2]."""
    cv2 = pytest.importorskip("cv2")
    from training.synth.generate import SynthConfig, make_sample

    cfg = SynthConfig(width=320, height=192, persons=(2, 2), seed=11)
    sample = make_sample(cfg, 3)
    w = 256
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (w, cfg.height))
    boxes = []
    for t in range(frames):
        x0 = t * step
        crop = sample.image[:, x0 : x0 + w].astype(np.float64)
        if noise:
            crop += rng.normal(0.0, noise, crop.shape)
        writer.write(np.ascontiguousarray(np.clip(crop, 0, 255).astype(np.uint8)[:, :, ::-1]))
        frame_boxes = []
        for lab in sample.labels:
            x, y, bw, bh = lab.bbox
            x1, x2 = max(x - x0, 0.0), min(x + bw - x0, w - 1.0)
            if x2 - x1 > 8:
                frame_boxes.append([x1, y, x2, y + bh])
        boxes.append(frame_boxes)
    writer.release()
    return boxes


def test_video_figures_keep_their_track_ids(tmp_path: Path) -> None:
    video = tmp_path / "pan.mp4"
    boxes = _pan_video(video, frames=16, step=3)
    assert all(len(b) == 2 for b in boxes)
    box_file = tmp_path / "boxes.json"
    # frames 5-7 lose their boxes: a person missed for a few frames keeps their track
    box_file.write_text(
        json.dumps({f"{video}#{t}": ([] if 5 <= t <= 7 else b) for t, b in enumerate(boxes)})
    )
    out, render = tmp_path / "out.jsonl", tmp_path / "render"
    assert _predict(video, "--boxes-from", box_file, "--out", out, "--render", render) == 0
    records = _records(out)
    assert [r["frame"] for r in records] == list(range(16))
    assert records[1]["timestamp_s"] == pytest.approx(0.1)
    tracks: dict[int, list[float]] = {}
    for r in records:
        for p in r["persons"]:
            tracks.setdefault(p["track_id"], []).append(p["bbox"][0])
    assert len(tracks) == 2, tracks  # two figures, two IDs, over the gap too
    for xs in tracks.values():
        assert len(xs) == 13
        assert np.all(np.diff(xs) <= 0.5)  # the camera pans right: figures move left
    cv2 = pytest.importorskip("cv2")
    cap = cv2.VideoCapture(str(render / "pan.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 16
    cap.release()


def test_smoothing_calms_a_still_figure(tmp_path: Path) -> None:
    video = tmp_path / "still.mp4"
    boxes = _pan_video(video, frames=20, step=0, noise=12.0)
    box_file = tmp_path / "boxes.json"
    box_file.write_text(json.dumps({f"{video}#{t}": b for t, b in enumerate(boxes)}))

    def jitter(*extra: str) -> float:
        out = tmp_path / "out.jsonl"
        assert _predict(video, "--boxes-from", box_file, "--out", out, *extra) == 0
        kps = np.array([[p["keypoints"] for p in r["persons"]] for r in _records(out)])
        return float(np.abs(np.diff(kps[:, :, :, :2], axis=0)).mean())

    raw, smooth = jitter(), jitter("--smooth")
    assert raw > 0.05  # the noise does move the keypoints
    assert smooth < 0.6 * raw, (raw, smooth)


def test_an_unreadable_video_is_reported_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = tmp_path / "clip.mp4"
    _pan_video(video, frames=6, step=2)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    out = tmp_path / "out.jsonl"
    assert _predict(video, broken, "--out", out) == 1
    err = capsys.readouterr().err
    assert "broken.mp4" in err
    assert "Traceback" not in err
    records = _records(out)
    assert [r["frame"] for r in records] == list(range(6))
    assert {r["source"] for r in records} == {str(video)}
