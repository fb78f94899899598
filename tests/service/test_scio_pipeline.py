"""SCIO inside the ONNX pipeline: random Γ and Φ exported into a bundle must behave exactly like
the same search run on the torch networks."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from models.bundle import GAMMA_CONTEXT, GAMMA_HEAD, PHI  # noqa: E402
from models.keypoints import COCO17  # noqa: E402
from models.scio_nets import ScioNet, ScioNetConfig  # noqa: E402
from models.scio_search import ScioSearchConfig, refine  # noqa: E402
from service.pipeline import PosePipeline  # noqa: E402
from service.results import PoseOptions  # noqa: E402
from tests.service.onnx_fakes import make_fake_bundle  # noqa: E402
from training.scio_export import export_gamma_checked, export_phi_checked  # noqa: E402

HM = (32, 24)
GROUP_NAMES = tuple(g.name for g in COCO17.groups)
SEARCH = ScioSearchConfig(iterations=4, prior="fusion", min_confidence=0.0)


class TorchVerifier:
    def __init__(self, net: ScioNet) -> None:
        self.net = net

    def context(self, hb, hc, f, group):
        with torch.no_grad():
            t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (hb[:, None], hc[:, None], f)]
            return self.net.context(*t, torch.from_numpy(group))

    def head(self, ctx, index, hd):
        with torch.no_grad():
            out = self.net.head(ctx, torch.from_numpy(hd[:, None]), torch.from_numpy(index))
        return out[:, 0].numpy()


class TorchPredictor:
    def __init__(self, net: ScioNet) -> None:
        self.net = net

    def __call__(self, ha, hb, hc, f, group):
        with torch.no_grad():
            t = [
                torch.from_numpy(np.ascontiguousarray(a))
                for a in (hb[:, None], hc[:, None], ha[:, None], f)
            ]
            return self.net(*t, torch.from_numpy(group))[:, 0].numpy()


@pytest.fixture(scope="module")
def nets_and_bundle(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    cfg = ScioNetConfig(feature_channels=2, groups=GROUP_NAMES)
    gamma, phi = ScioNet(cfg).eval(), ScioNet(cfg).eval()
    work = tmp_path_factory.mktemp("scio")
    ctx, head, d_gamma = export_gamma_checked(gamma, work, HM)
    phi_path, d_phi = export_phi_checked(phi, work, HM)
    assert max(d_gamma, d_phi) <= 1e-4
    assert not gamma.training  # export must leave the networks in the mode it found them
    assert not phi.training
    root = make_fake_bundle(
        work / "bundle",
        scio_files={GAMMA_CONTEXT: ctx, GAMMA_HEAD: head, PHI: phi_path},
        scio_settings={"groups": list(GROUP_NAMES), "search": SEARCH.to_dict()},
    )
    return gamma, phi, root


def _image_and_boxes():
    rng = np.random.default_rng(2)
    img = (rng.random((240, 320, 3)) * 255).astype(np.uint8)
    return img, np.array([[20.0, 30, 120, 220], [150, 20, 300, 230]])


def test_onnx_search_equals_the_torch_search(nets_and_bundle) -> None:
    gamma, phi, root = nets_and_bundle
    pipe = PosePipeline.from_path(root, device="cpu")
    assert pipe.refine_available
    img, boxes = _image_and_boxes()
    opts = PoseOptions(boxes=boxes)
    persons = pipe._persons([(img, opts)])
    heat, feats = pipe._backbone(pipe._crops([(img, opts)], persons), np.zeros(2, bool))
    coords, scores = pipe.codec.decode(heat)
    via_onnx = pipe._refine([(img, opts)], persons, heat, feats, coords, scores)
    via_torch = refine(
        heat,
        feats,
        coords,
        scores,
        COCO17.groups,
        TorchVerifier(gamma),
        SEARCH,
        phi=TorchPredictor(phi),
        sigma=pipe.codec.sigma,
    )
    assert via_onnx is not None
    np.testing.assert_allclose(via_onnx.loss_before, via_torch.loss_before, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(via_onnx.start, via_torch.start, atol=1e-6)
    np.testing.assert_allclose(via_onnx.coords, via_torch.coords, atol=1e-3)
    assert via_onnx.calls == via_torch.calls


def test_refine_toggle_and_the_response_fields(nets_and_bundle) -> None:
    _, _, root = nets_and_bundle
    pipe = PosePipeline.from_path(root, device="cpu")
    img, boxes = _image_and_boxes()
    on = pipe.estimate(img, PoseOptions(boxes=boxes, refine=True))
    off = pipe.estimate(img, PoseOptions(boxes=boxes, refine=False))
    assert on.refined
    assert not off.refined
    nobody = pipe.estimate(img, PoseOptions(boxes=np.zeros((0, 4)), refine=True))
    assert nobody.persons == []
    assert not nobody.refined  # nothing was refined, so it does not say so
    assert "refine_ms" in on.timings_ms
    assert "refine_ms" not in off.timings_ms
    for p_on, p_off in zip(on.persons, off.persons, strict=True):
        assert p_off.refinements == []
        assert len(p_on.refinements) == len(COCO17.groups)
        distal = {r.keypoint for r in p_on.refinements}
        assert distal == {g.d for g in COCO17.groups}
        for r in p_on.refinements:
            assert np.isfinite([r.loss_before, r.loss_after, r.displacement_px]).all()
            assert r.loss_after <= r.loss_before
            assert r.displacement_px >= 0
        proximal = [k for k in range(17) if k not in distal]
        np.testing.assert_allclose(p_on.keypoints[proximal], p_off.keypoints[proximal])
    # batched over images: the same as one at a time
    both = pipe.estimate_many(
        [(img, PoseOptions(boxes=boxes)), (img[:, ::-1].copy(), PoseOptions(boxes=boxes))]
    )
    np.testing.assert_allclose(both[0].persons[0].keypoints, on.persons[0].keypoints, atol=1e-4)
    # the metadata follows the settings in use (it is built once per configuration)
    assert pipe.info["scio"] == pipe.scio_config.to_dict()
    pipe.info["name"] = "changed by a caller"  # a copy: the next caller sees the bundle's own
    assert pipe.info["name"] != "changed by a caller"
    pipe.scio_config = replace(pipe.scio_config, radius=pipe.scio_config.radius + 1.0)
    assert pipe.info["scio"]["radius"] == pipe.scio_config.radius


def test_a_bundle_whose_groups_do_not_match_its_spec_is_refused(
    nets_and_bundle, tmp_path: Path
) -> None:
    _, _, root = nets_and_bundle
    src = root.parent / f"{root.name}-src"
    bad = make_fake_bundle(
        tmp_path / "bad",
        scio_files={r: root / f"{r}.onnx" for r in (GAMMA_CONTEXT, GAMMA_HEAD)},
        scio_settings={"groups": list(reversed(GROUP_NAMES)), "search": {}},
    )
    assert src.exists()
    with pytest.raises(ValueError, match="groups"):
        PosePipeline.from_path(bad, device="cpu")
    assert replace(SEARCH, iterations=1).iterations == 1


def test_phi_and_gammas_context_run_side_by_side_on_half_the_threads(nets_and_bundle) -> None:
    _, _, root = nets_and_bundle
    side = PosePipeline.from_path(root, device="cpu", intra_op_threads=4)
    alone = PosePipeline.from_path(root, device="cpu", intra_op_threads=4, scio_parallel=False)
    assert side._parallel is not None
    assert alone._parallel is None

    def threads(model) -> int:
        return model.session.get_session_options().intra_op_num_threads

    assert side.predictor is not None
    assert side.verifier is not None
    assert threads(side.predictor.model) == threads(side.verifier.context_model) == 2
    assert threads(side.verifier.head_model) == threads(side.pose) == 4
    assert alone.predictor is not None
    assert threads(alone.predictor.model) == 4
    # one thread: nothing to run side by side
    assert PosePipeline.from_path(root, device="cpu", intra_op_threads=1)._parallel is None
    img, boxes = _image_and_boxes()
    a = side.estimate(img, PoseOptions(boxes=boxes))
    b = alone.estimate(img, PoseOptions(boxes=boxes))
    for pa, pb in zip(a.persons, b.persons, strict=True):
        np.testing.assert_array_equal(pa.keypoints, pb.keypoints)
        assert pa.refinements == pb.refinements


def test_gammas_context_keeps_every_thread_where_phi_does_not_run(nets_and_bundle) -> None:
    _, _, root = nets_and_bundle
    no_phi = replace(SEARCH, prior="backbone", hypotheses=("backbone", "peaks"))
    pipe = PosePipeline.from_path(root, device="cpu", intra_op_threads=4, scio_config=no_phi)
    assert pipe._parallel is None
    assert pipe.verifier is not None
    assert pipe.verifier.context_model.session.get_session_options().intra_op_num_threads == 4


def test_refinements_go_to_their_own_person_in_row_order() -> None:
    """`_refinements` builds every person's list in one pass: rows interleaved across persons
    land with their person in row order, displacements in image pixels of that person's box,
    losses and confidences None where not finite or missing (a confidence array shorter than the
    rows, as without calibration)."""
    from types import SimpleNamespace

    from models.keypoints import COCO17
    from models.scio_search import SearchResult
    from service.pipeline import PosePipeline, _Persons

    rows = np.array([2, 0, 2, 1])  # persons of the rows, interleaved
    search = SearchResult(
        coords=np.zeros((3, 17, 2)),
        person=rows,
        group=np.array([0, 2, 3, 4]),
        keypoint=np.array([9, 15, 16, 3]),
        start=np.zeros((4, 2)),
        backbone=np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]),
        end=np.array([[3.0, 4.0], [1.0, 1.0], [2.0, 2.0], [3.0, 5.0]]),
        loss_before=np.array([0.5, np.nan, 0.25, np.inf]),
        loss_after=np.array([0.25, np.nan, 0.25, 1.0]),
        accepted=np.array([True, False, False, True]),
        calls=1,
    )
    search.confidence = np.array([0.9, 0.1])  # shorter than the rows
    persons = _Persons(
        item=np.zeros(3, np.intp), boxes=np.zeros((3, 4)), box_scores=np.ones(3),
        centers=np.zeros((3, 2)), scales=np.array([[0.48, 0.64], [0.96, 1.28], [0.24, 0.32]]),
    )  # fmt: skip
    fake = SimpleNamespace(codec=SimpleNamespace(heatmap_hw=(64, 48)), spec=COCO17)
    out = PosePipeline._refinements(fake, search, persons)  # type: ignore[arg-type]
    assert sorted(out) == [0, 1, 2]
    assert [r.keypoint for r in out[2]] == [9, 16]
    assert [r.group for r in out[2]] == ["left_arm", "right_leg"]
    assert out[2][0].displacement_px == 5.0 * 0.24 * 200.0 / 48  # 5 heatmap px
    assert out[2][0].loss_before == 0.5
    assert out[2][0].confidence == 0.9
    assert out[2][1].confidence is None  # row 2: beyond the confidence array
    assert out[0][0].loss_before is None  # NaN
    assert out[0][0].accepted is False
    assert out[1][0].loss_before is None  # inf
    assert out[1][0].loss_after == 1.0
    assert out[1][0].displacement_px == 2.0 * 0.96 * 200.0 / 48
    assert PosePipeline._refinements(fake, None, persons) == {}  # type: ignore[arg-type]
