"""`scio-pose rebundle`: parts of a bundle replaced, the rest copied as they are, the step
recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")

from models.bundle import (
    DETECTOR,
    DETECTOR_INT8,
    GAMMA_CONTEXT,
    GAMMA_HEAD,
    PHI,
    POSE,
    load_bundle,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "bundles" / "demo"
pytestmark = pytest.mark.skipif(not (DEMO / "bundle.json").exists(), reason="no bundles/demo")


@pytest.fixture(scope="module")
def unfolded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bundle with SCIO graphs as `export` wrote them before stop 34 (the context
    stem's BatchNorm not folded): a network of the demo's architecture, BatchNorm statistics
    far from the identity, exported without the fold."""
    torch = pytest.importorskip("torch")
    from dataclasses import replace

    from models.bundle import write_bundle
    from models.scio_nets import ScioNet, ScioNetConfig, export_onnx
    from tests.training.support import trained_looking_batchnorms
    from training.scio_export import export_phi

    src = load_bundle(DEMO)
    net_cfg = {
        k: tuple(v) if isinstance(v, list) else v for k, v in src.manifest.scio["net"].items()
    }  # type: ignore[index]
    torch.manual_seed(0)
    net = ScioNet(ScioNetConfig(**net_cfg)).eval()
    trained_looking_batchnorms(net, spread=0.1)
    work = tmp_path_factory.mktemp("unfolded")
    hw = src.manifest.pose.heatmap_hw
    export_onnx(net, work / "ctx.onnx", work / "head.onnx", hw)
    export_phi(net, work / "phi.onnx", hw)
    sources = {role: DEMO / e.path for role, e in src.manifest.files.items()}
    sources |= {GAMMA_CONTEXT: work / "ctx.onnx", GAMMA_HEAD: work / "head.onnx"}
    sources[PHI] = work / "phi.onnx"
    out = work / "bundle"
    write_bundle(out, replace(src.manifest), sources)
    return out


def _cli(args: list[str]) -> int:
    from service.cli import main

    return main(["rebundle", *args])


def _detector_run(tmp_path: Path) -> Path:
    """A `train detector` output folder: the demo's detector.onnx and a detector.json."""
    run = tmp_path / "det"
    run.mkdir()
    shutil.copyfile(DEMO / "detector.onnx", run / "detector.onnx")
    meta = {
        "input_hw": [256, 256],
        "person_class": 0,
        "score_threshold": 0.3,
        "score_floor": 0.05,
        "oks_nms": 0.5,
        "metrics": {"map50": 0.9},
        "command": "scio-pose train detector ...",
    }
    (run / "detector.json").write_text(json.dumps(meta))
    return run


def test_rebundle_replaces_what_it_is_given_and_copies_the_rest(
    unfolded: Path, tmp_path: Path
) -> None:
    src = load_bundle(unfolded).manifest
    search = {**src.scio["search"], "radius": 3.0}  # type: ignore[index]
    (tmp_path / "search.json").write_text(json.dumps(search))
    out = tmp_path / "new"
    args = ["--bundle", str(unfolded), "--out", str(out)]
    args += ["--detector", str(_detector_run(tmp_path))]
    args += ["--search", str(tmp_path / "search.json"), "--fold-batchnorm", "--note", "a test"]
    (tmp_path / "ev.json").write_text(json.dumps({"evaluation": {"data": "new"}}))
    args += ["--provenance", str(tmp_path / "ev.json")]
    assert _cli(args) == 0

    new = load_bundle(out).manifest  # every sha256 checked
    assert new.files[POSE] == src.files[POSE]
    assert new.files[GAMMA_HEAD] == src.files[GAMMA_HEAD]
    assert new.files[DETECTOR] == src.files[DETECTOR]  # the same bytes in this test
    for role in (GAMMA_CONTEXT, PHI):  # folded: other bytes, no stem BatchNorm left
        assert new.files[role].sha256 != src.files[role].sha256
        import onnx

        ops = [n.op_type for n in onnx.load(str(out / new.files[role].path)).graph.node]
        assert "BatchNormalization" not in ops
    assert new.scio["search"]["radius"] == 3.0  # type: ignore[index]
    assert new.scio["net"] == src.scio["net"]  # type: ignore[index]
    assert new.detector is not None
    assert src.detector is not None
    assert new.detector.score_threshold == 0.3  # the new detector's own
    assert new.detector.oks_nms == src.detector.oks_nms  # the bundle's, not detector.json's
    assert new.provenance["detector"]["metrics"] == {"map50": 0.9}
    assert new.provenance["backbone"] == src.provenance["backbone"]
    last = new.provenance["commands"][-1]
    assert last["note"] == "a test"
    assert "rebundle" in last["command"]
    # detector (and the demo's INT8 copy and person score of the old one dropped), search, two
    # graphs, provenance
    assert len(last["rebundled"]) == 8
    assert "the old detector's INT8 copy dropped" in last["rebundled"]
    # the demo bundle runs boxes below 0.25 unflipped: fitted to the old detector's scores too
    assert any("minimum box score reset to 0" in c for c in last["rebundled"])
    assert new.detector.flip_min_score == 0.0
    assert "the old detector's person score and minimum dropped" in last["rebundled"]
    assert new.detector.person_score is None
    assert DETECTOR_INT8 in src.files
    assert DETECTOR_INT8 not in new.files
    assert new.provenance["evaluation"] == {"data": "new"}
    assert len(new.provenance["commands"]) == len(src.provenance["commands"]) + 1


