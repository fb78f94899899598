from dataclasses import replace

import numpy as np
import pytest

from models.codec import render_gaussians
from models.keypoints import COCO17
from models.scio_search import ScioSearchConfig, grid_offsets, refine

HW = (32, 24)
SIGMA = 1.5
GROUPS = COCO17.groups
RNG = np.random.default_rng(11)


class KnownGamma:
    """Γ(H_B, H_C, G(x); f) = G(centroid(G(x)) + v_group): its loss against H_A = G(x* + v) is
    smallest at x = x*. The context is per row and holds v; calls are counted."""

    def __init__(self, offsets: np.ndarray) -> None:
        self.offsets = offsets  # (groups, 2)
        self.context_calls = 0
        self.head_calls = 0

    def context(self, hb, hc, f, group):
        self.context_calls += 1
        return self.offsets[group]

    def head(self, context, index, hd):
        self.head_calls += 1
        ys, xs = np.mgrid[0 : HW[0], 0 : HW[1]]
        m = hd.reshape(len(hd), *HW).astype(np.float64)
        tot = m.sum((1, 2))
        cx = (m * xs).sum((1, 2)) / tot
        cy = (m * ys).sum((1, 2)) / tot
        centre = np.stack([cx, cy], 1) + context[index]
        return render_gaussians(centre, HW, SIGMA)


def _problem(n: int, shift: float = 2.5):
    """n persons; for every group, the true D is x*, the backbone's D is x* + a shift of
    `shift` px in a random direction, and H_A = G(x* + v)."""
    k = COCO17.num_keypoints
    offsets = RNG.uniform(-3, 3, (len(GROUPS), 2))
    truth = RNG.uniform([7, 7], [HW[1] - 8, HW[0] - 8], (n, k, 2))
    coords = truth.copy()
    heat = np.zeros((n, k, *HW), np.float32)
    for gi, g in enumerate(GROUPS):
        ang = RNG.uniform(0, 2 * np.pi, n)
        coords[:, g.d] = truth[:, g.d] + shift * np.stack([np.cos(ang), np.sin(ang)], 1)
        heat[:, g.a] = render_gaussians(truth[:, g.d] + offsets[gi], HW, SIGMA)
    scores = np.ones((n, k))
    feats = np.zeros((n, 4, *HW), np.float32)
    return heat, feats, coords, scores, truth, KnownGamma(offsets)


def _distal_error(res, truth):
    d = np.array([g.d for g in GROUPS])
    return np.linalg.norm(res.coords[:, d] - truth[:, d], axis=-1)


@pytest.mark.parametrize(
    "config",
    [ScioSearchConfig(strategy="descent"), ScioSearchConfig(strategy="grid", grid_step=0.5)],
    ids=["descent", "grid"],
)
def test_both_strategies_find_the_known_minimum_within_a_step(config) -> None:
    heat, feats, coords, scores, truth, gamma = _problem(5)
    res = refine(heat, feats, coords, scores, GROUPS, gamma, config, sigma=SIGMA)
    err = _distal_error(res, truth)
    step = config.step if config.strategy == "descent" else config.grid_step
    assert err.max() < step, err.max()
    assert res.accepted.all()
    assert np.all(res.loss_after < res.loss_before)
    assert gamma.context_calls == 1  # the candidate-independent part: once for all rows
    if config.strategy == "grid":
        assert res.calls == 1
    else:
        assert 2 <= res.calls <= 1 + config.iterations


def test_descent_converges_finer_than_its_first_step() -> None:
    heat, feats, coords, scores, truth, gamma = _problem(4)
    res = refine(heat, feats, coords, scores, GROUPS, gamma, ScioSearchConfig(), sigma=SIGMA)
    # halving from 1.5 down to 0.375 gets within a fraction of the last step, and stops early
    assert _distal_error(res, truth).max() < 0.3
    assert res.calls < 20


def test_batched_equals_one_candidate_at_a_time_and_one_person_at_a_time() -> None:
    heat, feats, coords, scores, _, gamma = _problem(3)
    cfg = ScioSearchConfig(iterations=6)
    together = refine(heat, feats, coords, scores, GROUPS, gamma, cfg, sigma=SIGMA)
    single = refine(heat, feats, coords, scores, GROUPS, gamma, cfg, sigma=SIGMA, batched=False)
    np.testing.assert_allclose(single.coords, together.coords)
    np.testing.assert_allclose(single.loss_after, together.loss_after)
    assert single.calls > 10 * together.calls
    for p in range(3):
        alone = refine(
            heat[p : p + 1],
            feats[p : p + 1],
            coords[p : p + 1],
            scores[p : p + 1],
            GROUPS,
            gamma,
            cfg,
            sigma=SIGMA,
        )
        np.testing.assert_allclose(alone.coords[0], together.coords[p], atol=1e-9)


def test_low_confidence_groups_are_skipped() -> None:
    heat, feats, coords, scores, _, gamma = _problem(2)
    scores[0, GROUPS[0].a] = 0.05  # person 0, left arm: its elbow (in no other group) is unsure
    res = refine(heat, feats, coords, scores, GROUPS, gamma, ScioSearchConfig(), sigma=SIGMA)
    rows = set(zip(res.person.tolist(), res.group.tolist(), strict=True))
    assert (0, 0) not in rows
    assert (1, 0) in rows
    assert len(rows) == 2 * len(GROUPS) - 1
    np.testing.assert_array_equal(res.coords[0, GROUPS[0].d], coords[0, GROUPS[0].d])


def test_confident_distal_keypoints_can_be_left_alone() -> None:
    heat, feats, coords, scores, _, gamma = _problem(2)
    d = GROUPS[2].d  # left ankle
    scores[:] = 0.5
    scores[1, d] = 0.95
    cfg = ScioSearchConfig(max_distal_confidence=0.9)
    res = refine(heat, feats, coords, scores, GROUPS, gamma, cfg, sigma=SIGMA)
    rows = set(zip(res.person.tolist(), res.group.tolist(), strict=True))
    assert (1, 2) not in rows
    assert (0, 2) in rows
    np.testing.assert_array_equal(res.coords[1, d], coords[1, d])


def test_a_move_is_kept_only_if_the_loss_improves_by_the_margin() -> None:
    heat, feats, coords, scores, _, gamma = _problem(2)
    cfg = ScioSearchConfig(min_improvement=0.9999)
    res = refine(heat, feats, coords, scores, GROUPS, gamma, cfg, sigma=SIGMA)
    assert not res.accepted.any()
    np.testing.assert_array_equal(res.coords, coords)
    np.testing.assert_array_equal(res.loss_after, res.loss_before)


