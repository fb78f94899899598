"""The alternating SCIO training steps: what each network sees of the other (issue 13, B1/B2)."""

import pytest

torch = pytest.importorskip("torch")

from models.keypoints import COCO17  # noqa: E402
from models.scio_nets import ScioNet, ScioNetConfig  # noqa: E402
from training.config import SCIO_PRESETS  # noqa: E402
from training.train_scio import (  # noqa: E402
    DISPLACEMENTS,
    BackboneOutputs,
    _epoch,
    gamma_step,
    group_rows,
    render,
)

HW = (16, 12)
SIGMA = 1.5
CFG = SCIO_PRESETS["cpu-small"]


def _nets(dropout: float = 0.5) -> tuple[ScioNet, ScioNet]:
    torch.manual_seed(0)
    cfg = ScioNetConfig(
        feature_channels=4,
        context_widths=(4, 4, 4),
        head_widths=(2, 2, 2),
        context_blocks=1,
        head_start_level=0,
        feature_dropout=dropout,
    )
    return ScioNet(cfg), ScioNet(cfg)


def _outputs(n: int) -> BackboneOutputs:
    g = torch.Generator().manual_seed(1)
    k = COCO17.num_keypoints
    joints = torch.rand(n, k, 2, generator=g) * torch.tensor([HW[1] - 1.0, HW[0] - 1.0])
    return BackboneOutputs(
        heatmaps=torch.rand(n, k, *HW, generator=g).half(),
        features=torch.randn(n, 4, *HW, generator=g).half(),
        joints=joints,
        visible=torch.ones(n, k, dtype=torch.bool),
    )


def test_ranking_candidates_share_one_head_batch() -> None:
    """B1: in train mode BatchNorm normalises by the batch, so the true D and the displaced
    candidates it is ranked against must be scored in the same call of Γ's head."""
    phi, gamma = _nets()
    b = group_rows(_outputs(4), torch.arange(4), COCO17, SIGMA)
    assert b is not None
    calls: list[torch.Tensor] = []
    head = gamma.head

    def spy(ctx, h3, ctx_index=None):  # type: ignore[no-untyped-def]
        calls.append(h3.detach())
        return head(ctx, h3, ctx_index)

    gamma.head = spy  # type: ignore[method-assign]
    gamma.train()
    gamma_step(gamma, phi, b, CFG, SIGMA, torch.Generator().manual_seed(0))
    truth = render(b.xd, HW, SIGMA)

    def holds_truth(h3: torch.Tensor) -> bool:
        return len(h3) >= len(truth) and bool(torch.allclose(h3[: len(truth)], truth))

    with_truth = [h3 for h3 in calls if holds_truth(h3)]
    assert with_truth, "no head call scored the true D"
    rows = len(b.xd)
    assert max(len(h3) for h3 in with_truth) >= rows * (1 + len(DISPLACEMENTS))


def test_frozen_partner_keeps_its_statistics_and_drops_nothing() -> None:
    """B2: during Φ's step Γ must be in eval mode (running statistics unchanged, no feature
    dropout), and the other way round."""
    phi, gamma = _nets(dropout=0.5)
    data = _outputs(2 * CFG.batch_size)
    modes: dict[str, list[bool]] = {"phi": [], "gamma": []}
    for name, net in (("phi", phi), ("gamma", gamma)):
        net.register_forward_pre_hook(
            lambda m, args, name=name: modes[name].append(m.training)  # type: ignore[misc]
        )
    before = {k: v.clone() for k, v in gamma.state_dict().items()}
    opt_phi = torch.optim.Adam(phi.parameters(), lr=1e-3)
    opt_gamma = torch.optim.Adam(gamma.parameters(), lr=1e-3)
    # one batch: step 0 only, which is Φ's
    one = BackboneOutputs(
        *(t[: CFG.batch_size] for t in (data.heatmaps, data.features, data.joints, data.visible))
    )
    _epoch(phi, gamma, opt_phi, opt_gamma, one, COCO17, CFG, SIGMA,
           torch.Generator().manual_seed(0), 0)  # fmt: skip
    after = gamma.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved == [], f"Γ changed during Φ's step: {moved[:5]}"
    assert modes["gamma"], "Γ did not run during Φ's step"
    assert not any(modes["gamma"]), "Γ ran in train mode during Φ's step"
    assert all(modes["phi"])
    assert gamma.training  # train mode restored for its own step

    # both steps: Φ stays put during Γ's step
    modes["phi"].clear()
    modes["gamma"].clear()
    two = BackboneOutputs(
        *(
            t[: 2 * CFG.batch_size]
            for t in (data.heatmaps, data.features, data.joints, data.visible)
        )
    )
    phi_before = {k: v.clone() for k, v in phi.state_dict().items()}
    snapshots: list[dict[str, torch.Tensor]] = []
    step = opt_phi.step

    def record(*a, **kw):  # type: ignore[no-untyped-def]
        out = step(*a, **kw)
        snapshots.append({k: v.clone() for k, v in phi.state_dict().items()})
        return out

    opt_phi.step = record  # type: ignore[method-assign]
    _epoch(phi, gamma, opt_phi, opt_gamma, two, COCO17, CFG, SIGMA,
           torch.Generator().manual_seed(1), 0)  # fmt: skip
    assert len(snapshots) == 1  # one Φ step, then one Γ step
    end = phi.state_dict()
    moved = [k for k in end if not torch.equal(snapshots[0][k], end[k])]
    assert moved == [], f"Φ changed during Γ's step: {moved[:5]}"
    assert any(not torch.equal(phi_before[k], end[k]) for k in end)  # Φ did learn in its step


