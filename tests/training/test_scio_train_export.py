import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.bundle import load_bundle  # noqa: E402
from models.checkpoint import load_scio_net  # noqa: E402
from models.codec import render_gaussians  # noqa: E402
from models.scio_search import ScioSearchConfig  # noqa: E402
from service.cli import main  # noqa: E402
from service.pipeline import PosePipeline  # noqa: E402
from tests.conftest import mini_data_config  # noqa: E402
from training.config import PRESETS, SCIO_PRESETS, merge  # noqa: E402
from training.evaluate import EvalOptions, evaluate  # noqa: E402
from training.train_backbone import train_backbone  # noqa: E402
from training.train_scio import render, train_scio  # noqa: E402

MINI = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco-val-mini"
pytestmark = pytest.mark.skipif(
    not (MINI / "person_keypoints.json").exists(), reason="no ../shared/data/coco-val-mini"
)
TINY_SCIO = replace(
    SCIO_PRESETS["cpu-small"],
    context_widths=(8, 8, 8),
    head_widths=(4, 4, 4),
    epochs=1,
    passes=1,
    batch_size=16,
    val_persons=40,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    data = mini_data_config()
    cfg = merge(
        PRESETS["cpu-small"],
        {
            "input_hw": [64, 32],
            "sigma": 1.0,
            "data": data,
            "epochs": 1,
            "batch_size": 16,
            "workers": 0,
            "lr_steps": [100],
        },
    )
    train_backbone(cfg, root / "bb")
    train_scio(root / "bb" / "final.pt", root / "scio", TINY_SCIO)
    return {"backbone": root / "bb" / "final.pt", "scio": root / "scio"}


def test_training_render_is_the_search_render() -> None:
    pts = np.array([[3.2, 7.9], [0.0, 15.0], [11.5, 2.25]])
    ours = render(torch.from_numpy(pts).float(), (16, 12), 1.5)[:, 0].numpy()
    np.testing.assert_allclose(ours, render_gaussians(pts, (16, 12), 1.5), atol=1e-6)


def test_scio_training_writes_networks_and_the_sensitivity_report(runs) -> None:
    report = json.loads((runs["scio"] / "scio.json").read_text())
    assert report["groups"] == [
        "left_arm",
        "right_arm",
        "left_leg",
        "right_leg",
        "left_head",
        "right_head",
    ]
    sens = report["sensitivity"]
    assert sens["rows"] > 0
    for key in ("loss@0", "loss@1", "loss@2", "loss@4", "rank_acc@1", "rank_acc@4"):
        assert np.isfinite(sens["overall"][key])
    assert 0 <= sens["overall"]["rank_acc@4"] <= 1
    h = report["history"][-1]
    assert np.isfinite([h["phi_loss"], h["gamma_loss"], h["rank_loss"]]).all()
    gamma = load_scio_net(runs["scio"] / "gamma.pt")
    assert gamma.config.feature_dropout == TINY_SCIO.gamma_feature_dropout
    assert load_scio_net(runs["scio"] / "phi.pt").config.groups == gamma.config.groups


def test_scio_training_resumes(runs, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "scio"
    shutil.copytree(runs["scio"], out)
    report = train_scio(runs["backbone"], out, replace(TINY_SCIO, epochs=2), resume=True)
    assert [h["epoch"] for h in report["history"]] == [2]


def test_cached_heatmaps_are_flip_fused_as_the_service_fuses_them(runs) -> None:
    from models.codec import exact_flip_shift, fuse_flip
    from models.keypoints import COCO17
    from training.data.coco import CocoKeypoints
    from training.data.topdown import TopDownDataset
    from training.train_backbone import codec_for, normalization_of
    from training.train_scio import collect_outputs, load_backbone

    backbone, bcfg = load_backbone(runs["backbone"])
    codec = codec_for(bcfg)
    ds = TopDownDataset(
        CocoKeypoints(MINI / "person_keypoints.json", COCO17),
        MINI / "images",
        codec,
        normalization_of(backbone),
    )
    plain = collect_outputs(backbone, ds, 1, 8, limit=6)
    fused = collect_outputs(backbone, ds, 1, 8, limit=6, flip_index=COCO17.flip_index)
    x = torch.stack([ds[i]["image"] for i in range(6)])
    with torch.no_grad():
        heat = backbone(x)[0]
        mirrored = backbone(x.flip(-1))[0]
    # the exact shift for the backbone's stride, as `export` writes it into the bundle
    shift = exact_flip_shift(codec.input_hw[1], codec.heatmap_hw[1])
    want = fuse_flip(heat.numpy(), mirrored.numpy(), COCO17.flip_index, shift)
    scale = float(np.abs(want).max())
    assert np.abs(fused.heatmaps.float().numpy() - want).max() <= 2e-3 * scale
    assert np.abs(plain.heatmaps.float().numpy() - want).max() > 1e-2 * scale
    # the features stay the unmirrored crop's, as the service passes them to Φ and Γ
    np.testing.assert_array_equal(fused.features.numpy(), plain.features.numpy())
    np.testing.assert_array_equal(fused.joints.numpy(), plain.joints.numpy())


def test_scio_trains_on_a_folder_the_backbone_never_saw(runs, tmp_path: Path) -> None:
    ann = json.loads((MINI / "person_keypoints.json").read_text())
    keep = {im["id"] for im in ann["images"][:4]}
    folder = tmp_path / "fresh"
    folder.mkdir()
    (folder / "images").symlink_to(MINI / "images")
    sub = {
        **ann,
        "images": [im for im in ann["images"] if im["id"] in keep],
        "annotations": [a for a in ann["annotations"] if a["image_id"] in keep],
    }
    (folder / "person_keypoints.json").write_text(json.dumps(sub))
    cfg = replace(TINY_SCIO, data=str(folder), flip_test=True)
    report = train_scio(runs["backbone"], tmp_path / "scio", cfg)
    own = json.loads((runs["scio"] / "scio.json").read_text())
    assert 0 < report["train_persons"] < own["train_persons"]
    assert report["train_config"]["data"] == str(folder)
    assert report["train_config"]["flip_test"] is True
    with pytest.raises(FileNotFoundError, match=r"person_keypoints\.json"):
        train_scio(runs["backbone"], tmp_path / "scio2", replace(cfg, data=str(tmp_path)))
    assert not (tmp_path / "scio2").exists()


def _export(backbone: Path, scio: Path, out: Path, *extra: str) -> None:
    """`scio-pose export` of a backbone run and a SCIO run into `out`."""
    args = ["export", "--backbone", str(backbone), "--scio", str(scio), "--out", str(out)]
    assert main([*args, *extra]) == 0


def test_export_bundle_with_scio_and_refine_through_evaluate(runs, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    search = tmp_path / "search.json"
    search.write_text(json.dumps({"iterations": 3, "min_confidence": 0.0}))
    _export(runs["backbone"], runs["scio"], out, "--search", str(search), "--name", "tiny")
    b = load_bundle(out)
    assert b.has_scio
    assert b.manifest.scio["search"]["iterations"] == 3
    par = b.manifest.scio["parity_max_abs_diff"]
    assert max(par.values()) <= 1e-4
    assert b.manifest.provenance["parity_max_abs_diff"]["pose"] <= 1e-4
    assert "scio-pose export" in b.manifest.provenance["command"]
    assert PosePipeline(b, device="cpu").refine_available
    # the flip test's shift undoes the mirroring exactly for this backbone's stride
    pose = b.manifest.pose
    stride = pose.input_hw[1] / pose.heatmap_hw[1]
    assert pose.flip_shift == pytest.approx((stride - 1) / stride)
    _export(runs["backbone"], runs["scio"], tmp_path / "official", "--flip-shift", "1")
    assert load_bundle(tmp_path / "official").manifest.pose.flip_shift == 1.0
    r = evaluate(
        out,
        MINI / "person_keypoints.json",
        MINI / "images",
        EvalOptions(
            refine="sco",
            limit=4,
            keep_refinements=True,
            scio_config=ScioSearchConfig(iterations=3, min_confidence=0.0),
        ),
    )
    assert r["scio"]["refined"] > 0
    rows = r["refinement_rows"]
    assert all(np.isfinite([x["loss_before"], x["loss_after"], x["accuracy"]]).all() for x in rows)
    assert all(x["loss_after"] <= x["loss_before"] + 1e-6 for x in rows)
    # what each row's person was given (benchmarks/keypoint_confidence_flip.py reads them)
    assert all(x["bbox_score"] == 1.0 for x in rows)  # GT boxes
    assert all(x["confidence"] is None or 0.0 <= x["confidence"] <= 1.0 for x in rows)


def test_another_group_assignment_travels_into_the_bundle(runs, tmp_path: Path) -> None:
    from models.keypoints import COCO17, proximal_groups

    train_scio(runs["backbone"], tmp_path / "scio", replace(TINY_SCIO, groups="proximal"))
    report = json.loads((tmp_path / "scio" / "scio.json").read_text())
    alt = COCO17.with_groups(proximal_groups(COCO17))
    assert report["group_members"] == alt.to_dict()["groups"]
    out = tmp_path / "bundle"
    _export(runs["backbone"], tmp_path / "scio", out)
    b = load_bundle(out)
    assert b.manifest.spec.groups == alt.groups
    assert b.manifest.spec.keypoint_names[b.manifest.spec.groups[0].a] == "left_shoulder"
    assert PosePipeline(b, device="cpu").refine_available


def test_variants_on_one_backbone_pass_equal_separate_evaluations(runs, tmp_path: Path) -> None:
    from training.evaluate import evaluate_variants, scio_config_for

    out = tmp_path / "bundle"
    _export(runs["backbone"], runs["scio"], out)
    ann, images = MINI / "person_keypoints.json", MINI / "images"
    search = ScioSearchConfig(iterations=2, min_confidence=0.0, prior="fusion")
    opts = EvalOptions(limit=5, scio_config=search)
    together = evaluate_variants(
        out,
        ann,
        images,
        opts,
        {
            "none": None,
            "scl": scio_config_for("scl", search),
            "sco": search,
        },
    )
    for mode in ("none", "scl", "sco"):
        alone = evaluate(out, ann, images, replace(opts, refine=mode))
        assert together[mode]["stats"] == alone["stats"], mode
        assert together[mode]["keypoint_accuracy"] == alone["keypoint_accuracy"], mode
    assert together["scl"]["scio"]["accepted"] == 0  # SCL: Φ's prior only, no search moves


def test_listwise_term_prefers_a_landscape_centred_on_the_truth() -> None:
    from models.scio_nets import ScioNetConfig
    from training.train_scio import GroupBatch, listwise

    hw, sigma = (16, 12), 1.0
    xd = torch.tensor([[6.0, 8.0], [5.0, 7.0]])

    class Fake:
        """Γ whose prediction is G(candidate + shift): its loss against H_A = G(xd) is
        smallest at xd - shift."""

        def __init__(self, shift: float) -> None:
            self.shift = torch.tensor([shift, 0.0])
            self.config = ScioNetConfig(feature_channels=1)

        def head(self, ctx, h3, rows):
            ys, xs = torch.meshgrid(torch.arange(hw[0]), torch.arange(hw[1]), indexing="ij")
            m = h3[:, 0]
            c = (
                torch.stack([(m * xs).sum((1, 2)), (m * ys).sum((1, 2))], 1)
                / m.sum((1, 2))[:, None]
            )
            return render(c + self.shift, hw, sigma)

    ha = render(xd, hw, sigma)
    z = torch.zeros(2, 1, *hw)
    b = GroupBatch(
        z, z, ha, z, torch.zeros(2, 1, *hw), torch.zeros(2, dtype=torch.long), ha, ha, xd
    )
    cfg = replace(TINY_SCIO, listwise_weight=1.0, listwise_jitter=0.5)
    centred = listwise(Fake(0.0), None, b, cfg, sigma, torch.Generator().manual_seed(0))
    shifted = listwise(Fake(1.5), None, b, cfg, sigma, torch.Generator().manual_seed(0))
    assert torch.isfinite(centred)
    assert centred < shifted


def test_verification_probes_on_a_bundle(runs, tmp_path: Path) -> None:
    from training.probes import probe

    out = tmp_path / "bundle"
    _export(runs["backbone"], runs["scio"], out, "--name", "tiny")
    pipe = PosePipeline(load_bundle(out), device="cpu")
    cfg = ScioSearchConfig(iterations=3, min_confidence=0.0)
    r = probe(pipe, MINI / "person_keypoints.json", MINI / "images", search=cfg, limit=6)
    o = r["overall"]
    assert o["rows"] > 0
    assert sum(g["rows"] for g in r["per_group"].values()) == o["rows"]
    for k in ("spearman", "gain", "d_error"):
        assert np.isfinite(o[k]), k
    # AUROC needs correct and wrong keypoints both; the tiny model may get every one wrong
    both = 0 < o["correct"] < 1
    for k in ("auroc_peak", "auroc_loss_start"):
        assert np.isfinite(o[k]) == both, (k, o["correct"])
        assert not both or 0 <= o[k] <= 1
    assert o["accepted"] <= o["rows"]
    # the exact-anchor diagnostics are shares of the rows off by more than 1 px
    assert o["rows_off_by_1px"] > 0
    for k in ("truth_beats_start_true_a", "truth_beats_start_true_anchors"):
        assert 0 <= o[k] <= 1, k


def test_search_decision_recipe_trains_and_its_score_travels_into_the_bundle(
    runs, tmp_path: Path
) -> None:
    cfg = replace(TINY_SCIO, candidates_weight=1.0, candidates_sample=6, score="normalized")
    report = train_scio(runs["backbone"], tmp_path / "scio", cfg)
    assert report["score"] == "normalized"
    assert np.isfinite(report["history"][-1]["candidates_loss"])
    assert report["history"][-1]["candidates_loss"] > 0
    out = tmp_path / "bundle"
    _export(runs["backbone"], tmp_path / "scio", out, "--name", "tiny")
    assert load_bundle(out).manifest.scio["search"]["score"] == "normalized"
    pipe = PosePipeline(load_bundle(out), device="cpu")
    assert pipe.scio_config.score == "normalized"
    bad = tmp_path / "search.json"
    bad.write_text(json.dumps({"score": "l2"}))
    with pytest.raises(ValueError, match="trained for 'normalized'"):
        _export(runs["backbone"], tmp_path / "scio", tmp_path / "b2", "--search", str(bad))


def test_export_sets_the_detectors_oks_nms_threshold(runs, tmp_path: Path, capsys) -> None:
    from tests.service.onnx_fakes import make_fixed_detector

    det = tmp_path / "det"
    det.mkdir()
    make_fixed_detector(det / "detector.onnx", np.array([[40, 60, 120, 260, 0.9, 0]], np.float32))
    (det / "detector.json").write_text(json.dumps({"input_hw": [320, 320]}))
    _export(runs["backbone"], runs["scio"], tmp_path / "a", "--detector", str(det))
    assert load_bundle(tmp_path / "a").manifest.detector.oks_nms == 0.9  # the official default
    assert load_bundle(tmp_path / "a").manifest.detector.min_person_score == 0.0
    _export(
        runs["backbone"], runs["scio"], tmp_path / "b", "--detector", str(det), "--oks-nms", "0.6",
        "--min-person-score", "0.15",
    )  # fmt: skip
    b = load_bundle(tmp_path / "b")
    assert (b.manifest.detector.oks_nms, b.manifest.detector.min_person_score) == (0.6, 0.15)
    assert PosePipeline(b, device="cpu").oks_nms == 0.6
    assert PosePipeline(b, device="cpu").min_person_score == 0.15
    args = ["export", "--backbone", str(runs["backbone"]), "--out", str(tmp_path / "c")]
    assert main([*args, "--oks-nms", "0.6"]) == 2  # no detector
    assert main([*args, "--detector", str(det), "--oks-nms", "0"]) == 2
    assert "--oks-nms needs --detector" in capsys.readouterr().err
    assert main([*args, "--min-person-score", "0.1"]) == 2  # no detector
    assert main([*args, "--detector", str(det), "--min-person-score", "1.5"]) == 2
    assert "--min-person-score needs --detector" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_export_records_the_pair_split(runs, tmp_path: Path) -> None:
    """--pair-split takes `benchmarks/pair_split.py --choose`'s file (its null: no split)."""
    choice = tmp_path / "choice.json"
    wanted = {"pairs": [[15, 16, 13, 14]], "min_second": 0.3, "max_apart": 1.0}
    choice.write_text(json.dumps({"pair_split": wanted, "split": "tune"}))
    _export(runs["backbone"], runs["scio"], tmp_path / "a", "--pair-split", str(choice))
    a = load_bundle(tmp_path / "a")
    assert a.manifest.pose.pair_split is not None
    assert a.manifest.pose.pair_split.to_dict() == wanted
    assert PosePipeline(a, device="cpu").info["pair_split"] == wanted
    choice.write_text(json.dumps({"pair_split": None}))
    _export(runs["backbone"], runs["scio"], tmp_path / "b", "--pair-split", str(choice))
    assert load_bundle(tmp_path / "b").manifest.pose.pair_split is None
