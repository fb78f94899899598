"""The synthetic dataset: COCO compatibility, determinism, label/pixel consistency, difficulty."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from models.keypoints import COCO17, CROWDPOSE14
from training.synth.generate import Summary, SynthConfig, generate, make_sample
from training.synth.labels import JOINT_OF, depth_tolerance
from training.synth.render import BACKGROUND
from training.synth.scene import render_scene

ROOT = Path(__file__).resolve().parents[2]
CFG = SynthConfig(width=256, height=256, persons=(1, 6), seed=11)
N_IMAGES = 90  # ~300 persons: enough for the difficulty statistics


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Summary]:
    out = tmp_path_factory.mktemp("synth")
    return out, generate(CFG, out, N_IMAGES, workers=1, progress=False)


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def test_pycocotools_gt_as_predictions_gives_ap_1(dataset: tuple[Path, Summary]) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out, _ = dataset
    gt = COCO(str(out / "person_keypoints.json"))
    anns = _load(out / "person_keypoints.json")["annotations"]
    preds = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in anns
        if a["num_keypoints"] > 0
    ]
    ev = COCOeval(gt, gt.loadRes(preds), "keypoints")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)  # AP
    assert ev.stats[5] == pytest.approx(1.0)  # AR
    # The segmentation decodes to the annotated area.
    for a in anns[:20]:
        assert gt.annToMask(gt.anns[a["id"]]).sum() == a["area"]


def test_coco_records(dataset: tuple[Path, Summary]) -> None:
    out, summary = dataset
    data = _load(out / "person_keypoints.json")
    assert data["categories"] == [COCO17.coco_category()]
    assert len(data["images"]) == N_IMAGES
    assert len(data["annotations"]) == summary.persons > 2 * N_IMAGES
    ids = [a["id"] for a in data["annotations"]]
    assert len(set(ids)) == len(ids)
    for a in data["annotations"]:
        k = np.asarray(a["keypoints"], dtype=float).reshape(17, 3)
        assert set(np.unique(k[:, 2])) <= {0.0, 1.0, 2.0}
        assert np.all(k[k[:, 2] == 0] == 0)  # COCO writes v = 0 as 0, 0, 0
        assert a["num_keypoints"] == int((k[:, 2] > 0).sum())
        x, y, w, h = a["bbox"]
        assert min(x, y) >= 0
        assert x + w <= CFG.width
        assert y + h <= CFG.height
        assert w * h >= a["area"] > 0
        assert a["iscrowd"] == 0
        inside = k[k[:, 2] > 0]
        assert np.all((inside[:, :2] >= -0.5) & (inside[:, :2] < CFG.width - 0.5))
    for im in data["images"][:5]:
        with Image.open(out / "images" / im["file_name"]) as img:
            assert img.size == (im["width"], im["height"]) == (CFG.width, CFG.height)
            assert img.format == "JPEG"


def test_read_by_the_coco_dataset_class(dataset: tuple[Path, Summary]) -> None:
    from training.data.coco import CocoKeypoints, load_detections

    out, summary = dataset
    ds = CocoKeypoints(out / "person_keypoints.json", COCO17)
    assert len(ds.images) == N_IMAGES
    rec = ds.images[1]
    assert (rec.file_name, rec.width, rec.height) == ("00000000.jpg", CFG.width, CFG.height)
    assert (out / "images" / rec.file_name).is_file()
    persons = [p for i in ds.images for p in ds.persons(i)]
    assert len(persons) == summary.persons
    assert all(p.keypoints.shape == (17, 3) and p.bbox_xywh.shape == (4,) for p in persons)
    instances = ds.training_instances()
    assert len(instances) == sum(p.num_keypoints > 0 for p in persons)
    dets = load_detections(out / "detections.json")
    assert set(dets) <= set(ds.images)
    assert len(dets) > 0.8 * N_IMAGES


def test_detections_are_realistic(dataset: tuple[Path, Summary]) -> None:
    from training.synth.detections import iou

    out, _ = dataset
    gt: dict[int, list[np.ndarray]] = {}
    for a in _load(out / "person_keypoints.json")["annotations"]:
        gt.setdefault(a["image_id"], []).append(np.asarray(a["bbox"]))
    dets = _load(out / "detections.json")
    assert all(set(d) == {"image_id", "category_id", "bbox", "score"} for d in dets)
    assert all(0 < d["score"] < 1 and d["bbox"][2] > 0 and d["bbox"][3] > 0 for d in dets)
    # Per detection: best IoU with a person of its image.
    best = np.array(
        [max((iou(np.asarray(d["bbox"]), g) for g in gt.get(d["image_id"], [])), default=0.0)
         for d in dets]
    )  # fmt: skip
    scores = np.array([d["score"] for d in dets])
    found = [
        any(iou(g, np.asarray(d["bbox"])) > 0.5 for d in dets if d["image_id"] == i)
        for i, boxes in gt.items()
        for g in boxes
    ]
    assert 0.6 < np.mean(found) < 0.97  # most people found, some missed
    hits = best > 0.5
    assert np.mean(best[hits] > 0.98) < 0.2  # boxes are jittered
    assert (~hits).sum() > 0.05 * len(dets)  # false positives and partial duplicates
    assert scores[hits].mean() > scores[~hits].mean() + 0.2  # and they score lower


def _tree_digest(out: Path) -> dict[str, str]:
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_deterministic_and_independent_of_workers(tmp_path: Path) -> None:
    cfg = SynthConfig(width=96, height=80, persons=(1, 4), seed=5)
    generate(cfg, tmp_path / "a", 6, workers=1, progress=False)
    generate(cfg, tmp_path / "b", 6, workers=2, progress=False)
    generate(SynthConfig(96, 80, (1, 4), seed=6), tmp_path / "c", 6, workers=1, progress=False)
    a, b, c = (_tree_digest(tmp_path / d) for d in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


FACE = {"nose", "left_eye", "right_eye", "left_ear", "right_ear"}


def test_visible_keypoints_are_not_covered() -> None:
    """v = 2 exactly where the owner map shows the person's own surface at the joint (face points
    must also face the camera); a person drawn alone shows the same colour at its visible
    keypoints, so nothing drawn over it changed those pixels; and where a keypoint is hidden by
    another person or an object, that pixel's colour did change."""
    checked = covered = changed = 0
    for index in range(12):
        s = make_sample(CFG, index)
        c = s.canvas
        for lab in s.labels:
            person = s.scene.persons[lab.person]
            alone = render_scene(s.scene, only={lab.person}, occluders=False)
            for name, (x, y, v) in zip(COCO17.keypoint_names, lab.keypoints, strict=True):
                inside = -0.5 <= x < CFG.width - 0.5 and -0.5 <= y < CFG.height - 0.5
                assert (v > 0) == inside
                if v == 0:
                    continue
                xi, yi = round(x), round(y)
                joint = JOINT_OF[name]
                z = person.body.joints[joint, 2]
                tol = depth_tolerance(person.body.shape, joint, person.scale)
                own = c.owner[yi, xi] == lab.person and c.depth[yi, xi] <= z + tol
                if name not in FACE:
                    assert own == (v == 2), (index, lab.person, name)
                if v == 2:
                    assert own, (index, lab.person, name)
                    # Away from other owners' edges (whose anti-aliasing may blend in a little)
                    # the pixel is exactly the person's own colour.
                    around = c.owner[max(yi - 1, 0) : yi + 2, max(xi - 1, 0) : xi + 2]
                    if person.scale >= 80 and (around == lab.person).all():
                        np.testing.assert_allclose(c.rgb[yi, xi], alone.rgb[yi, xi], atol=1e-4)
                        checked += 1
                elif c.owner[yi, xi] not in (lab.person, BACKGROUND):  # someone or something
                    covered += 1
                    changed += not np.allclose(c.rgb[yi, xi], alone.rgb[yi, xi], atol=1e-3)
    assert checked > 50, checked
    assert covered > 20, covered
    assert changed >= 0.95 * covered, (changed, covered)