def test_rebundle_sets_the_minimum_person_score_and_keeps_it_with_a_new_detector(
    unfolded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new"
    assert _cli(["--bundle", str(unfolded), "--out", str(out), "--min-person-score", "0.15"]) == 0
    new = load_bundle(out).manifest
    assert new.detector is not None
    assert new.detector.min_person_score == 0.15
    assert new.files == load_bundle(unfolded).manifest.files  # nothing else changed
    # back to the official score (the demo bundle has a calibrated one), the minimum kept
    official = tmp_path / "official.json"
    official.write_text(json.dumps({"person_score": None}))
    plain = tmp_path / "plain"
    assert _cli(["--bundle", str(out), "--out", str(plain), "--person-score", str(official)]) == 0
    det = load_bundle(plain).manifest.detector
    assert det is not None
    assert (det.person_score, det.min_person_score) == (None, 0.15)
    again = tmp_path / "again"
    assert _cli(["--bundle", str(plain), "--out", str(again), "--detector",
                 str(_detector_run(tmp_path))]) == 0  # fmt: skip
    assert load_bundle(again).manifest.detector.min_person_score == 0.15  # type: ignore[union-attr]
    bad = ["--bundle", str(unfolded), "--out", str(tmp_path / "bad"), "--min-person-score", "2"]
    assert _cli(bad) == 2
    assert "--min-person-score must lie in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_rebundle_sets_a_person_score_and_a_new_detector_drops_it(
    unfolded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.postprocess import PersonScoreModel

    model = PersonScoreModel(weights=(1.0, 3.0), bias=-2.0, features=("box_logit", "keypoint_max"))
    choice = tmp_path / "choice.json"
    choice.write_text(json.dumps(
        {"person_score": model.to_dict(), "detector_threshold": 0.15, "min_person_score": 0.45}
    ))  # fmt: skip
    out = tmp_path / "new"
    assert _cli(["--bundle", str(unfolded), "--out", str(out), "--person-score", str(choice)]) == 0
    new = load_bundle(out).manifest
    assert new.detector is not None
    assert (new.detector.person_score, new.detector.score_threshold) == (model, 0.15)
    assert new.detector.min_person_score == 0.45
    assert new.files == load_bundle(unfolded).manifest.files  # nothing else changed
    # fitted on the old detector's box scores: a new detector goes back to the official score
    again = tmp_path / "again"
    assert _cli(["--bundle", str(out), "--out", str(again), "--detector",
                 str(_detector_run(tmp_path))]) == 0  # fmt: skip
    det = load_bundle(again).manifest.detector
    assert det is not None
    assert (det.person_score, det.min_person_score) == (None, 0.0)
    assert "person score and minimum dropped" in capsys.readouterr().out
    both = ["--bundle", str(out), "--out", str(tmp_path / "x"), "--person-score", str(choice),
            "--min-person-score", "0.1"]  # fmt: skip
    assert _cli(both) == 2
    assert "not with --min-person-score" in capsys.readouterr().err
    choice.write_text(json.dumps({"person_score": None, "detector_threshold": 2.0}))
    assert _cli(["--bundle", str(out), "--out", str(tmp_path / "y"), "--person-score",
                 str(choice)]) == 2  # fmt: skip
    assert "score_threshold" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "y").exists()