def test_the_search_stays_in_the_radius_and_inside_the_heatmap() -> None:
    heat, feats, coords, scores, _, gamma = _problem(3, shift=7.0)
    cfg = ScioSearchConfig(radius=2.0)
    res = refine(heat, feats, coords, scores, GROUPS, gamma, cfg, sigma=SIGMA)
    assert np.linalg.norm(res.end - res.start, axis=1).max() <= 2.0 + 1e-9
    # a true position outside the map: the result is clamped to the map
    heat2, feats2, coords2, scores2, _, gamma2 = _problem(1)
    g = GROUPS[0]
    coords2[0, g.d] = [1.0, 1.0]
    heat2[0, g.a] = render_gaussians(np.array([-3.0, -2.0]) + gamma2.offsets[0], HW, SIGMA)
    res2 = refine(heat2, feats2, coords2, scores2, GROUPS, gamma2, ScioSearchConfig(), sigma=SIGMA)
    assert res2.coords.min() >= 0
    assert res2.coords[..., 0].max() <= HW[1] - 1
    assert res2.coords[..., 1].max() <= HW[0] - 1


@pytest.mark.parametrize("n", [0, 1, 40])
def test_no_nan_for_empty_single_and_many_persons(n) -> None:
    heat, feats, coords, scores, _, gamma = _problem(n)
    for strategy in ("descent", "grid"):
        res = refine(
            heat,
            feats,
            coords,
            scores,
            GROUPS,
            gamma,
            ScioSearchConfig(strategy=strategy, iterations=5),
            sigma=SIGMA,
        )
        assert res.coords.shape == (n, 17, 2)
        assert np.isfinite(res.coords).all()
        assert np.isfinite(res.loss_before).all()
        assert np.isfinite(res.loss_after).all()
        assert len(res.person) == n * len(GROUPS)