def test_distal_keypoints_are_harder(dataset: tuple[Path, Summary]) -> None:
    _, summary = dataset
    assert summary.persons >= 250
    visible = summary.counts[:, 2] / summary.counts.sum(axis=1)
    names = COCO17.keypoint_names

    def rate(part: str) -> float:
        return float(np.mean([visible[names.index(f"{s}_{part}")] for s in ("left", "right")]))

    torso = min(rate("shoulder"), rate("hip"))
    for distal in ("wrist", "ankle", "ear"):
        assert rate(distal) < torso - 0.05, (distal, rate(distal), torso)


def test_crowdpose_spec(tmp_path: Path) -> None:
    from training.data.coco import CocoKeypoints

    cfg = SynthConfig(width=128, height=128, persons=(2, 4), spec="crowdpose14", seed=3)
    generate(cfg, tmp_path, 4, workers=1, progress=False)
    data = _load(tmp_path / "person_keypoints.json")
    assert data["categories"] == [CROWDPOSE14.coco_category()]
    assert all("crowdIndex" in im for im in data["images"])
    ds = CocoKeypoints(tmp_path / "person_keypoints.json", CROWDPOSE14)
    persons = [p for i in ds.images for p in ds.persons(i)]
    assert persons
    assert all(p.keypoints.shape == (14, 3) for p in persons)
    s = make_sample(cfg, 0)
    for lab in s.labels:
        p = s.scene.persons[lab.person].body.joints
        top, neck = lab.keypoints[12, :2], lab.keypoints[13, :2]
        np.testing.assert_allclose(top, p[JOINT_OF["top_head"], :2])
        np.testing.assert_allclose(neck, p[JOINT_OF["neck"], :2])


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    out = tmp_path / "ds"
    args = ["synth", "--out", str(out), "--images", "2", "--seed", "1", "--size", "64", "48"]
    assert main([*args, "--workers", "1", "--no-progress"]) == 0
    assert "left_wrist" in capsys.readouterr().out
    assert len(list((out / "images").glob("*.jpg"))) == 2
    assert main(["synth", "--out", str(out), "--images", "1", "--persons", "3", "1"]) == 2


def test_verb_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, training.synth.cli as m; "
        "heavy = {'numpy', 'PIL', 'torch', 'tqdm', 'cv2'} & set(sys.modules); "
        "assert not heavy, heavy; assert m.HELP"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