def test_rebundle_sets_the_flip_minimum_and_a_person_score_brings_its_own(
    unfolded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new"
    assert _cli(["--bundle", str(unfolded), "--out", str(out), "--flip-min-score", "0.25"]) == 0
    assert "flip test for boxes scoring >= 0.25" in capsys.readouterr().out
    det = load_bundle(out).manifest.detector
    assert det is not None
    assert det.flip_min_score == 0.25
    assert load_bundle(out).manifest.files == load_bundle(unfolded).manifest.files
    # a person score's file carries the flip rule its answers were collected with
    choice = tmp_path / "choice.json"
    choice.write_text(json.dumps({"person_score": None, "flip_min_score": 0.3}))
    scored = tmp_path / "scored"
    assert _cli(["--bundle", str(out), "--out", str(scored), "--person-score", str(choice)]) == 0
    assert load_bundle(scored).manifest.detector.flip_min_score == 0.3  # type: ignore[union-attr]
    # a new detector's box scores are not the old ones: every box flips again
    again = tmp_path / "again"
    assert _cli(["--bundle", str(scored), "--out", str(again), "--detector",
                 str(_detector_run(tmp_path))]) == 0  # fmt: skip
    assert load_bundle(again).manifest.detector.flip_min_score == 0.0  # type: ignore[union-attr]
    assert "minimum box score reset to 0" in capsys.readouterr().out
    for bad, message in (
        (["--flip-min-score", "1.5"], "--flip-min-score must lie in [0, 1]"),
        (["--flip-min-score", "0.2", "--person-score", str(choice)], "not with --flip-min-score"),
    ):
        assert _cli(["--bundle", str(out), "--out", str(tmp_path / "bad"), *bad]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


def test_rewritten_graphs_answer_as_before(unfolded: Path, tmp_path: Path) -> None:
    """The whole SCIO refinement on the rewritten graphs (folded stem, features per person)
    equals the source bundle's."""
    from tests.service.support import bundle_client

    out = tmp_path / "folded"
    args = ["--bundle", str(unfolded), "--out", str(out), "--fold-batchnorm", "--person-features"]
    assert _cli(args) == 0
    import onnx

    for role in (GAMMA_CONTEXT, PHI):  # the service feeds these per person, the source per row
        path = out / load_bundle(out).manifest.files[role].path
        assert "person_index" in [i.name for i in onnx.load(str(path)).graph.input]
    from training.synth.generate import generate_dataset

    generate_dataset(tmp_path / "s", images=4, seed=77, size=(256, 256), persons=(2, 4))
    images = sorted((tmp_path / "s" / "images").glob("*"))
    answers = []
    for bundle in (unfolded, out):
        with bundle_client(bundle) as c:
            got = []
            for p in images:
                r = c.post("/pose?refine=true", files={"image": (p.name, p.read_bytes())})
                assert r.status_code == 200
                got.append(r.json()["persons"])
            answers.append(got)
    refinements = 0
    for a, b in zip(*answers, strict=True):
        assert len(a) == len(b)
        assert len(a) > 0
        for pa, pb in zip(a, b, strict=True):
            np.testing.assert_allclose(pb["keypoints"], pa["keypoints"], atol=1e-3)
            assert len(pa["refinements"]) == len(pb["refinements"])
            for ra, rb in zip(pa["refinements"], pb["refinements"], strict=True):
                assert ra.keys() == rb.keys()
                for k, v in ra.items():  # Γ's losses included
                    if isinstance(v, float):
                        assert rb[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
                    else:
                        assert rb[k] == v, k
                refinements += 1
    assert refinements > 0


def test_bad_requests_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x"
    assert _cli(["--bundle", str(DEMO), "--out", str(out)]) == 2
    assert "nothing to replace" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    assert (
        _cli(["--bundle", str(DEMO), "--out", str(out), "--provenance", str(tmp_path / "bad.json")])
        == 2
    )
    assert "rebundle:" in capsys.readouterr().err
    assert _cli(["--bundle", str(DEMO), "--out", str(out), "--oks-nms", "0.5"]) == 2
    assert "--oks-nms needs --detector" in capsys.readouterr().err
    assert _cli(["--bundle", str(tmp_path), "--out", str(out), "--fold-batchnorm"]) == 2
    assert "not a bundle" in capsys.readouterr().err
    assert _cli(["--bundle", str(DEMO), "--out", str(out), "--detector", str(tmp_path)]) == 2
    assert "detector.json is missing" in capsys.readouterr().err
    (tmp_path / "split.json").write_text(json.dumps({"pair_split": {"pairs": [[15, 16, 13, 99]]}}))
    args = ["--bundle", str(DEMO), "--out", str(out), "--pair-split", str(tmp_path / "split.json")]
    assert _cli(args) == 2
    assert "indices must be in [0, 17)" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written


def test_the_pair_split_is_set_and_removed(tmp_path: Path) -> None:
    """--pair-split takes `benchmarks/pair_split.py --choose`'s file; its null removes it."""
    wanted = {"pairs": [[9, 10, 7, 8]], "min_second": 0.5, "max_apart": 1.0}
    (tmp_path / "on.json").write_text(json.dumps({"pair_split": wanted, "split": "tune"}))
    (tmp_path / "off.json").write_text(json.dumps({"pair_split": None, "split": "tune"}))
    out = tmp_path / "b"
    assert (
        _cli(["--bundle", str(DEMO), "--out", str(out), "--pair-split", str(tmp_path / "on.json")])
        == 0
    )
    new = load_bundle(out).manifest
    assert new.pose.pair_split is not None
    assert new.pose.pair_split.to_dict() == wanted
    assert new.files == load_bundle(DEMO).manifest.files  # the models as they were
    assert (
        _cli(["--bundle", str(out), "--out", str(out), "--pair-split", str(tmp_path / "off.json")])
        == 0
    )
    assert load_bundle(out).manifest.pose.pair_split is None
    assert "pair split" in load_bundle(out).manifest.provenance["commands"][-1]["rebundled"][0]


def test_the_flip_shift_is_set_exactly_for_the_stride_or_as_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b"
    assert _cli(["--bundle", str(DEMO), "--out", str(out), "--flip-shift", "exact"]) == 0
    new = load_bundle(out).manifest
    assert (new.pose.input_hw, new.pose.heatmap_hw) == ((128, 96), (64, 48))
    assert new.pose.flip_shift == 0.5  # stride 2: (2 - 1) / 2
    assert new.files == load_bundle(DEMO).manifest.files  # the models as they were
    assert "flip test shift" in new.provenance["commands"][-1]["rebundled"][0]
    assert _cli(["--bundle", str(out), "--out", str(out), "--flip-shift", "1"]) == 0
    assert load_bundle(out).manifest.pose.flip_shift == 1.0
    for bad in ("2", "half"):
        with pytest.raises(SystemExit):
            _cli(["--bundle", str(DEMO), "--out", str(tmp_path / "c"), "--flip-shift", bad])
        assert "--flip-shift" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_evaluation_results_replace_the_provenance_s(unfolded: Path, tmp_path: Path) -> None:
    """--evaluation: `scio-pose evaluate --out` files recorded as the build records them."""
    files = []
    for boxes, refine in (("gt", "none"), ("detector", "sco")):
        r = {
            "boxes": boxes,
            "refine": refine,
            "stats": {"AP": 0.4},
            "keypoint_accuracy": {"left_wrist": 0.5, "nose": 0.9},
            "distal_keypoints": ["left_wrist"],
            "scio": None if refine == "none" else {"accepted": 3},
        }
        files.append(tmp_path / f"{boxes}-{refine}.json")
        files[-1].write_text(json.dumps(r))
    out = tmp_path / "b"
    args = ["--bundle", str(unfolded), "--out", str(out), "--evaluation", *map(str, files)]
    assert _cli([*args, "--evaluation-data", "seed 3001"]) == 0
    ev = load_bundle(out).manifest.provenance["evaluation"]
    assert ev["data"] == "seed 3001"
    assert ev["results"]["boxes=detector refine=sco"] == {
        "stats": {"AP": 0.4},
        "distal_keypoint_accuracy": {"left_wrist": 0.5},
        "scio": {"accepted": 3},
    }
    assert set(ev["results"]) == {"boxes=gt refine=none", "boxes=detector refine=sco"}


def _scio_run(tmp_path: Path, feature_channels: int | None = None) -> Path:
    """A `train scio` output folder for the demo's backbone: Φ and Γ of the demo's
    architecture with fresh weights (seeds 1 and 2), and the scio.json `train scio` writes."""
    torch = pytest.importorskip("torch")
    from models.checkpoint import save_checkpoint
    from models.scio_nets import ScioNet, ScioNetConfig

    src = load_bundle(DEMO).manifest
    net = {k: tuple(v) if isinstance(v, list) else v for k, v in src.scio["net"].items()}  # type: ignore[index]
    if feature_channels is not None:
        net["feature_channels"] = feature_channels
    run = tmp_path / "scio-run"
    run.mkdir()
    for seed, role in ((1, "phi"), (2, "gamma")):
        torch.manual_seed(seed)
        save_checkpoint(run / f"{role}.pt", ScioNet(ScioNetConfig(**net)).eval(), {"epoch": 3})
    report = {
        "groups": [g.name for g in src.spec.groups],
        "group_members": src.spec.to_dict()["groups"],
        "score": src.scio["search"]["score"],  # type: ignore[index]
        "net": {k: list(v) if isinstance(v, tuple) else v for k, v in net.items()},
        "train_config": {"epochs": 3},
    }
    (run / "scio.json").write_text(json.dumps(report))
    return run


def test_scio_networks_are_replaced_with_settings_fitted_for_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--scio: another run's Φ and Γ in the bundle (each graph computing what its torch network
    does), the search settings from --search, the run recorded; everything else copied."""
    import onnxruntime as ort

    from models.checkpoint import load_scio_net
    from service.runtime import OnnxModel
    from service.scio_onnx import OnnxPredictor

    torch = pytest.importorskip("torch")
    run = _scio_run(tmp_path)
    src = load_bundle(DEMO).manifest
    search = {**src.scio["search"], "prior": "fusion", "prior_radius": 1.0}  # type: ignore[index]
    (tmp_path / "search.json").write_text(json.dumps(search))
    out = tmp_path / "new"
    base = ["--bundle", str(DEMO), "--out", str(out), "--scio", str(run)]
    assert _cli(base) == 2  # settings fitted on the old networks would not fit the new ones
    assert "--scio needs --search" in capsys.readouterr().err
    assert _cli([*base, "--search", str(tmp_path / "search.json")]) == 0

    new = load_bundle(out).manifest
    for role in (GAMMA_CONTEXT, GAMMA_HEAD, PHI):
        assert new.files[role].sha256 != src.files[role].sha256
    for role in (POSE, DETECTOR, DETECTOR_INT8):
        assert new.files[role] == src.files[role]
    assert new.scio["search"]["prior_radius"] == 1.0  # type: ignore[index]
    assert new.provenance["scio"] == {"folder": str(run), "train_config": {"epochs": 3}}
    assert new.provenance["backbone"] == src.provenance["backbone"]
    assert any("Φ and Γ from" in c for c in new.provenance["commands"][-1]["rebundled"])
    # the bundle's Φ is the run's Φ
    phi = load_scio_net(run / "phi.pt")
    hw = new.pose.heatmap_hw
    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(3, 1, *hw, generator=g) for _ in range(3)]
    f = torch.rand(3, phi.config.feature_channels, *hw, generator=g)
    group = torch.tensor([0, 2, 5])
    with torch.no_grad():
        want = phi(maps[1], maps[2], maps[0], f, group)[:, 0].numpy()
    session = ort.InferenceSession(str(out / new.files[PHI].path))
    onnx_phi = OnnxPredictor(OnnxModel(session, "phi"))
    got = onnx_phi(*(m[:, 0].numpy() for m in maps), f.numpy(), group.numpy())
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_scio_networks_for_another_backbone_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _scio_run(tmp_path, feature_channels=16)
    src = load_bundle(DEMO).manifest
    (tmp_path / "search.json").write_text(json.dumps(src.scio["search"]))  # type: ignore[index]
    out = tmp_path / "new"
    args = ["--bundle", str(DEMO), "--out", str(out), "--scio", str(run)]
    assert _cli([*args, "--search", str(tmp_path / "search.json")]) == 2
    assert "feature channels" in capsys.readouterr().err
    assert not out.exists()