def test_normalized_score_is_the_same_in_training_and_search() -> None:
    import numpy as np

    from models.scio_search import self_constraint_loss
    from training.train_scio import constraint_loss

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 1, *HW, generator=g), torch.rand(5, 1, *HW, generator=g)
    for score in ("l2", "normalized"):
        t = constraint_loss(a, b, score).numpy()
        n = self_constraint_loss(a[:, 0].numpy(), b[:, 0].numpy(), score)
        assert np.allclose(t, n, rtol=1e-5), score
    # amplitude-free: scaling Γ's output changes the L2 loss, not the normalised one
    s1 = constraint_loss(a, b, "normalized")
    assert torch.allclose(s1, constraint_loss(a, 3 * b, "normalized"), atol=1e-6)
    assert not torch.allclose(constraint_loss(a, b), constraint_loss(a, 3 * b))


def test_heatmap_argmax_matches_the_decoder() -> None:
    import numpy as np

    from models.codec import decode_argmax
    from training.train_scio import heatmap_argmax

    g = torch.Generator().manual_seed(2)
    pts = torch.rand(20, 2, generator=g) * torch.tensor([HW[1] - 1.0, HW[0] - 1.0])
    heat = render(pts, HW, SIGMA) + 0.01 * torch.rand(20, 1, *HW, generator=g)
    want, _ = decode_argmax(heat[:, 0].numpy())
    assert np.allclose(heatmap_argmax(heat).numpy(), want)


def test_search_candidates_term_prefers_a_verifier_that_ranks_the_truth_first() -> None:
    from dataclasses import replace

    from training.train_scio import GroupBatch, search_candidates

    hw, sigma = (16, 12), 1.0
    xd = torch.tensor([[6.0, 8.0], [5.0, 7.0]])
    ys, xs = torch.meshgrid(torch.arange(hw[0]), torch.arange(hw[1]), indexing="ij")

    def centroid(m: torch.Tensor) -> torch.Tensor:
        m = m[:, 0]
        return torch.stack([(m * xs).sum((1, 2)), (m * ys).sum((1, 2))], 1) / m.sum((1, 2))[:, None]

    class Fake:
        """Γ whose prediction is G(candidate + shift): its loss against H_A = G(xd) is
        smallest at xd - shift."""

        def __init__(self, shift: float) -> None:
            self.shift = torch.tensor([shift, 0.0])

        def head(self, ctx, h3, rows):  # type: ignore[no-untyped-def]
            return render(centroid(h3) + self.shift, hw, sigma)

    class FakePhi:
        def __call__(self, h1, h2, h3, f, group):  # type: ignore[no-untyped-def]
            return render(xd + torch.tensor([2.0, 1.0]), hw, sigma)  # Φ off by (2, 1)

    ha = render(xd, hw, sigma)
    hd = render(xd + torch.tensor([-3.0, 0.0]), hw, sigma)  # the backbone off by 3
    z = torch.zeros(2, 1, *hw)
    b = GroupBatch(z, z, ha, hd, torch.zeros(2, 1, *hw), torch.zeros(2, dtype=torch.long),
                   ha, ha, xd)  # fmt: skip
    cfg = replace(CFG, candidates_weight=1.0, score="normalized")
    phi = FakePhi()
    losses = []
    for shift in (0.0, 1.0, 3.0):
        gen = torch.Generator().manual_seed(0)
        losses.append(search_candidates(Fake(shift), phi, None, b, cfg, sigma, gen))  # type: ignore[arg-type]
    assert all(torch.isfinite(x) for x in losses)
    assert losses[0] < losses[1] < losses[2]
