"""training.onnx_export.fold_sum_batchnorm: the context stem's BatchNorm folded into the two
convolutions it normalises the sum of, in the graphs the SCIO exporters write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from models.scio_nets import ScioNet, ScioNetConfig  # noqa: E402
from tests.training.support import trained_looking_batchnorms  # noqa: E402
from training.onnx_export import fold_sum_batchnorm, gather_features_by_person  # noqa: E402
from training.scio_export import export_gamma_checked, export_phi_checked  # noqa: E402

HW = (32, 24)


def _trained_looking(seed: int = 0) -> ScioNet:
    """Random weights and BatchNorm statistics far from the identity, so that folding matters."""
    torch.manual_seed(seed)
    net = ScioNet(ScioNetConfig()).eval()
    trained_looking_batchnorms(net, seed)
    return net


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _stem_bn_is_gone(path: Path) -> bool:
    graph = onnx.load(str(path)).graph
    producer = {o: n for n in graph.node for o in n.output}
    return not any(
        n.op_type == "BatchNormalization" and producer[n.input[0]].op_type == "Add"
        for n in graph.node
    )


def test_the_exporters_write_the_stem_folded_and_equal_to_torch(tmp_path: Path) -> None:
    net = _trained_looking()
    ctx, _head, d_gamma = export_gamma_checked(net, tmp_path, HW)  # parity-checked vs torch
    phi, d_phi = export_phi_checked(net, tmp_path, HW)
    assert _stem_bn_is_gone(ctx)
    assert _stem_bn_is_gone(phi)
    # the stem's was the only BatchNorm ONNX Runtime could not fold itself
    assert "BatchNormalization" not in _ops(ctx)
    # and the parity checks ran on the folded graphs, against the unfolded torch net
    assert d_gamma < 1e-4
    assert d_phi < 1e-4


def test_fold_keeps_the_function_and_leaves_what_it_cannot_fold(tmp_path: Path) -> None:
    from models.scio_nets import export_onnx

    net = _trained_looking(seed=1)
    ctx, head = tmp_path / "ctx.onnx", tmp_path / "head.onnx"
    export_onnx(net, ctx, head, HW)
    model = onnx.load(str(ctx))
    before = ort.InferenceSession(model.SerializeToString())
    rng = np.random.default_rng(0)
    feed = {
        "h1": rng.random((5, 1, *HW), dtype=np.float32),
        "h2": rng.random((5, 1, *HW), dtype=np.float32),
        "features": rng.standard_normal((5, 32, *HW)).astype(np.float32),
        "group": np.arange(5, dtype=np.int64) % 6,
    }
    want = before.run(None, feed)
    assert fold_sum_batchnorm(model) == 1
    assert fold_sum_batchnorm(model) == 0  # nothing left to fold
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString()).run(None, feed)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))

    # where the sum is read by anything else, the BatchNorm stays (folding would change it)
    model = onnx.load(str(ctx))
    add = next(n for n in model.graph.node if n.op_type == "Add")
    model.graph.output.append(onnx.helper.make_tensor_value_info(add.output[0], 1, None))
    assert fold_sum_batchnorm(model) == 0


def test_features_per_person_give_the_rows_they_name(tmp_path: Path) -> None:
    """`gather_features_by_person`: the graph fed P persons' maps and each row's person gives
    what the original gives fed the rows' maps."""
    from training.scio_export import export_phi

    net = _trained_looking(seed=2)
    path = export_phi(net, tmp_path / "phi.onnx", HW)
    model = onnx.load(str(path))
    before = ort.InferenceSession(model.SerializeToString())
    assert gather_features_by_person(model) is True
    assert gather_features_by_person(model) is False  # already rewritten
    after = ort.InferenceSession(model.SerializeToString())
    assert [i.name for i in after.get_inputs()][-1] == "person_index"
    rng = np.random.default_rng(1)
    persons = rng.standard_normal((3, 32, *HW)).astype(np.float32)
    person = np.array([0, 0, 2, 1, 2, 2], dtype=np.int64)
    feed = {k: rng.random((6, 1, *HW), dtype=np.float32) for k in ("h1", "h2", "h3")}
    feed["group"] = np.array([0, 1, 2, 3, 4, 5], dtype=np.int64)
    (want,) = before.run(None, {**feed, "features": persons[person]})
    (got,) = after.run(None, {**feed, "features": persons, "person_index": person})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