def test_phi_and_fusion_priors_move_the_start() -> None:
    heat, feats, coords, scores, truth, gamma = _problem(2)

    def phi(ha, hb, hc, f, group):  # a perfect Φ: predicts D at the truth
        d = np.array([GROUPS[g].d for g in group])
        return render_gaussians(truth[np.arange(len(group)) // len(GROUPS), d], HW, SIGMA)

    base = ScioSearchConfig(iterations=0)
    r_phi = refine(
        heat, feats, coords, scores, GROUPS, gamma, replace(base, prior="phi"), phi=phi, sigma=SIGMA
    )
    d = np.array([g.d for g in GROUPS])
    assert np.abs(r_phi.start - truth[:, d].reshape(-1, 2)).max() <= 0.5  # argmax + quarter
    np.testing.assert_allclose(r_phi.backbone, coords[:, d].reshape(-1, 2))
    # fusion with the backbone's own D heatmap (empty here) is Φ's peak, scaled
    r_fuse = refine(
        heat,
        feats,
        coords,
        scores,
        GROUPS,
        gamma,
        replace(base, prior="fusion", fusion_weight=0.3),
        phi=phi,
        sigma=SIGMA,
    )
    np.testing.assert_allclose(r_fuse.start, r_phi.start)


def test_prior_radius_keeps_the_backbones_choice_of_peak() -> None:
    """With `prior_radius`, the prior's map is decoded near the backbone's D: Φ's peak within
    the radius moves the start there; a higher peak of the fused map farther away (the other
    foot, for a split pair) does not, where the global decode jumps to it."""
    heat, feats, coords, scores, _, gamma = _problem(2)
    d = np.array([g.d for g in GROUPS])
    near = coords[:, d] + np.array([1.0, 0.5])  # Φ's D 1.1 px from the backbone's
    toward_middle = np.where(coords[:, d, 1:] < HW[0] / 2, 7.0, -7.0)
    far = coords[:, d] + np.concatenate([0 * toward_middle, toward_middle], -1)  # 7 px away
    n_rows = 2 * len(GROUPS)

    def phi(ha, hb, hc, f, group):
        p = np.arange(len(group)) // len(GROUPS)
        return 0.6 * render_gaussians(near[p, group], HW, SIGMA) + 2 * render_gaussians(
            far[p, group], HW, SIGMA
        )

    heat = heat.copy()
    for p in range(2):
        heat[p, d] = render_gaussians(coords[p, d], HW, SIGMA) * 0.5
    base = ScioSearchConfig(iterations=0, prior="fusion", fusion_weight=0.5, unit="px")
    run = lambda cfg: refine(  # noqa: E731
        heat, feats, coords, scores, GROUPS, gamma, cfg, phi=phi, sigma=SIGMA, decode="dark"
    )
    anywhere = run(base).start
    nearby = run(replace(base, prior_radius=3.0)).start
    assert anywhere.shape == nearby.shape == (n_rows, 2)
    # the global decode goes to the far peak; the local one stays between the two near peaks
    assert np.linalg.norm(anywhere - far.reshape(-1, 2), axis=1).max() < 1.0
    b = coords[:, d].reshape(-1, 2)
    dist_b = np.linalg.norm(nearby - b, axis=1)
    dist_phi = np.linalg.norm(nearby - near.reshape(-1, 2), axis=1)
    assert (dist_b > 0.2).all()
    assert (dist_phi < np.linalg.norm(near - coords[:, d], axis=-1).ravel()).all()
    # Φ alone, decoded near the backbone's D: Φ's near peak, not its higher far one
    phi_near = run(replace(base, prior="phi", prior_radius=3.0)).start
    # (within a pixel: DARK's blurred window still feels the far peak's tail)
    assert np.linalg.norm(phi_near - near.reshape(-1, 2), axis=1).max() < 1.0
    assert np.linalg.norm(phi_near - far.reshape(-1, 2), axis=1).min() > 5.0
    # a radius that covers the map is the global decode; radii scale with the unit
    whole = run(replace(base, prior_radius=100.0)).start
    np.testing.assert_allclose(whole, anywhere)
    in_sigma = run(replace(base, prior_radius=3.0 / SIGMA, unit="sigma")).start
    np.testing.assert_allclose(in_sigma, nearby)
    with pytest.raises(ValueError, match="prior_radius"):
        ScioSearchConfig(prior_radius=-1.0)


def test_grid_offsets_cover_the_disc() -> None:
    g = grid_offsets(2.0, 1.0)
    assert tuple(g[0]) == (0.0, 0.0)
    assert len(g) == 13  # 5x5 lattice points with norm <= 2
    assert np.sqrt((g**2).sum(1)).max() <= 2.0


def test_config_validation_and_round_trip() -> None:
    c = ScioSearchConfig(strategy="grid", radius=3.0)
    assert ScioSearchConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="strategy"):
        ScioSearchConfig(strategy="random")
    with pytest.raises(ValueError, match="unknown"):
        ScioSearchConfig.from_dict({"steps": 3})


def test_local_maxima_skip_the_global_one_and_near_duplicates() -> None:
    from models.scio_search import local_maxima

    pts = np.array([[5.0, 5.0], [15.0, 20.0], [6.0, 6.0], [20.0, 8.0]])
    amp = np.array([1.0, 0.7, 0.9, 0.5])
    heat = (render_gaussians(pts, HW, 1.0) * amp[:, None, None]).max(0)[None].astype(np.float32)
    pos, val = local_maxima(heat, 2)
    assert pos[0].tolist() == [[15.0, 20.0], [20.0, 8.0]]  # (6, 6) merges with the top peak
    assert val[0] == pytest.approx([0.7, 0.5], abs=1e-3)


def _local_maxima_by_hand(heat: np.ndarray, count: int, min_distance: float = 2.0) -> tuple:
    """local_maxima's definition, pixel by pixel: every positive pixel not below any 3x3
    neighbour, highest first (row-major among equals), greedily kept when at least
    `min_distance` from those kept, among the map's 16 highest; the first kept is skipped."""
    m, h, w = heat.shape
    pos, val = np.zeros((m, count, 2)), np.zeros((m, count))
    for i in range(m):
        peaks = []
        for y in range(h):
            for x in range(w):
                v = heat[i, y, x]
                nb = heat[i, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
                if v > 0 and v >= nb.max():
                    peaks.append((-float(v), y * w + x, x, y))
        kept: list[tuple[int, int]] = []
        for _, _, x, y in sorted(peaks)[:16]:
            if len(kept) > count:
                break
            if all((x - a) ** 2 + (y - b) ** 2 >= min_distance**2 for a, b in kept):
                kept.append((x, y))
        for k, (x, y) in enumerate(kept[1:]):
            pos[i, k], val[i, k] = (x, y), heat[i, y, x]
    return pos, val


def test_local_maxima_match_their_definition_with_ties_plateaus_and_edges() -> None:
    from models.scio_search import local_maxima

    rng = np.random.default_rng(3)
    pts = rng.uniform([-2, -2], [HW[1] + 1, HW[0] + 1], (40, 4, 2))
    amp = rng.uniform(0.1, 1.0, (40, 4, 1, 1))
    heat = (render_gaussians(pts, HW, 1.5) * amp).max(1).astype(np.float32)
    heat = np.round(heat * 16) / 16  # coarse levels: plateaus and equal peaks near the tops,
    heat[heat < 0.3] = 0.0  # no wide flat tails (the 16 kept among >16 equals are arbitrary)
    heat[::7] = 0.0  # maps with nothing
    heat[1::9, 3:5, 3:5] = 2.0  # a flat top, and maps whose peaks sit on the border
    heat[2::9, 0, :] = np.linspace(0, 1, HW[1])
    # count 1 (min_distance <= 2) takes a loop-free path; 2 and 4 the greedy loop
    for count, min_distance in ((1, 2.0), (1, 1.5), (1, 1.0), (2, 2.0), (4, 2.0), (1, 3.0)):
        pos, val = local_maxima(heat, count, min_distance)
        ref_pos, ref_val = _local_maxima_by_hand(heat, count, min_distance)
        np.testing.assert_array_equal(pos, ref_pos)
        np.testing.assert_array_equal(val, ref_val)


def test_hypotheses_reach_a_gross_error_only_where_the_rule_says_so() -> None:
    """The backbone put D on the wrong side (the mirrored keypoint's place): no local search can
    get there, a hypothesis can; a rule that trusts lower loss takes it, an impossible
    threshold does not, and the chosen move is reported."""
    from models.scio_search import ACCEPT_FEATURES

    heat, feats, coords, scores, truth, gamma = _problem(4, shift=0.0)
    g = GROUPS[0]  # left arm: D = left wrist, its mirror the right wrist
    mirror = COCO17.flip_index[g.d]
    coords[:, mirror] = truth[:, g.d]  # the right wrist's estimate sits where the left one is
    coords[:, g.d] = truth[:, g.d] + np.array([9.0, 0.0])  # far beyond a radius-2 search
    coords[:, g.d, 0] = np.minimum(coords[:, g.d, 0], HW[1] - 1.0)
    weights = [0.0] * len(ACCEPT_FEATURES)
    weights[0] = -20.0  # lower loss than the current D -> closer
    base = ScioSearchConfig(strategy="grid", radius=2.0, hypotheses=("mirror",),
                            accept_weights=tuple(weights))  # fmt: skip
    res = refine(heat, feats, coords, scores, GROUPS, gamma, base, sigma=SIGMA,
                 flip_index=COCO17.flip_index)  # fmt: skip
    rows = np.flatnonzero(res.group == 0)
    assert res.hyp_moved[rows].all()
    assert np.allclose(res.coords[:, g.d], truth[:, g.d])
    assert res.accepted[rows].all()
    assert res.hyp_features.shape[-1] == len(ACCEPT_FEATURES)
    never = replace(base, accept_threshold=1.0)
    res2 = refine(heat, feats, coords, scores, GROUPS, gamma, never, sigma=SIGMA,
                  flip_index=COCO17.flip_index)  # fmt: skip
    assert not res2.hyp_moved.any()
    assert np.linalg.norm(res2.coords[:, g.d] - truth[:, g.d], axis=-1).min() > 5
    # per-group thresholds override the shared one: the impossible one for group 0 only
    per_group = replace(base, accept_group_thresholds=(1.0,) + (0.0,) * (len(GROUPS) - 1))
    res3 = refine(heat, feats, coords, scores, GROUPS, gamma, per_group, sigma=SIGMA,
                  flip_index=COCO17.flip_index)  # fmt: skip
    assert not res3.hyp_moved[rows].any()
    open_ = replace(never, accept_group_thresholds=(0.5,) * len(GROUPS))
    res4 = refine(heat, feats, coords, scores, GROUPS, gamma, open_, sigma=SIGMA,
                  flip_index=COCO17.flip_index)  # fmt: skip
    assert res4.hyp_moved[rows].all()
    # one rule per group instead of the shared one: group 0's trusts nothing
    silent = [0.0] * len(ACCEPT_FEATURES)
    per_rule = replace(
        base,
        accept_group_weights=(tuple(silent),) + (tuple(weights),) * (len(GROUPS) - 1),
        accept_group_bias=(-20.0,) + (0.0,) * (len(GROUPS) - 1),
    )
    res5 = refine(heat, feats, coords, scores, GROUPS, gamma, per_rule, sigma=SIGMA,
                  flip_index=COCO17.flip_index)  # fmt: skip
    assert not res5.hyp_moved[rows].any()
    with pytest.raises(ValueError, match="accept_group_bias"):
        replace(base, accept_group_weights=(tuple(weights),), accept_group_bias=())


def test_calibrated_confidence_is_a_probability_or_absent() -> None:
    heat, feats, coords, scores, _, gamma = _problem(3)
    plain = refine(heat, feats, coords, scores, GROUPS, gamma, ScioSearchConfig(), sigma=SIGMA)
    assert np.isnan(plain.confidence).all()
    cfg = ScioSearchConfig(confidence_weights=(-4.0, 3.0), confidence_bias=0.5)
    res = refine(heat, feats, coords, scores, GROUPS, gamma, cfg, sigma=SIGMA)
    z = -4.0 * res.loss_after + 3.0 * scores[res.person, res.keypoint] + 0.5
    assert np.allclose(res.confidence, 1 / (1 + np.exp(-z)))
    with pytest.raises(ValueError, match="confidence_weights needs 2"):
        ScioSearchConfig(confidence_weights=(1.0,))
    with pytest.raises(ValueError, match="unknown hypotheses"):
        ScioSearchConfig(hypotheses=("elsewhere",))
    # settings travel through JSON (lists) and back
    back = ScioSearchConfig.from_dict(
        {**cfg.to_dict(), "hypotheses": ["peaks"], "confidence_weights": [-4.0, 3.0]}
    )
    assert back.hypotheses == ("peaks",)
    assert back.confidence_weights == (-4.0, 3.0)


def test_confidence_inputs_are_what_they_say() -> None:
    """Each CONFIDENCE_FEATURES column against its definition, and a calibration over a named
    subset uses exactly those columns."""
    from models.scio_search import CONFIDENCE_FEATURES

    heat, feats, coords, scores, _, gamma = _problem(3)
    res = refine(heat, feats, coords, scores, GROUPS, gamma, ScioSearchConfig(), sigma=SIGMA,
                 flip_index=COCO17.flip_index)  # fmt: skip
    x = res.confidence_inputs
    assert x.shape == (len(res.person), len(CONFIDENCE_FEATURES))
    col = {n: x[:, i] for i, n in enumerate(CONFIDENCE_FEATURES)}
    g = np.array([[gr.a, gr.b, gr.c, gr.d] for gr in GROUPS])[res.group]
    assert np.allclose(col["loss_end"], res.loss_after)
    assert np.allclose(col["peak"], scores[res.person, res.keypoint])
    assert np.allclose(col["anchor_peak"], scores[res.person, g[:, 0]])
    assert np.allclose(
        col["support_peak"], np.minimum(scores[res.person, g[:, 1]], scores[res.person, g[:, 2]])
    )
    mirror = coords[res.person, COCO17.flip_index[res.keypoint]]
    d = np.linalg.norm(mirror - res.end, axis=1)
    assert np.allclose(col["mirror_distance"], np.log1p(d / SIGMA))
    assert (col["phi_distance"] == 0).all()
    assert (col["alt_dloss"] == 0).all()
    # one Gaussian per map: no second local maximum
    assert (col["second_peak"] == 0).all()
    cfg = ScioSearchConfig(
        confidence_features=("mirror_distance", "peak", "anchor_peak"),
        confidence_weights=(0.7, -2.0, 1.5),
        confidence_bias=0.1,
    )
    res2 = refine(heat, feats, coords, scores, GROUPS, gamma, cfg, sigma=SIGMA,
                  flip_index=COCO17.flip_index)  # fmt: skip
    z = 0.7 * col["mirror_distance"] - 2.0 * col["peak"] + 1.5 * col["anchor_peak"] + 0.1
    assert np.allclose(res2.confidence, 1 / (1 + np.exp(-z)))
    with pytest.raises(ValueError, match="unknown confidence features"):
        ScioSearchConfig(confidence_features=("luck",), confidence_weights=(1.0,))
    with pytest.raises(ValueError, match="confidence_weights needs 3"):
        ScioSearchConfig(confidence_features=("peak", "loss_end", "heat_end"),
                         confidence_weights=(1.0,))  # fmt: skip


def test_second_peak_and_alternatives_see_a_rival() -> None:
    """A rival blob in H_D shows up as second_peak (its height over the maximum) and, with the
    peaks hypothesis, as alt_dloss (the rival's loss minus the returned one's)."""
    from models.scio_search import CONFIDENCE_FEATURES

    heat, feats, coords, scores, _, gamma = _problem(2)
    g = GROUPS[0]
    rival = coords[:, g.d] + np.array([6.0, 0.0])
    heat[:, g.d] = render_gaussians(coords[:, g.d], HW, SIGMA)
    heat[:, g.d] += 0.5 * render_gaussians(rival, HW, SIGMA)
    cfg = ScioSearchConfig(hypotheses=("peaks",), iterations=0)
    res = refine(heat, feats, coords, scores, GROUPS, gamma, cfg, sigma=SIGMA)
    col = {n: res.confidence_inputs[:, i] for i, n in enumerate(CONFIDENCE_FEATURES)}
    rows = np.flatnonzero(res.group == 0)
    ys, xs = np.mgrid[0 : HW[0], 0 : HW[1]]
    for r in rows:  # the rival's highest pixel, over the score (1)
        near = (xs - rival[res.person[r], 0]) ** 2 + (ys - rival[res.person[r], 1]) ** 2 <= 1
        assert col["second_peak"][r] == pytest.approx(heat[res.person[r], g.d][near].max())
    assert (col["alt_dloss"][rows] != 0).all()


def test_lengths_in_units_of_sigma_are_the_same_search_in_pixels() -> None:
    """unit "sigma": radius, steps and grid spacing scale with the heatmap Gaussian, so a
    setting chosen at one heatmap resolution means the same at another."""
    from models.scio_search import ScioSearchConfig

    rel = ScioSearchConfig(unit="sigma", radius=2.0, step=0.75, min_step=0.25, grid_step=0.5)
    px = rel.in_pixels(2.0)
    assert (px.unit, px.radius, px.step, px.min_step, px.grid_step) == ("px", 4.0, 1.5, 0.5, 1.0)
    assert rel.in_pixels(3.0).radius == 6.0
    assert ScioSearchConfig(radius=4.0).in_pixels(3.0).radius == 4.0  # px stays px
    assert ScioSearchConfig.from_dict(rel.to_dict()) == rel
    with pytest.raises(ValueError, match="unit"):
        ScioSearchConfig(unit="inches")


def test_the_acceptance_rule_can_read_the_row() -> None:
    """With accept_row_features, each hypothesis's features end with the row's own
    CONFIDENCE_FEATURES at the current D, and the rule can move D only where the row says the
    backbone is unsure (here: its peak)."""
    from models.scio_search import ACCEPT_FEATURES

    heat, feats, coords, scores, _, gamma = _problem(2)
    g = GROUPS[0]
    heat[:, g.d] = render_gaussians(coords[:, g.d], HW, SIGMA)
    heat[:, g.d] += 0.5 * render_gaussians(coords[:, g.d] + np.array([6.0, 0.0]), HW, SIGMA)
    n = len(ACCEPT_FEATURES)
    cfg = ScioSearchConfig(
        hypotheses=("peaks",),
        iterations=0,
        accept_row_features=("peak",),
        accept_weights=(0.0,) * n + (-10.0,),
        accept_bias=5.0,  # P(closer) = sigmoid(5 - 10 · peak)
    )
    sure = refine(heat, feats, coords, scores, GROUPS, gamma, cfg, sigma=SIGMA)
    rows = np.flatnonzero(sure.group == 0)
    assert sure.hyp_features.shape[-1] == n + 1
    valid = sure.hyp_valid[rows]
    assert np.allclose(sure.hyp_features[rows][..., n][valid], 1.0)  # the scores (peaks) are 1
    assert not sure.hyp_moved[rows].any()
    unsure_scores = scores.copy()
    unsure_scores[:, g.d] = 0.3  # below max_distal_confidence, so the row is still examined
    unsure = refine(heat, feats, coords, unsure_scores, GROUPS, gamma, cfg, sigma=SIGMA)
    rows = np.flatnonzero(unsure.group == 0)
    assert unsure.hyp_moved[rows].all()
    with pytest.raises(ValueError, match="accept_weights needs"):
        ScioSearchConfig(accept_row_features=("peak",), accept_weights=(0.0,) * n)
    with pytest.raises(ValueError, match="unknown accept_row_features"):
        ScioSearchConfig(accept_row_features=("luck",))


def test_limb_features_compare_the_limb_at_the_hypothesis_with_the_current_d() -> None:
    """x = log(|D - A| / |A - B|): a hypothesis that makes the forearm as long as the upper arm
    (x = 0) from a current D that makes it 4 times as long has Δx = -log 4 and Δ(x²) = -log² 4."""
    from models.scio_search import limb_features

    anchor = np.array([[10.0, 10.0]])
    support = np.array([[10.0, 2.0]])  # |A - B| = 8
    current = np.array([[10.0, 42.0]])  # |D - A| = 32
    cand = np.array([[[10.0, 18.0], [10.0, 42.0]]])  # 8 px from A; the current D itself
    f = limb_features(cand, current, anchor, support, ("limb_dlog", "limb_dlog2"))
    x_c = np.log(32.5 / 8.5)
    x_h = np.log(8.5 / 8.5)
    assert f.shape == (1, 2, 2)
    assert np.allclose(f[0, 0], [x_h - x_c, x_h**2 - x_c**2])
    assert np.allclose(f[0, 1], 0.0)
    assert np.allclose(limb_features(cand, current, anchor, support, ("limb_dlog2",)), f[..., 1:])


def test_the_acceptance_rule_can_read_the_limb_at_each_hypothesis() -> None:
    """With accept_hyp_features the features end with the limb's plausibility per hypothesis
    (after the row's), and a rule that rewards a smaller Δ(x²) moves D where the hypothesis
    makes the limb more plausible and only there; bundles without them are unchanged."""
    from models.scio_search import ACCEPT_FEATURES

    heat, feats, coords, scores, _, gamma = _problem(2)
    g = GROUPS[0]
    # D's second peak lies 6 px right of D; person 0's elbow A lies 9 px right of D with the
    # shoulder B 3 px beyond (forearm 3x the upper arm; at the peak, as long as it); person 1's
    # elbow lies 3 px left (as long; at the peak, 3x)
    coords[:, g.d] = [12.0, 12.0]
    coords[0, g.a], coords[0, g.b] = [21.0, 12.0], [24.0, 12.0]
    coords[1, g.a], coords[1, g.b] = [9.0, 12.0], [6.0, 12.0]
    heat[:, g.d] = render_gaussians(coords[:, g.d], HW, SIGMA)
    heat[:, g.d] += 0.5 * render_gaussians(coords[:, g.d] + np.array([6.0, 0.0]), HW, SIGMA)
    n = len(ACCEPT_FEATURES)
    base = {"hypotheses": ("peaks",), "iterations": 0, "accept_row_features": ("peak",)}
    plain = refine(
        heat, feats, coords, scores, GROUPS, gamma,
        ScioSearchConfig(**base, accept_weights=(0.0,) * (n + 1), accept_bias=-5.0), sigma=SIGMA,
    )  # fmt: skip
    cfg = ScioSearchConfig(
        **base,
        accept_hyp_features=("limb_dlog", "limb_dlog2"),
        accept_weights=(0.0,) * (n + 2) + (-50.0,),  # P(closer) = sigmoid(-50 · Δ(x²))
    )
    r = refine(heat, feats, coords, scores, GROUPS, gamma, cfg, sigma=SIGMA)
    assert r.hyp_features.shape[-1] == n + 3
    assert np.array_equal(r.hyp_features[..., : n + 1], plain.hyp_features)
    rows = np.flatnonzero(r.group == 0)
    assert np.array_equal(r.person[rows], [0, 1])
    assert r.hyp_moved[rows].tolist() == [True, False]
    assert np.allclose(r.coords[0, g.d], [18.0, 12.0], atol=0.5)
    assert np.allclose(r.coords[1, g.d], [12.0, 12.0])
    assert not plain.hyp_moved.any()
    with pytest.raises(ValueError, match="accept_weights needs"):
        ScioSearchConfig(accept_hyp_features=("limb_dlog",), accept_weights=(0.0,) * n)
    with pytest.raises(ValueError, match="unknown accept_hyp_features"):
        ScioSearchConfig(accept_hyp_features=("elbow_angle",))


def test_the_service_skips_what_only_the_probes_read_and_returns_the_same() -> None:
    """`diagnostics=False` runs Φ and scores hypotheses only in the groups whose rule can move D
    (threshold under 1): positions, losses, moves and confidences are those of the full run;
    Φ sees fewer rows and Γ's head fewer candidates. Where the confidence reads Φ, Φ runs on all."""
    from models.scio_search import ACCEPT_FEATURES, rule_can_move

    heat, feats, coords, scores, truth, gamma = _problem(4, shift=0.0)
    g = GROUPS[0]  # the group that may move: its D sits on the mirrored side, far away
    mirror = COCO17.flip_index[g.d]
    coords[:, mirror] = truth[:, g.d]
    coords[:, g.d] = truth[:, g.d] + np.array([9.0, 0.0])
    coords[:, g.d, 0] = np.minimum(coords[:, g.d, 0], HW[1] - 1.0)
    seen: list[np.ndarray] = []

    def phi(ha, hb, hc, f, group):
        seen.append(np.asarray(group).copy())
        return render_gaussians(truth[:1, g.d].repeat(len(group), 0) + 0.3, HW, SIGMA)

    weights = [0.0] * len(ACCEPT_FEATURES)
    weights[0] = -20.0  # lower loss than the current D -> closer
    n_groups = len(GROUPS)
    cfg = ScioSearchConfig(
        strategy="grid", radius=2.0, hypotheses=("backbone", "phi", "peaks", "mirror"),
        accept_group_weights=(tuple(weights),) * n_groups, accept_group_bias=(0.0,) * n_groups,
        accept_group_thresholds=(0.5,) + (1.0,) * (n_groups - 1),
        confidence_features=("loss_end", "peak", "alt_dloss"),
        confidence_group_weights=((-1.0, 1.0, 0.5),) * n_groups,
        confidence_group_bias=(0.1,) * n_groups,
    )  # fmt: skip
    assert rule_can_move(cfg, np.arange(n_groups)).tolist() == [True] + [False] * (n_groups - 1)
    # one shared rule whose own threshold never moves, but per-group thresholds that do (group 0)
    shared = replace(
        cfg, accept_group_weights=(), accept_group_bias=(), accept_weights=tuple(weights),
        accept_threshold=1.0, confidence_features=("loss_end", "peak", "mirror_distance"),
        confidence_group_weights=((-1.0, 1.0, 0.5),) * n_groups,
    )  # fmt: skip
    assert rule_can_move(shared, np.arange(n_groups)).tolist() == [True] + [False] * (n_groups - 1)

    def run(config, diagnostics):
        seen.clear()
        gamma.head_calls = 0
        sizes = []
        head = gamma.head

        def counted(context, index, hd):
            sizes.append(len(index))
            return head(context, index, hd)

        gamma.head = counted
        try:
            res = refine(
                heat, feats, coords, scores, GROUPS, gamma, config, phi=phi, sigma=SIGMA,
                flip_index=COCO17.flip_index, diagnostics=diagnostics,
            )  # fmt: skip
        finally:
            gamma.head = head
        return res, sum(len(s) for s in seen), sum(sizes)

    no_alt = replace(cfg, confidence_features=("loss_end", "peak", "mirror_distance"))
    second = replace(cfg, confidence_features=("loss_end", "peak", "second_peak"))
    for config, skips in ((cfg, False), (no_alt, True), (second, True), (shared, True)):
        full, phi_rows_full, cands_full = run(config, True)
        lean, phi_rows_lean, cands_lean = run(config, False)
        rows = np.flatnonzero(full.group == 0)
        assert full.hyp_moved[rows].all()  # the move the test is about happens
        for name in ("coords", "end", "loss_before", "loss_after", "accepted", "confidence"):
            np.testing.assert_array_equal(getattr(lean, name), getattr(full, name), err_msg=name)
        if skips:  # alt_dloss not read: hypotheses only where the rule may move
            assert phi_rows_lean == len(rows) < phi_rows_full == len(full.group)
            assert cands_lean < cands_full
            assert not lean.hyp_valid[full.group != 0].any()
        else:  # the confidence reads the hypotheses' losses: nothing skipped
            assert (phi_rows_lean, cands_lean) == (phi_rows_full, cands_full)


def test_the_service_runs_gamma_only_where_its_loss_changes_the_result() -> None:
    """`all_losses=False`: with no search move (descent, 0 iterations) and a confidence that does
    not read Γ's loss, Γ's context and head see only the rows whose rule may move D (group 0);
    coords, moves and confidences equal the full run's, whose losses the lean run keeps there and
    leaves NaN elsewhere. A confidence that reads the loss, or a search, needs Γ everywhere."""
    from models.scio_search import ACCEPT_FEATURES, gamma_rows

    heat, feats, coords, scores, truth, gamma = _problem(4, shift=0.0)
    g = GROUPS[0]  # the group that may move: its D sits on the mirrored side, far away
    coords[:, COCO17.flip_index[g.d]] = truth[:, g.d]
    coords[:, g.d] = truth[:, g.d] + np.array([9.0, 0.0])
    coords[:, g.d, 0] = np.minimum(coords[:, g.d, 0], HW[1] - 1.0)
    weights = [0.0] * len(ACCEPT_FEATURES)
    weights[0] = -20.0  # lower loss than the current D -> closer
    n_groups = len(GROUPS)
    cfg = ScioSearchConfig(
        strategy="descent", iterations=0, hypotheses=("backbone", "peaks", "mirror"),
        accept_group_weights=(tuple(weights),) * n_groups, accept_group_bias=(0.0,) * n_groups,
        accept_group_thresholds=(0.5,) + (1.0,) * (n_groups - 1),
        confidence_features=("peak", "mirror_distance"),
        confidence_group_weights=((1.0, -0.5),) * n_groups, confidence_group_bias=(0.1,) * n_groups,
    )  # fmt: skip
    context = gamma.context
    rows_seen: list[int] = []

    def counted(hb, hc, f, group):
        rows_seen.append(len(group))
        assert len(hb) == len(hc) == len(f) == len(group)
        return context(hb, hc, f, group)

    gamma.context = counted

    def run(config, all_losses):
        rows_seen.clear()
        res = refine(
            heat, feats, coords, scores, GROUPS, gamma, config, sigma=SIGMA,
            flip_index=COCO17.flip_index, diagnostics=False, all_losses=all_losses,
        )  # fmt: skip
        return res, sum(rows_seen)

    full, n_full = run(cfg, True)
    lean, n_lean = run(cfg, False)
    mine = full.group == 0
    assert full.hyp_moved[mine].all()  # the move the test is about happens
    assert n_full == len(full.group) > n_lean == mine.sum()
    np.testing.assert_array_equal(gamma_rows(cfg, full.group, False), np.flatnonzero(mine))
    for name in ("coords", "end", "accepted", "confidence"):
        np.testing.assert_array_equal(getattr(lean, name), getattr(full, name), err_msg=name)
    for name in ("loss_before", "loss_after"):
        np.testing.assert_array_equal(getattr(lean, name)[mine], getattr(full, name)[mine])
        assert np.isnan(getattr(lean, name)[~mine]).all()
    reads_loss = replace(
        cfg, confidence_features=("loss_end", "peak"),
        confidence_group_weights=((-1.0, 1.0),) * n_groups,
    )  # fmt: skip
    searches = replace(cfg, iterations=3)
    for config in (reads_loss, searches):
        full, n_full = run(config, True)
        lean, n_lean = run(config, False)
        assert n_lean == n_full == len(full.group)
        for name in ("coords", "loss_before", "loss_after", "confidence"):
            np.testing.assert_array_equal(getattr(lean, name), getattr(full, name), err_msg=name)
    # no hypotheses, no search, no loss read: Γ is not run at all
    bare = replace(cfg, hypotheses=(), accept_group_weights=(), accept_group_bias=(),
                   accept_group_thresholds=())  # fmt: skip
    lean, n_lean = run(bare, False)
    assert n_lean == 0
    assert lean.calls == 0
    assert np.isnan(lean.loss_after).all()
    np.testing.assert_array_equal(lean.end, lean.start)


def test_where_only_the_confidence_is_left_the_short_path_returns_what_the_full_one_does(
    monkeypatch,
) -> None:
    """The service's refine (no diagnostics, no loss wanted) with settings that never move D
    (no search, rules that cannot move, a confidence that reads neither Γ nor Φ) skips straight to
    the confidence; every field equals the full path's, and neither Γ nor Φ is called."""
    import models.scio_search as ss

    heat, feats, coords, scores, truth, gamma = _problem(3)
    scores = RNG.uniform(0.3, 0.9, scores.shape)  # some distal keypoints skipped as confident
    n_groups = len(GROUPS)
    calls: list[str] = []

    class Watched:
        def context(self, *a):
            calls.append("context")
            return gamma.context(*a)

        def head(self, *a):
            calls.append("head")
            return gamma.head(*a)

    def phi(ha, hb, hc, f, group):
        calls.append("phi")
        return render_gaussians(truth[:1, 9].repeat(len(group), 0), HW, SIGMA)

    weights = (0.5,) * len(ss.ACCEPT_FEATURES)
    shipped = ScioSearchConfig(
        iterations=0, max_distal_confidence=0.6, hypotheses=("backbone", "phi", "peaks", "mirror"),
        accept_group_weights=(weights,) * n_groups, accept_group_bias=(0.0,) * n_groups,
        accept_group_thresholds=(1.0,) * n_groups,
        confidence_features=("peak", "anchor_peak", "mirror_distance"),
        confidence_group_weights=((5.0, 2.0, 0.3),) * n_groups,
        confidence_group_bias=(-3.0,) * n_groups,
    )  # fmt: skip
    variants = {
        "shipped": shipped,
        "second peak and Φ's columns": replace(
            shipped, confidence_features=("second_peak", "phi_distance", "phi_peak"),
        ),
        "row features in the rule": replace(
            shipped, accept_row_features=("peak", "heat_end"),
            accept_group_weights=((*weights, 0.1, 0.2),) * n_groups,
        ),
        "no hypotheses": replace(
            shipped, hypotheses=(), accept_group_weights=(), accept_group_bias=(),
            accept_group_thresholds=(),
        ),
        "uncalibrated": replace(
            shipped, confidence_group_weights=(), confidence_group_bias=(),
        ),
    }  # fmt: skip
    full_path = ss._only_confidence
    for name, config in variants.items():
        for with_phi in (phi, None):
            if with_phi is None and "phi" in config.confidence_features[1:]:
                continue

            def run(short: bool, config: ScioSearchConfig, with_phi):
                monkeypatch.setattr(ss, "_only_confidence", full_path if short else lambda *a: 0)
                calls.clear()
                res = refine(
                    heat, feats, coords, scores, GROUPS, Watched(), config, phi=with_phi,
                    sigma=SIGMA, flip_index=COCO17.flip_index, diagnostics=False,
                    all_losses=False,
                )  # fmt: skip
                return res, list(calls)

            assert full_path(config, np.arange(n_groups), with_phi is not None, False) == (
                config is not variants["second peak and Φ's columns"] or with_phi is None
            )
            short, short_calls = run(True, config, with_phi)
            full, full_calls = run(False, config, with_phi)
            assert short_calls == full_calls
            if config is not variants["second peak and Φ's columns"] or with_phi is None:
                assert short_calls == [], name
            assert 0 < len(full.person) < 3 * n_groups  # confident D skipped, the others kept
            for f in ss.fields(ss.SearchResult):
                a, b = getattr(short, f.name), getattr(full, f.name)
                if isinstance(b, np.ndarray):
                    assert (a.shape, a.dtype) == (b.shape, b.dtype), (name, f.name)
                    np.testing.assert_array_equal(a, b, err_msg=f"{name}: {f.name}")
                else:
                    assert a == b, (name, f.name)


def test_refine_work_counts_the_rows_the_service_runs_each_network_in() -> None:
    """`refine_work` says, without running them, in how many rows the service's refine runs Φ,
    Γ's context and the hypotheses; checked against counted calls for settings that move one
    group (group 0) or none, with confidences that read Φ, Γ's loss or only the heatmaps.
    `confidence_cost` names the features that add rows: Φ's and Γ's where only group 0 moves."""
    from models.scio_search import ACCEPT_FEATURES, confidence_cost, refine_work

    heat, feats, coords, scores, truth, gamma = _problem(3, shift=0.0)
    seen = {"phi": 0, "gamma": 0}

    def phi(ha, hb, hc, f, group):
        seen["phi"] += len(group)
        return render_gaussians(truth[:1, 9].repeat(len(group), 0), HW, SIGMA)

    context = gamma.context

    def counted(hb, hc, f, group):
        seen["gamma"] += len(group)
        return context(hb, hc, f, group)

    gamma.context = counted
    n_groups = len(GROUPS)
    weights = (0.0,) * len(ACCEPT_FEATURES)
    one = ScioSearchConfig(
        iterations=0, hypotheses=("backbone", "phi", "peaks", "mirror"),
        accept_group_weights=(weights,) * n_groups, accept_group_bias=(0.0,) * n_groups,
        accept_group_thresholds=(0.5,) + (1.0,) * (n_groups - 1),
        confidence_features=("peak", "mirror_distance"),
        confidence_group_weights=((1.0, 0.1),) * n_groups, confidence_group_bias=(0.0,) * n_groups,
    )  # fmt: skip
    none = replace(one, accept_group_thresholds=(1.0,) * n_groups)
    every = replace(one, accept_group_thresholds=(0.5,) * n_groups)

    def reads(config, names):
        k = len(names)
        return replace(
            config, confidence_features=names, confidence_group_weights=((0.1,) * k,) * n_groups
        )

    cases = [
        (one, {"phi": 3, "gamma": 3, "hypotheses": 3}),
        (reads(one, ("peak", "phi_peak")), {"phi": 18, "gamma": 3, "hypotheses": 3}),
        (reads(one, ("peak", "loss_end")), {"phi": 3, "gamma": 18, "hypotheses": 3}),
        (none, {"phi": 0, "gamma": 0, "hypotheses": 0}),
        (reads(none, ("phi_distance",)), {"phi": 18, "gamma": 0, "hypotheses": 0}),
        (replace(one, iterations=2), {"phi": 3, "gamma": 18, "hypotheses": 3}),
        (every, {"phi": 18, "gamma": 18, "hypotheses": 18}),
    ]
    for config, expected in cases:
        seen.update(phi=0, gamma=0)
        res = refine(
            heat, feats, coords, scores, GROUPS, gamma, config, phi=phi, sigma=SIGMA,
            flip_index=COCO17.flip_index, diagnostics=False, all_losses=False,
        )  # fmt: skip
        assert len(res.group) == 3 * n_groups
        work = refine_work(config, res.group)
        assert work == expected, (config.confidence_features, work)
        assert (seen["phi"], seen["gamma"]) == (work["phi"], work["gamma"])
        assert int(res.hyp_valid.any(axis=1).sum()) == work["hypotheses"]
    assert confidence_cost(one, n_groups) == {"phi_distance", "phi_peak", "loss_end", "alt_dloss"}
    assert confidence_cost(every, n_groups) == set()  # Φ and Γ run everywhere already
    assert confidence_cost(replace(one, iterations=2), n_groups) == {
        "phi_distance", "phi_peak", "alt_dloss"
    }  # fmt: skip
    assert confidence_cost(one, n_groups, has_phi=False) == {"loss_end", "alt_dloss"}


def test_phi_can_run_beside_gammas_context_and_the_result_is_the_same() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    heat, feats, coords, scores, truth, gamma = _problem(3)
    threads: dict[str, int] = {}

    def phi(ha, hb, hc, f, group):
        threads["phi"] = threading.get_ident()
        d = np.array([GROUPS[g].d for g in group])
        return render_gaussians(truth[np.arange(len(group)) // len(GROUPS), d], HW, SIGMA)

    context = gamma.context

    def recorded_context(*args):
        threads["context"] = threading.get_ident()
        return context(*args)

    gamma.context = recorded_context
    config = ScioSearchConfig(iterations=2, prior="phi", hypotheses=("phi", "peaks"))
    kw = dict(phi=phi, sigma=SIGMA, flip_index=COCO17.flip_index)
    serial = refine(heat, feats, coords, scores, GROUPS, gamma, config, **kw)
    assert threads["phi"] == threads["context"] == threading.get_ident()
    with ThreadPoolExecutor(1) as pool:
        side = refine(heat, feats, coords, scores, GROUPS, gamma, config, parallel=pool, **kw)
        assert threads["context"] == threading.get_ident()
        assert threads["phi"] != threading.get_ident()  # Φ ran on the pool

        def broken(*args):
            raise RuntimeError("Φ failed")

        with pytest.raises(RuntimeError, match="Φ failed"):  # not lost on the other thread
            refine(heat, feats, coords, scores, GROUPS, gamma, config, parallel=pool, phi=broken)
    for name in ("coords", "start", "end", "loss_before", "loss_after", "accepted", "confidence"):
        np.testing.assert_array_equal(getattr(side, name), getattr(serial, name), err_msg=name)


def test_gamma_scores_only_hypotheses_that_exist_and_are_not_the_start() -> None:
    """Starting from the backbone's D, the "backbone" hypothesis is the start itself, and H_D
    here has no local maxima besides its peak, so the "peaks" hypotheses do not exist: Γ's head
    sees the start and the mirror once per row, the backbone's column gets the start's loss, and
    the missing peaks stay invalid."""
    from models.scio_search import ACCEPT_FEATURES

    heat, feats, coords, scores, _, gamma = _problem(3, shift=2.0)
    cfg = ScioSearchConfig(strategy="descent", iterations=0, prior="backbone",
                           hypotheses=("backbone", "peaks", "mirror"))  # fmt: skip
    head = gamma.head
    seen: list[np.ndarray] = []

    def counted(context, index, hd):
        seen.append(np.asarray(index))
        return head(context, index, hd)

    gamma.head = counted
    res = refine(heat, feats, coords, scores, GROUPS, gamma, cfg, sigma=SIGMA,
                 flip_index=COCO17.flip_index)  # fmt: skip
    rows = len(res.group)
    assert sum(len(i) for i in seen) == rows * 2  # not 5 per row
    np.testing.assert_array_equal(res.hyp_valid, [[True, False, False, True]] * rows)
    dloss = res.hyp_features[..., ACCEPT_FEATURES.index("dloss")]
    np.testing.assert_array_equal(dloss[:, 0], 0.0)  # the backbone's column: the start's loss
    assert np.all(dloss[:, 3] != 0.0)


def test_the_number_of_peak_hypotheses_is_a_setting() -> None:
    """`hypothesis_peaks`: how many local maxima of H_D (after its global one) become "peaks"
    hypotheses, the highest first; settings without it keep the two of earlier bundles."""
    heat, feats, coords, scores, _, gamma = _problem(2, shift=0.0)
    d = GROUPS[0].d
    heat[:, d] = render_gaussians(coords[:, d], HW, SIGMA)  # the global peak at the backbone's D
    bumps = np.array([[3.0, 3.0], [20.0, 28.0], [3.0, 28.0]])  # lower, lower still, lowest
    for height, xy in zip((0.6, 0.4, 0.2), bumps, strict=True):
        heat[:, d] = np.maximum(heat[:, d], height * render_gaussians(np.tile(xy, (2, 1)), HW, 1.0))
    base = ScioSearchConfig(strategy="descent", iterations=0, hypotheses=("peaks",))
    assert base.hypothesis_peaks == 2
    found = {}
    for n in (1, 2, 3):
        cfg = replace(base, hypothesis_peaks=n)
        res = refine(heat, feats, coords, scores, GROUPS, gamma, cfg, sigma=SIGMA)
        rows = np.flatnonzero(res.group == 0)
        assert res.hyp_positions.shape[1] == n
        assert res.hyp_valid[rows].all()
        found[n] = res.hyp_positions[rows]
    np.testing.assert_allclose(found[3][0], bumps)  # highest first
    np.testing.assert_array_equal(found[1], found[3][:, :1])
    np.testing.assert_array_equal(found[2], found[3][:, :2])
    old = {k: v for k, v in base.to_dict().items() if k != "hypothesis_peaks"}
    assert ScioSearchConfig.from_dict(old).hypothesis_peaks == 2
    assert (
        ScioSearchConfig.from_dict(replace(base, hypothesis_peaks=1).to_dict()).hypothesis_peaks
        == 1
    )
    with pytest.raises(ValueError, match="hypothesis_peaks"):
        replace(base, hypothesis_peaks=0)
