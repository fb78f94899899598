"""Self-constrained optimization (SCO, paper §3.4, eq. 8 and 12): move each distal keypoint X_D
to minimise ‖H_A − Γ(H_B, H_C, G(X_D + Δ); f)‖₂ over ‖Δ‖ ≤ δ.

Torch-free and batched: every candidate position of every active group of every person goes
through Γ's per-candidate head in one call per search iteration, and Γ's candidate-independent
context (from H_B, H_C and f) is computed once per (person, group) and reused by index.

Coordinates are heatmap pixels (x, y), the decoder's. G(x) is the codec's Gaussian (peak 1,
the bundle's sigma) rendered at a sub-pixel position: what Γ saw for D in training.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from models.codec import (
    HeatmapCodec,
    dark_kernel_size,
    decode_argmax,
    decode_dark,
    render_gaussians,
)
from models.keypoints import ScioGroup

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

STRATEGIES = ("descent", "grid")
PRIORS = ("backbone", "phi", "fusion")
SCORES = ("l2", "normalized")
# The unit of radius, step, min_step and grid_step: heatmap pixels, or the heatmap Gaussian's σ
# (the bundle's: 2 at 64x48, 3 at 96x72), so that settings keep their meaning across heatmap
# resolutions.
UNITS = ("px", "sigma")
HYPOTHESES = ("backbone", "phi", "peaks", "mirror")
HYP_PEAKS = 2  # local maxima of H_D the "peaks" hypotheses take besides the global one (default)
# Features of a hypothesis h against the current position c of D (after the local search), in
# the acceptance rule's order: the loss difference (Γ at h minus Γ at c), the backbone's H_D at
# h and at c, their distance in heatmap widths, and which kind of hypothesis h is.
# Inputs the calibrated verification probability may use, all about the returned D of one row
# (σ: the heatmap Gaussian's; distances enter as log(1 + d/σ)):
# - loss_end: the self-constraint loss there; peak: the backbone's maximum of H_D (its own
#   confidence); heat_end: the backbone's H_D at the returned position;
# - phi_distance: how far Φ's structural prediction of D (from A, B, C) lies from it; phi_peak:
#   the maximum of Φ's map (0 without Φ);
# - anchor_peak: the backbone's maximum for A; support_peak: the smaller one of B's and C's;
# - second_peak: H_D's highest other local maximum (2 px or more away) over its maximum;
# - mirror_distance: how far the mirrored keypoint (left/right partner) lies from it;
# - alt_dloss: the lowest loss of a hypothesis more than half a pixel away minus loss_end (0
#   without hypotheses).
CONFIDENCE_FEATURES = (
    "loss_end",
    "peak",
    "heat_end",
    "phi_distance",
    "phi_peak",
    "anchor_peak",
    "support_peak",
    "second_peak",
    "mirror_distance",
    "alt_dloss",
)
ACCEPT_FEATURES = (
    "dloss",
    "heat_h",
    "heat_c",
    "distance",
    "is_backbone",
    "is_phi",
    "is_peak",
    "is_mirror",
)
# Optional per-hypothesis inputs of the rule beyond ACCEPT_FEATURES (named in the settings'
# `accept_hyp_features`, so that bundles fitted without them keep their meaning). How plausible
# the limb is with D at the hypothesis against at the current D, from the backbone's anchor A and
# support B: x = log(|D − A| / |A − B|) (the distal segment over the proximal one; forearm over
# upper arm, shin over thigh, eye–ear over nose–eye);
# - limb_dlog: x at the hypothesis minus x at the current D;
# - limb_dlog2: x² at the hypothesis minus x² at the current D. With limb_dlog, a rule (one per
#   group) can learn where the ratio's log is most plausible: w1·Δx + w2·Δ(x²) favours moves
#   towards x = −w1 / (2·w2) when w2 < 0.
HYP_EXTRA_FEATURES = ("limb_dlog", "limb_dlog2")


@dataclass(frozen=True)
class ScioSearchConfig:
    strategy: str = "descent"  # "descent": the paper's local search; "grid": one-shot lattice
    radius: float = 4.0  # δ: how far D may move from where the search starts (heatmap px)
    step: float = 1.5  # descent: first step length (the paper's 1.5)
    min_step: float = 0.375  # descent: a group stops once its step has halved below this
    iterations: int = 50  # descent: at most this many Γ calls after the first
    grid_step: float = 1.0  # grid: lattice spacing
    min_confidence: float = 0.2  # skip a group when A, B or C scores below this
    max_distal_confidence: float = 1.0  # skip D when the backbone is already this sure of it
    min_improvement: float = 0.0  # accept only if loss_after < loss_before · (1 - this)
    prior: str = "backbone"  # D's heatmap before the search: backbone, phi, or their fusion
    fusion_weight: float = 0.5  # fusion: weight of the backbone's heatmap against Φ's
    # phi / fusion: where the prior's map is decoded. 0: its global maximum (the paper: Φ may
    # put D anywhere); > 0: its maximum within this distance of the backbone's D (in `unit`s),
    # so Φ refines the backbone's choice of peak (one the pair split made included) instead of
    # replacing it
    prior_radius: float = 0.0
    # The self-constraint loss: "l2" = ‖H_A − Ĥ_A‖₂ (the paper); "normalized" = the same between
    # the two maps scaled to unit L2 norm (amplitude-free, in [0, 2]). Fixed by how Γ was trained.
    score: str = "l2"
    # Beyond the paper, for gross errors a disc cannot reach: after the local search, distinct
    # hypotheses for D (`HYPOTHESES`: the backbone's and Φ's D, the next local maxima of H_D,
    # the mirrored side's D) are scored by Γ, and an acceptance rule, a logistic model over
    # `ACCEPT_FEATURES` fitted on a tuning split, moves D to the likeliest one only where it
    # predicts "closer to the truth" with probability above `accept_threshold`.
    hypotheses: tuple[str, ...] = ()
    # how many local maxima of H_D besides its global one the "peaks" hypotheses take
    hypothesis_peaks: int = HYP_PEAKS
    # The rule may also read the row itself (CONFIDENCE_FEATURES at the current D: how sure the
    # backbone is, how far Φ's D and the mirrored keypoint lie...), the same for every hypothesis
    # of the row; they follow ACCEPT_FEATURES in `accept_weights`.
    accept_row_features: tuple[str, ...] = ()
    # ... and per hypothesis, HYP_EXTRA_FEATURES (the limb's plausibility there), after the row's
    accept_hyp_features: tuple[str, ...] = ()
    # one per ACCEPT_FEATURES, then per accept_row_features, then per accept_hyp_features;
    # empty: no rule, no moves
    accept_weights: tuple[float, ...] = ()
    accept_bias: float = 0.0
    accept_threshold: float = 0.5
    # per SCIO group (the spec's order) instead of accept_threshold, when given: a group where no
    # threshold gained on the tuning split gets 1.0 (never moves)
    accept_group_thresholds: tuple[float, ...] = ()
    # one rule per SCIO group instead of accept_weights and accept_bias, when given (same
    # features): which signals say "closer" differs between arms, legs and heads
    accept_group_weights: tuple[tuple[float, ...], ...] = ()
    accept_group_bias: tuple[float, ...] = ()
    # A calibrated verification probability per examined keypoint: P(the returned D is correct,
    # OKS term >= 0.5) = sigmoid(w · x + b) over the named `confidence_features` (a subset of
    # CONFIDENCE_FEATURES), fitted on a tuning split. Empty weights: the API reports no
    # probability, only the losses.
    confidence_weights: tuple[float, ...] = ()
    confidence_bias: float = 0.0
    confidence_features: tuple[str, ...] = ("loss_end", "peak")
    # per SCIO group (the spec's order) instead of the shared weights and bias, when given: the
    # same features, one logistic model per group (keypoints differ in how often they are right
    # and in which signals tell)
    confidence_group_weights: tuple[tuple[float, ...], ...] = ()
    confidence_group_bias: tuple[float, ...] = ()
    unit: str = "px"  # of radius, step, min_step, grid_step: heatmap px, or σ (see UNITS)

    def __post_init__(self) -> None:
        for name in (
            "hypotheses",
            "accept_row_features",
            "accept_hyp_features",
            "accept_weights",
            "accept_group_thresholds",
            "accept_group_bias",
            "confidence_weights",
            "confidence_features",
            "confidence_group_bias",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # JSON gives lists
        for name in ("confidence_group_weights", "accept_group_weights"):
            object.__setattr__(self, name, tuple(tuple(w) for w in getattr(self, name)))
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, not {self.score!r}")
        unknown = set(self.hypotheses) - set(HYPOTHESES)
        if unknown:
            raise ValueError(f"unknown hypotheses {sorted(unknown)}; known: {HYPOTHESES}")
        unknown = set(self.confidence_features) - set(CONFIDENCE_FEATURES)
        if unknown:
            raise ValueError(
                f"unknown confidence features {sorted(unknown)}; known: {CONFIDENCE_FEATURES}"
            )
        n_conf = len(self.confidence_features)
        if self.confidence_weights and len(self.confidence_weights) != n_conf:
            raise ValueError(
                f"confidence_weights needs {n_conf} values ({', '.join(self.confidence_features)})"
            )
        if any(len(w) != n_conf for w in self.confidence_group_weights):
            raise ValueError(f"each confidence_group_weights entry needs {n_conf} values")
        if len(self.confidence_group_bias) != len(self.confidence_group_weights):
            raise ValueError("confidence_group_bias needs one value per confidence_group_weights")
        unknown = set(self.accept_row_features) - set(CONFIDENCE_FEATURES)
        if unknown:
            raise ValueError(
                f"unknown accept_row_features {sorted(unknown)}; known: {CONFIDENCE_FEATURES}"
            )
        unknown = set(self.accept_hyp_features) - set(HYP_EXTRA_FEATURES)
        if unknown:
            raise ValueError(
                f"unknown accept_hyp_features {sorted(unknown)}; known: {HYP_EXTRA_FEATURES}"
            )
        n_accept = self.n_accept_features
        if self.accept_weights and len(self.accept_weights) != n_accept:
            names = (*ACCEPT_FEATURES, *self.accept_row_features, *self.accept_hyp_features)
            raise ValueError(f"accept_weights needs {n_accept} values ({', '.join(names)})")
        if any(len(w) != n_accept for w in self.accept_group_weights):
            raise ValueError(f"each accept_group_weights entry needs {n_accept} values")
        if len(self.accept_group_bias) != len(self.accept_group_weights):
            raise ValueError("accept_group_bias needs one value per accept_group_weights entry")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, not {self.unit!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, not {self.strategy!r}")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, not {self.prior!r}")
        if not (self.radius > 0 and self.step > 0 and self.grid_step > 0 and self.min_step > 0):
            raise ValueError("radius, step, min_step and grid_step must be positive")
        if self.iterations < 0 or not 0 <= self.fusion_weight <= 1:
            raise ValueError("iterations must be >= 0 and fusion_weight in [0, 1]")
        if not self.prior_radius >= 0:
            raise ValueError(f"prior_radius must be >= 0, got {self.prior_radius}")
        if self.hypothesis_peaks < 1:
            raise ValueError("hypothesis_peaks must be >= 1")

    @property
    def n_accept_features(self) -> int:
        """How many inputs the acceptance rule reads per hypothesis."""
        return len(ACCEPT_FEATURES) + len(self.accept_row_features) + len(self.accept_hyp_features)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def in_pixels(self, sigma: float) -> ScioSearchConfig:
        """These settings with every length in heatmap pixels, for a heatmap Gaussian of σ."""
        if self.unit == "px":
            return self
        return replace(
            self,
            unit="px",
            radius=self.radius * sigma,
            step=self.step * sigma,
            min_step=self.min_step * sigma,
            grid_step=self.grid_step * sigma,
            prior_radius=self.prior_radius * sigma,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScioSearchConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SCIO search settings {sorted(unknown)}")
        return cls(**d)


class Verifier(Protocol):
    """Γ split in two. Maps are (M, h, w) float32; `group` indexes the spec's groups."""

    def context(self, hb: F32, hc: F32, f: F32 | RowFeatures, group: I64) -> Any:
        """Candidate-independent part for M (person, group) rows (`f`: their feature maps,
        an array or `RowFeatures`)."""
        ...

    def head(self, context: Any, index: I64, hd: F32) -> F32:
        """Γ's prediction of H_A for candidates hd (Mc, h, w); row i uses context[index[i]]."""
        ...


class Predictor(Protocol):
    """Φ: predicts H_D (M, h, w) from H_A, H_B, H_C and f."""

    def __call__(self, ha: F32, hb: F32, hc: F32, f: F32 | RowFeatures, group: I64) -> F32: ...


@dataclass
class SearchResult:
    """Per (person, group) row that was searched; coordinates in heatmap pixels."""

    coords: F64  # (N, K, 2) all keypoints, distal ones replaced where accepted
    person: I64  # (P,)
    group: I64  # (P,) index into the groups
    keypoint: I64  # (P,) the distal keypoint D
    start: F64  # (P, 2) where the search started (after the SCL prior)
    backbone: F64  # (P, 2) the backbone's own decoded D
    end: F64  # (P, 2) the returned position (start when not accepted)
    loss_before: F64  # (P,) self-constraint loss at start: the verification score
    loss_after: F64  # (P,) loss at end
    accepted: npt.NDArray[np.bool_]  # (P,)
    calls: int  # Γ head calls made
    # the hypothesis stage (empty without it): each row's candidates, their features and kinds
    hyp_positions: F64 = field(default_factory=lambda: np.zeros((0, 0, 2)))  # (P, H, 2)
    hyp_features: F64 = field(default_factory=lambda: np.zeros((0, 0, 0)))  # (P, H, F)
    hyp_valid: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros((0, 0), bool))
    hyp_moved: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))  # (P,)
    local_end: F64 = field(default_factory=lambda: np.zeros((0, 2)))  # (P, 2) before hypotheses
    # (P,) P(the returned D is correct), NaN without a calibration in the settings
    confidence: F64 = field(default_factory=lambda: np.zeros(0))
    # (P, len(CONFIDENCE_FEATURES)): every input the calibration may use, for fitting it
    confidence_inputs: F64 = field(default_factory=lambda: np.zeros((0, len(CONFIDENCE_FEATURES))))


# The 8 compass directions, unit length.
_ANGLES = np.arange(8) * (np.pi / 4)
COMPASS = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1)


def grid_offsets(radius: float, spacing: float) -> F64:
    """Lattice points inside the disc of `radius`, (0, 0) first."""
    n = int(np.floor(radius / spacing))
    ax = np.arange(-n, n + 1) * spacing
    gx, gy = np.meshgrid(ax, ax)
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1)
    pts = pts[(pts**2).sum(1) <= radius**2 + 1e-9]
    order = np.argsort((pts**2).sum(1), kind="stable")
    out: F64 = pts[order]
    return out


def self_constraint_loss(target: F32, predicted: F32, score: str = "l2") -> F64:
    """‖H_A − Ĥ_A‖₂ per row: (M, h, w), (M, h, w) -> (M,). `score="normalized"`: between the
    maps scaled to unit norm (the torch twin is `training.train_scio.constraint_loss`)."""
    # float32 maps, float64 sums: the maps' own precision, without float64 copies of them
    t = _scored(target, score)
    p = _scored(predicted, score)
    return _norms(t - p)


def _scored(maps: F32, score: str) -> F32:
    """(M, h, w) maps as the loss compares them: (M, h·w) float32, scaled to unit L2 norm for
    the "normalized" score."""
    x = np.asarray(maps, dtype=np.float32)
    x = x.reshape(len(x), int(np.prod(x.shape[1:])))  # (0, h·w) too, where -1 cannot say
    if score == "normalized":
        x = x / np.maximum(_norms(x), 1e-6).astype(np.float32)[:, None]
    return x


def _norms(x: F32) -> F64:
    """The L2 norm of each row, summed in float64."""
    out: F64 = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    return out


def refine(
    heatmaps: F32,
    features: F32,
    coords: F64,
    scores: F64,
    groups: tuple[ScioGroup, ...],
    gamma: Verifier,
    config: ScioSearchConfig,
    phi: Predictor | None = None,
    decode: str = "argmax",
    sigma: float = 2.0,
    batched: bool = True,
    flip_index: npt.NDArray[np.intp] | None = None,
    diagnostics: bool = True,
    all_losses: bool = True,
    parallel: Executor | None = None,
) -> SearchResult:
    """Refine the distal keypoints of N persons.

    heatmaps (N, K, h, w) and features (N, C, h, w) from the backbone; coords (N, K, 2) and
    scores (N, K) decoded from those heatmaps. With `batched=False` every candidate gets its own
    Γ call (for measuring what batching buys); the result is the same. `flip_index` (the spec's
    left/right partner of each keypoint) is needed for the "mirror" hypothesis.

    `diagnostics=False` (the service) skips what only the probes read: Φ and the hypotheses of
    rows whose group's rule can never move D (`rule_can_move`), and H_D's local maxima there,
    unless the start or the calibrated confidence reads them. Positions, losses, moves and
    confidences are the same; in the skipped rows the hypotheses are absent (`hyp_valid` false)
    and the columns of `confidence_inputs` that read Φ or the maxima are NaN.

    `all_losses=False` (the service) also runs Γ only in the rows whose result reads its loss
    (`gamma_rows`): a search that moves D, hypotheses the rule may accept, or a calibrated
    confidence that reads the loss. Elsewhere the returned D is the start and its losses are NaN;
    positions, moves and confidences are the same.

    `parallel`: an executor on which Φ runs while Γ's context runs in the calling thread (the
    service, whose network calls release the GIL); the result is the same.
    """
    h, w = heatmaps.shape[-2:]
    config = config.in_pixels(sigma)
    rows = _active_rows(scores, groups, config.min_confidence, config.max_distal_confidence)
    person, gidx = rows[:, 0], rows[:, 1]
    g_arr = np.array([[g.a, g.b, g.c, g.d] for g in groups], dtype=np.int64).reshape(-1, 4)
    a, b, c, d = (g_arr[gidx, i] for i in range(4))
    out = coords.astype(np.float64).copy()
    if len(rows) == 0:
        e = np.zeros((0, 2))
        z = np.zeros(0)
        return SearchResult(out, person, gidx, d, e, e, e, z, z, np.zeros(0, bool), calls=0)
    if not diagnostics and _only_confidence(config, gidx, phi is not None, all_losses):
        return _confidence_result(
            heatmaps, coords, scores, out, (person, gidx), (a, b, c, d), config, sigma,
            phi is not None, flip_index,
        )  # fmt: skip
    n_rows = len(person)
    ha = heatmaps[person, a]
    hb = heatmaps[person, b]
    hc = heatmaps[person, c]
    backbone_d = coords[person, d].astype(np.float64)
    # the rows whose hypotheses are scored (all of them, or see above); Φ and H_D's local maxima
    # are needed there, and in every row where the start or the confidence reads them
    hyp_rows = _hypothesis_rows(config, gidx, diagnostics)
    every_row = len(hyp_rows) == n_rows
    # Φ runs once, and its decoded D serves the prior, the "phi" hypothesis and the confidence
    phi_runs = wants_phi(config, phi is not None)
    phi_rows = _phi_rows(config, hyp_rows, n_rows, phi is not None)
    # the rows Γ scores (all, or see above); the feature maps are gathered for those and Φ's only
    scored = gamma_rows(config, gidx, diagnostics or all_losses)
    f_rows = np.union1d(scored, phi_rows)
    f = RowFeatures(features, person[f_rows])  # copied per row only where a graph needs it
    f_at = np.full(n_rows, -1, dtype=np.int64)  # row -> its row of f
    f_at[f_rows] = np.arange(len(f_rows))

    def run_phi() -> tuple[F32 | None, F64 | None]:
        if phi is None or not phi_runs:
            return None, None
        if len(phi_rows) == n_rows:
            heat = phi(ha, hb, hc, f, gidx)
            return heat, _decoded(heat, backbone_d, decode, sigma)
        heat = np.zeros_like(ha)
        at = np.full_like(backbone_d, np.nan)
        if len(phi_rows):
            r = phi_rows
            heat[r] = phi(ha[r], hb[r], hc[r], _take(f, f_at[r]), gidx[r])
            at[r] = _decoded(heat[r], backbone_d[r], decode, sigma)
        return heat, at

    # Φ and Γ's context read the same inputs and not each other: with `parallel`, Φ runs there
    # while the context runs here
    phi_job = (
        parallel.submit(run_phi)
        if parallel is not None and phi_runs and len(phi_rows) and len(scored)
        else None
    )
    # Γ's context for the rows it scores; the evaluator takes row indices into that subset
    local = np.full(n_rows, -1, dtype=np.int64)
    local[scored] = np.arange(len(scored))
    ctx = (
        gamma.context(
            _take(hb, scored), _take(hc, scored), _take(f, f_at[scored]), _take(gidx, scored)
        )
        if len(scored)
        else None
    )
    # What does not read Φ is prepared before waiting for it (with `parallel`, while it runs)
    hd = heatmaps[person, d]
    evaluate = _Evaluator(gamma, ctx, _take(ha, scored), (h, w), sigma, batched, config.score)
    # The hypotheses do not depend on the search; H_D's local maxima serve them and the confidence
    # (in the rows that have hypotheses, unless the confidence reads them: NaN elsewhere)
    n_peaks = config.hypothesis_peaks
    if every_row or "second_peak" in config.confidence_features:
        peaks = local_maxima(hd, n_peaks)
    else:
        peaks = (np.zeros((len(hd), n_peaks, 2)), np.full((len(hd), n_peaks), np.nan))
        peaks[0][hyp_rows], peaks[1][hyp_rows] = local_maxima(hd[hyp_rows], n_peaks)
    phi_heat, phi_d = run_phi() if phi_job is None else phi_job.result()
    start = _prior_positions(hd, phi_heat, phi_d, backbone_d, config, decode, sigma)
    if config.hypotheses:
        r = hyp_rows
        sub = None if phi_d is None else phi_d[r]
        cand, kinds, valid = _scatter_hypotheses(
            len(person),
            r,
            hypotheses(
                heatmaps, coords, person[r], d[r], backbone_d[r], config.hypotheses, flip_index,
                sub, (peaks[0][r], peaks[1][r]),
            ),
        )  # fmt: skip
    else:
        cand, kinds, valid = (
            np.zeros((len(person), 0, 2)),
            np.zeros((len(person), 0), np.int64),
            None,
        )
    # The first Γ call scores everything known before the search moves: the start (the whole
    # lattice for "grid") and the hypotheses (of the rows that have them)
    first = _grid_candidates(start, config, (h, w)) if config.strategy == "grid" else start[:, None]
    n_first, n_hyp = first.shape[1], cand.shape[1]
    hr = hyp_rows if config.hypotheses else np.zeros(0, np.int64)
    loss_all = np.full((n_rows, n_first + n_hyp), np.inf)
    loss_all[np.setdiff1d(np.arange(n_rows), scored), :n_first] = np.nan  # Γ not run there
    # Γ scores each hypothesis that exists and is not the start itself: one at the start's own
    # position (the "backbone" one, where the search starts from the backbone's D) takes the
    # start's loss, and one that does not exist (a local maximum H_D lacks) keeps an infinite
    # loss, which nothing reads (features, rule and confidence mask it as invalid)
    at_start = np.all(cand[hr] == first[hr, :1], axis=-1).reshape(-1)  # (len(hr) * n_hyp,)
    exists = valid[hr].reshape(-1) if valid is not None else np.ones(len(at_start), bool)
    run = exists & ~at_start
    rows_in = np.concatenate([np.repeat(local[scored], n_first), np.repeat(local[hr], n_hyp)[run]])
    pos_in = np.concatenate([first[scored].reshape(-1, 2), cand[hr].reshape(-1, 2)[run]])
    losses = evaluate(rows_in, pos_in)
    n_scored = len(scored) * n_first
    loss_all[scored, :n_first] = losses[:n_scored].reshape(len(scored), n_first)
    hyp_loss_in = np.where(at_start, np.repeat(loss_all[hr, 0], n_hyp), np.inf)
    hyp_loss_in[run] = losses[n_scored:]
    loss_all[hr, n_first:] = hyp_loss_in.reshape(len(hr), n_hyp)
    if config.strategy == "grid":
        end, loss_before, loss_after = _grid_pick(first, loss_all[:, :n_first])
    else:
        # the descent's evaluator takes rows of the scored subset (all rows when it searches)
        end, loss_before, loss_after = _descent(evaluate, start, loss_all[:, 0], config, (h, w))
    accepted = loss_after < loss_before * (1.0 - config.min_improvement)
    accepted &= np.any(end != start, axis=1)
    end = np.where(accepted[:, None], end, start)
    loss_after = np.where(accepted, loss_after, loss_before)
    hyp: tuple[F64, F64, npt.NDArray[np.bool_], npt.NDArray[np.bool_]] | None = None
    local_end = end.copy()
    # what the confidence inputs read, at the current D (replaced by the returned one below)
    row_inputs = ConfidenceInputs(
        heatmaps=heatmaps, coords=coords, scores=scores, person=person, abcd=(a, b, c, d),
        end=end, loss_end=loss_after, sigma=sigma, phi_d=phi_d, phi_heat=phi_heat,
        flip_index=flip_index, second_peak=peaks[1][:, 0],
    )  # fmt: skip
    if config.hypotheses and valid is not None:
        hyp_loss = loss_all[:, n_first:]
        row_inputs = replace(row_inputs, hyp=(cand, hyp_loss, valid))
        feats = hypothesis_features(hyp_loss, cand, kinds, valid, end, loss_after, hd)
        if config.accept_row_features:
            here = confidence_inputs(row_inputs)
            cols = [CONFIDENCE_FEATURES.index(n) for n in config.accept_row_features]
            row = np.repeat(here[:, None, cols], cand.shape[1], axis=1)
            feats = np.concatenate([feats, np.where(valid[..., None], row, 0.0)], axis=-1)
        if config.accept_hyp_features:
            extra = limb_features(
                cand, end, coords[person, a], coords[person, b], config.accept_hyp_features
            )
            feats = np.concatenate([feats, np.where(valid[..., None], extra, 0.0)], axis=-1)
        end, loss_after, moved = apply_rule(config, cand, feats, valid, end, loss_after, gidx)
        hyp = (cand, feats, valid, moved)
    out[person, d] = end
    result = SearchResult(
        coords=out,
        person=person,
        group=gidx,
        keypoint=d,
        start=start,
        backbone=backbone_d,
        end=end,
        loss_before=loss_before,
        loss_after=loss_after,
        accepted=accepted,
        calls=evaluate.calls,
    )
    result.local_end = local_end
    result.confidence_inputs = confidence_inputs(replace(row_inputs, end=end, loss_end=loss_after))
    result.confidence = verification_probability(config, result.confidence_inputs, gidx)
    if hyp is not None:
        result.hyp_positions, result.hyp_features, result.hyp_valid, result.hyp_moved = hyp
        result.accepted = accepted | hyp[3]
    return result


def _only_confidence(config: ScioSearchConfig, group: I64, has_phi: bool, all_losses: bool) -> bool:
    """Whether the service's refine (no diagnostics) has nothing to do but the confidence: the
    search starts at the backbone's D and never moves it (no Γ call anywhere: no search, no
    hypothesis the rule may take, no confidence that reads Γ's loss) and Φ runs nowhere. The
    shipped bundle, whose rules move nothing, is this case."""
    reads_phi = has_phi and bool(set(config.confidence_features) & {*_PHI_FEATURES})
    return (
        config.prior == "backbone"
        and not reads_phi
        and len(gamma_rows(config, group, all_losses)) == 0
        and len(_hypothesis_rows(config, group, diagnostics=False)) == 0
    )


def _confidence_result(
    heatmaps: F32,
    coords: F64,
    scores: F64,
    out: F64,
    rows: tuple[I64, I64],
    abcd: tuple[I64, I64, I64, I64],
    config: ScioSearchConfig,
    sigma: float,
    has_phi: bool,
    flip_index: npt.NDArray[np.intp] | None,
) -> SearchResult:
    """`refine`'s result where `_only_confidence` holds, without the steps whose outputs are
    empty there: every field as the full path gives it (losses NaN, nothing accepted, empty
    hypotheses when the settings have them, Φ's columns as for a Φ that ran nowhere)."""
    person, gidx = rows
    d = abcd[3]
    p = len(person)
    backbone_d = coords[person, d].astype(np.float64)
    nan = np.full(p, np.nan)
    phi_d = phi_heat = None
    if has_phi and "phi" in config.hypotheses:  # the full path's Φ output for rows it skipped
        phi_d = np.full((p, 2), np.nan)
        phi_heat = np.zeros((p, *heatmaps.shape[-2:]), heatmaps.dtype)
    if "second_peak" in config.confidence_features:
        second = local_maxima(heatmaps[person, d], 1)[1][:, 0]  # the first after the global one
    else:
        second = nan
    inputs = ConfidenceInputs(
        heatmaps=heatmaps, coords=coords, scores=scores, person=person, abcd=abcd,
        end=backbone_d, loss_end=nan, sigma=sigma, phi_d=phi_d, phi_heat=phi_heat,
        flip_index=flip_index, second_peak=second,
    )  # fmt: skip
    result = SearchResult(
        coords=out, person=person, group=gidx, keypoint=d, start=backbone_d.copy(),
        backbone=backbone_d, end=backbone_d.copy(), loss_before=nan, loss_after=nan.copy(),
        accepted=np.zeros(p, dtype=bool), calls=0,
    )  # fmt: skip
    result.local_end = backbone_d.copy()
    result.confidence_inputs = confidence_inputs(inputs)
    result.confidence = verification_probability(config, result.confidence_inputs, gidx)
    if config.hypotheses:
        n_feats = config.n_accept_features
        result.hyp_positions = np.zeros((p, 0, 2))
        result.hyp_features = np.zeros((p, 0, n_feats))
        result.hyp_valid = np.zeros((p, 0), dtype=bool)
        result.hyp_moved = np.zeros(p, dtype=bool)
    return result


_PHI_FEATURES = ("phi_distance", "phi_peak")  # the CONFIDENCE_FEATURES that read Φ
_HYP_FEATURES = ("alt_dloss",)  # ... and those that read the hypotheses' losses


def rule_can_move(config: ScioSearchConfig, group: I64) -> npt.NDArray[np.bool_]:
    """Which rows (of `group`) the acceptance rule could move to a hypothesis: none without a
    rule; a row whose threshold is 1 or more never moves (a probability is never above 1)."""
    ruled = config.accept_weights or (config.accept_group_weights and len(group))
    if not ruled or not config.hypotheses:
        return np.zeros(len(group), dtype=bool)
    threshold = np.full(len(group), config.accept_threshold)
    if config.accept_group_thresholds:  # as `apply_rule` reads them, with either kind of rule
        threshold = _per_group(config.accept_group_thresholds, group, "accept_group_thresholds")
    out: npt.NDArray[np.bool_] = threshold < 1.0
    return out


def gamma_rows(config: ScioSearchConfig, group: I64, everywhere: bool) -> I64:
    """The rows Γ scores (indices into `group`): every row when asked (`everywhere`), when the
    search moves D (a grid, or descent iterations), or when the calibrated confidence reads Γ's
    loss; else only the rows whose hypotheses the acceptance rule may take."""
    every = np.arange(len(group), dtype=np.int64)
    searches = config.strategy == "grid" or config.iterations > 0
    reads = set(config.confidence_features) & {"loss_end", *_HYP_FEATURES}
    if everywhere or searches or reads:
        return every
    if not config.hypotheses:
        return every[:0]
    return _hypothesis_rows(config, group, diagnostics=False)


def refine_work(config: ScioSearchConfig, group: I64, has_phi: bool = True) -> dict[str, int]:
    """Of the examined rows whose groups are `group`, in how many the service's `refine` (no
    diagnostics, `all_losses=False`) runs Φ, Γ and the hypotheses: the networks' share of
    SCIO's cost, told without running them. `confidence_cost` uses it to tell which calibration
    features add work."""
    n = len(group)
    if n == 0 or _only_confidence(config, group, has_phi, all_losses=False):
        return {"phi": 0, "gamma": 0, "hypotheses": 0}
    hyp = _hypothesis_rows(config, group, diagnostics=False)
    return {
        "phi": len(_phi_rows(config, hyp, n, has_phi)),
        "gamma": len(gamma_rows(config, group, everywhere=False)),
        "hypotheses": len(hyp) if config.hypotheses else 0,
    }


def wants_phi(config: ScioSearchConfig, has_phi: bool) -> bool:
    """Whether Φ runs at all: for the prior or the "phi" hypothesis."""
    return has_phi and (config.prior != "backbone" or "phi" in config.hypotheses)


def _phi_rows(config: ScioSearchConfig, hyp_rows: I64, n_rows: int, has_phi: bool) -> I64:
    """The rows Φ runs in: none unless wanted; every row where the hypotheses are scored
    everywhere, or the prior or the confidence reads Φ; else the hypotheses' rows."""
    if not wants_phi(config, has_phi):
        return np.zeros(0, np.int64)
    read = config.prior != "backbone" or set(config.confidence_features) & {*_PHI_FEATURES}
    return np.arange(n_rows) if len(hyp_rows) == n_rows or read else hyp_rows


def confidence_cost(config: ScioSearchConfig, n_groups: int, has_phi: bool = True) -> set[str]:
    """The CONFIDENCE_FEATURES whose reading makes the service's refine run Φ, Γ or the
    hypotheses in more rows than the search itself needs (one row per group), at `config`'s
    search and acceptance rules."""
    group = np.arange(n_groups, dtype=np.int64)

    def reading(names: tuple[str, ...]) -> dict[str, int]:
        uncalibrated = replace(
            config, confidence_features=names, confidence_weights=(),
            confidence_group_weights=(), confidence_group_bias=(),
        )  # fmt: skip
        return refine_work(uncalibrated, group, has_phi)

    bare = reading(())
    return {
        name
        for name in CONFIDENCE_FEATURES
        if any(n > bare[k] for k, n in reading((name,)).items())
    }


def _hypothesis_rows(config: ScioSearchConfig, group: I64, diagnostics: bool) -> I64:
    """The rows whose hypotheses are scored: all of them for the diagnostics or where the
    confidence reads them, else those the rule could move."""
    every = np.arange(len(group), dtype=np.int64)
    if diagnostics or set(config.confidence_features) & set(_HYP_FEATURES):
        return every
    return every[rule_can_move(config, group)]


def _scatter_hypotheses(
    p: int, rows: I64, sub: tuple[F64, I64, npt.NDArray[np.bool_]]
) -> tuple[F64, I64, npt.NDArray[np.bool_]]:
    """`hypotheses` of some rows placed among all `p` rows; the others have none (invalid)."""
    pos, kind, valid = sub
    if len(rows) == p:
        return pos, kind, valid
    n = pos.shape[1] if len(rows) else 0
    full_pos = np.zeros((p, n, 2))
    full_kind = np.zeros((p, n), np.int64)
    full_valid = np.zeros((p, n), dtype=bool)
    if len(rows):
        full_pos[rows], full_valid[rows] = pos, valid
        full_kind[:] = kind[0]  # the same kinds in every row
    return full_pos, full_kind, full_valid


_WORKSPACE = threading.local()
WORKSPACE_MAX_BYTES = 32 * 1024 * 1024  # about 80 (person, group) rows of 32 x 64 x 48 features


def gather_rows(x: F32, index: I64) -> F32:
    """`x[index]` written into a buffer that this thread reuses from call to call.

    The feature map of every (person, group) row is several MB for a few persons; a fresh
    array each call is fresh pages each call (glibc maps blocks above its mmap threshold, which
    the service fixes at 4 MB), and the page faults cost more than the copy. The result is only
    valid until this thread's next call. Above `WORKSPACE_MAX_BYTES` (many persons at once) a
    fresh array, so that no thread keeps a large buffer."""
    shape = (len(index), *x.shape[1:])
    need = int(np.prod(shape))
    if need * x.itemsize > WORKSPACE_MAX_BYTES:
        fresh: F32 = x[index]
        return fresh
    buf = getattr(_WORKSPACE, "rows", None)
    if buf is None or buf.dtype != x.dtype or buf.size < need:
        buf = np.empty(need, dtype=x.dtype)
        _WORKSPACE.rows = buf
    out: F32 = buf[:need].reshape(shape)
    np.take(x, index, axis=0, out=out, mode="clip")  # "raise" would buffer a copy first
    return out


# The input of Φ / Γ-context graphs that take each person's feature map once: each row's person
# (`RowFeatures.index`; training.onnx_export.gather_features_by_person writes it)
PERSON_INDEX = "person_index"


@dataclass(frozen=True)
class RowFeatures:
    """The feature maps of (person, group) rows, without a copy per row: `persons` (N, C, h, w)
    and each row's person `index` (M,). Φ and Γ's context graphs that take a `person_index`
    input read it as it is (the row gather happens inside them, after the features' 1x1
    convolution, on a quarter of the channels); for others `rows()` (or `np.asarray`) makes the
    (M, C, h, w) copy."""

    persons: F32
    index: I64

    def __len__(self) -> int:
        return len(self.index)

    def take(self, rows: I64) -> RowFeatures:
        return RowFeatures(self.persons, self.index[rows])

    def rows(self) -> F32:
        """(M, C, h, w): valid until this thread's next `gather_rows` (see there)."""
        return gather_rows(self.persons, self.index)

    def __array__(self, dtype: Any = None, copy: Any = None) -> F32:
        out = self.persons[self.index]  # a fresh copy, safe to keep
        return out if dtype is None else out.astype(dtype)


def _take(x: Any, index: I64) -> Any:
    """x[index], without a copy when index is every row in order (the usual case)."""
    if len(index) == len(x) and np.array_equal(index, np.arange(len(x))):
        return x
    if isinstance(x, RowFeatures):
        return x.take(index)
    return x[index]


def _per_group(values: Any, group: I64, name: str) -> F64:
    """Per-group settings (G, ...) looked up for each row's group (P, ...)."""
    table = np.asarray(values, dtype=np.float64)
    if len(group) and group.max() >= len(table):
        raise ValueError(f"{name} has {len(table)} groups; the spec has more")
    out: F64 = table[group]
    return out


def sigmoid(z: F64) -> F64:
    """The logistic function, clipped so that it never overflows."""
    out: F64 = 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))
    return out


@dataclass
class ConfidenceInputs:
    """What `confidence_inputs` reads, for P rows."""

    heatmaps: F32  # (N, K, h, w) the backbone's
    coords: F64  # (N, K, 2) decoded before the search
    scores: F64  # (N, K)
    person: I64  # (P,)
    abcd: tuple[I64, I64, I64, I64]  # (P,) each
    end: F64  # (P, 2) the returned D
    loss_end: F64  # (P,)
    sigma: float
    phi_d: F64 | None = None  # (P, 2) Φ's decoded D
    phi_heat: F32 | None = None  # (P, h, w) Φ's map
    flip_index: npt.NDArray[np.intp] | None = None
    second_peak: F64 | None = None  # (P,) H_D's highest other local maximum, if known
    # the hypotheses: positions (P, H, 2), Γ's loss at each (P, H), which exist (P, H)
    hyp: tuple[F64, F64, npt.NDArray[np.bool_]] | None = None


def _log_distance(p: F64, q: F64, sigma: float) -> F64:
    out: F64 = np.log1p(np.linalg.norm(p - q, axis=-1) / sigma)
    return out


def confidence_inputs(x: ConfidenceInputs) -> F64:
    """Every CONFIDENCE_FEATURES column of each row (P, F)."""
    a, b, c, d = x.abcd
    p = len(x.person)
    out = np.zeros((p, len(CONFIDENCE_FEATURES)))
    if p == 0:
        return out
    col = {name: i for i, name in enumerate(CONFIDENCE_FEATURES)}
    hd = x.heatmaps[x.person, d]
    peak = x.scores[x.person, d].astype(np.float64)
    out[:, col["loss_end"]] = x.loss_end
    out[:, col["peak"]] = peak
    out[:, col["heat_end"]] = _heat_at(hd, x.end[:, None])[:, 0]
    if x.phi_d is not None and x.phi_heat is not None:
        out[:, col["phi_distance"]] = _log_distance(x.phi_d, x.end, x.sigma)
        out[:, col["phi_peak"]] = x.phi_heat.reshape(p, -1).max(axis=1)
    out[:, col["anchor_peak"]] = x.scores[x.person, a]
    out[:, col["support_peak"]] = np.minimum(x.scores[x.person, b], x.scores[x.person, c])
    second = local_maxima(hd, 1)[1][:, 0] if x.second_peak is None else x.second_peak
    out[:, col["second_peak"]] = second / np.maximum(peak, 1e-6)
    if x.flip_index is not None:
        mirror = x.coords[x.person, x.flip_index[d]]
        out[:, col["mirror_distance"]] = _log_distance(mirror, x.end, x.sigma)
    if x.hyp is not None and x.hyp[0].shape[1]:
        pos, loss_h, valid = x.hyp
        far = np.linalg.norm(pos - x.end[:, None], axis=-1) > 0.5
        ok = valid & far
        alt = np.where(ok, loss_h, np.inf).min(axis=1) - x.loss_end
        out[:, col["alt_dloss"]] = np.where(np.isfinite(alt), alt, 0.0)
    return out


def verification_probability(config: ScioSearchConfig, inputs: F64, group: I64) -> F64:
    """The calibrated P(correct) of each returned D from its `confidence_inputs` rows and its
    group (NaN without a calibration)."""
    cols = [CONFIDENCE_FEATURES.index(n) for n in config.confidence_features]
    x = inputs[:, cols]
    if config.confidence_group_weights:
        w = _per_group(config.confidence_group_weights, group, "confidence_group_weights")
        b = _per_group(config.confidence_group_bias, group, "confidence_group_bias")
        return sigmoid((x * w).sum(axis=1) + b)
    if not config.confidence_weights:
        return np.full(len(inputs), np.nan)
    return sigmoid(
        x @ np.asarray(config.confidence_weights, dtype=np.float64) + config.confidence_bias
    )


def local_maxima(heat: F32, count: int, min_distance: float = 2.0) -> tuple[F64, F64]:
    """The `count` highest local maxima (3x3) of each map after its global maximum, at least
    `min_distance` px from it and from each other, taken greedily in order of height among the
    map's `_PEAK_POOL` highest local maxima: (M, count, 2) positions, (M, count) values (0 where
    a map has fewer)."""
    m, _, w = heat.shape
    pos = np.zeros((m, count, 2))
    val = np.zeros((m, count))
    if m == 0 or count <= 0:
        return pos, val
    heat = np.asarray(heat, dtype=np.float32)
    peak = (heat >= _max3x3(heat)) & (heat > 0)
    # float32 keeps every height exactly, so the order is the same as in float64
    flat = np.where(peak, heat, np.float32(-np.inf)).reshape(m, -1)
    if count == 1 and min_distance <= 2.0:
        return _second_maximum(heat, flat, min_distance)
    pool = min(_PEAK_POOL, flat.shape[1])
    top = np.argpartition(-flat, pool - 1, axis=1)[:, :pool]
    tv = np.take_along_axis(flat, top, axis=1)
    # highest first; row-major order among equal heights
    order = np.take_along_axis(top, np.lexsort((top, -tv), axis=-1), axis=1)
    v = np.take_along_axis(flat, order, axis=1)
    xy = np.stack([order % w, order // w], axis=-1).astype(np.float64)  # (M, pool, 2)
    finite = np.isfinite(v)
    taken = np.zeros((m, count + 1, 2))
    n_taken = np.zeros(m, dtype=np.int64)
    rows = np.arange(m)
    slot = np.arange(count + 1)
    for j in range(pool):
        # a row is done once it is full or out of maxima (they come highest first)
        live = finite[:, j] & (n_taken <= count)
        if not live.any():
            break
        cand = xy[:, j]
        near = ((taken - cand[:, None]) ** 2).sum(-1) < min_distance**2
        near &= slot[None] < n_taken[:, None]
        take = live & ~near.any(axis=1)
        r = rows[take]
        taken[r, n_taken[r]] = cand[take]
        n_taken[r] += 1
    for k in range(count):  # the first one taken is the global maximum
        has = n_taken > k + 1
        pos[has, k] = taken[has, k + 1]
        yx = taken[has, k + 1].astype(np.intp)
        val[has, k] = heat[rows[has], yx[:, 1], yx[:, 0]]
    return pos, val


_PEAK_POOL = 16  # local maxima of one map looked at, highest first
_CV_CHANNELS = 512  # OpenCV's most channels per image


def _second_maximum(heat: F32, flat: F32, min_distance: float) -> tuple[F64, F64]:
    """`local_maxima(heat, 1, min_distance)` without the greedy loop (the pair split and the
    hypotheses ask for one maximum per map; the loop's few dozen small numpy calls were most of
    the pair split's time): the first maximum taken is the highest (row-major first among
    equals, as np.argmax), the second the highest at least `min_distance` from it. Within 2 px
    of the first lie at most 8 other pixels, so the second is among the 16 highest and the pool
    never changes the answer. `flat`: (M, h*w), the heights at local maxima, -inf elsewhere."""
    m, _, w = heat.shape
    rows = np.arange(m)
    first = np.argmax(flat, axis=1)
    fy, fx = np.divmod(first, w)
    yy, xx = np.divmod(np.arange(flat.shape[1]), w)
    near = (xx[None] - fx[:, None]) ** 2 + (yy[None] - fy[:, None]) ** 2 < min_distance**2
    rest = np.where(near, np.float32(-np.inf), flat)
    second = np.argmax(rest, axis=1)
    has = np.isfinite(flat[rows, first]) & np.isfinite(rest[rows, second])
    sy, sx = np.divmod(second, w)
    pos = np.zeros((m, 1, 2))
    val = np.zeros((m, 1))
    pos[has, 0, 0], pos[has, 0, 1] = sx[has], sy[has]
    val[has, 0] = rest[rows[has], second[has]]
    return pos, val


def _max3x3(heat: F32) -> F32:
    """Each pixel's 3x3 neighbourhood maximum, the centre included (M, h, w), by OpenCV's
    dilation of the maps as the channels of one image. A replicated border leaves every
    maximum as it is with the outside ignored (the edge pixel is in the neighbourhood)."""
    m, h, w = heat.shape
    out = np.empty_like(heat)
    kernel = np.ones((3, 3), np.uint8)
    for i in range(0, m, _CV_CHANNELS):
        part = np.ascontiguousarray(heat[i : i + _CV_CHANNELS].transpose(1, 2, 0))
        grown = cv2.dilate(part, kernel, borderType=cv2.BORDER_REPLICATE)
        out[i : i + _CV_CHANNELS] = grown.reshape(h, w, -1).transpose(2, 0, 1)
    return out


def hypotheses(
    heatmaps: F32,
    coords: F64,
    person: I64,
    d: I64,
    backbone_d: F64,
    kinds: tuple[str, ...],
    flip_index: npt.NDArray[np.intp] | None,
    phi_d: F64 | None,
    peaks: tuple[F64, F64],
) -> tuple[F64, I64, npt.NDArray[np.bool_]]:
    """Distinct positions for each row's D: (P, H, 2), their kind index into HYPOTHESES
    (P, H), and which exist (P, H). `peaks`: the rows' local maxima of H_D as `local_maxima`
    returns them, one "peaks" hypothesis per column."""
    p = len(person)
    cols: list[tuple[F64, int, npt.NDArray[np.bool_]]] = []
    yes = np.ones(p, dtype=bool)
    if "backbone" in kinds:
        cols.append((backbone_d, HYPOTHESES.index("backbone"), yes))
    if "phi" in kinds and phi_d is not None:
        cols.append((phi_d, HYPOTHESES.index("phi"), yes))
    if "peaks" in kinds:
        pos, val = peaks
        cols.extend(
            (pos[:, k], HYPOTHESES.index("peaks"), val[:, k] > 0) for k in range(pos.shape[1])
        )
    if "mirror" in kinds and flip_index is not None:
        cols.append((coords[person, flip_index[d]], HYPOTHESES.index("mirror"), yes))
    if not cols:
        return np.zeros((p, 0, 2)), np.zeros((p, 0), np.int64), np.zeros((p, 0), bool)
    h, w = heatmaps.shape[-2:]
    pos_ = np.clip(np.stack([c[0] for c in cols], 1).astype(np.float64), 0, [w - 1.0, h - 1.0])
    kind = np.tile(np.array([c[1] for c in cols], dtype=np.int64), (p, 1))
    valid = np.stack([c[2] for c in cols], 1)
    return pos_, kind, valid


def _heat_at(heat: F32, pos: F64) -> F64:
    """H (M, h, w) at positions (M, H, 2), nearest pixel."""
    m, h, w = heat.shape
    x = np.clip(np.rint(pos[..., 0]).astype(np.intp), 0, w - 1)
    y = np.clip(np.rint(pos[..., 1]).astype(np.intp), 0, h - 1)
    out: F64 = heat[np.arange(m)[:, None], y, x].astype(np.float64)
    return out


def hypothesis_features(
    loss: F64,
    cand: F64,
    kinds: I64,
    valid: npt.NDArray[np.bool_],
    current: F64,
    loss_current: F64,
    hd: F32,
) -> F64:
    """ACCEPT_FEATURES of every hypothesis (P, H, F), from Γ's loss at each (P, H)."""
    p, nh = cand.shape[:2]
    feats = np.zeros((p, nh, len(ACCEPT_FEATURES)))
    if p == 0 or nh == 0:
        return feats
    h, w = hd.shape[-2:]
    pos = np.clip(cand, 0.0, [w - 1.0, h - 1.0])
    feats[..., 0] = loss - loss_current[:, None]
    feats[..., 1] = _heat_at(hd, pos)
    feats[..., 2] = _heat_at(hd, current[:, None])[:, :1]
    feats[..., 3] = np.linalg.norm(pos - current[:, None], axis=-1) / w
    for j in range(len(HYPOTHESES)):
        feats[..., 4 + j] = kinds == j
    feats[~valid] = 0.0
    return feats


def limb_features(
    cand: F64, current: F64, anchor: F64, support: F64, names: tuple[str, ...]
) -> F64:
    """HYP_EXTRA_FEATURES `names` of every hypothesis (P, H, len(names)): cand (P, H, 2), the
    current D, the anchor A and the support B (P, 2) each."""
    if not names:
        return np.zeros((*cand.shape[:2], 0))
    proximal = np.linalg.norm(anchor - support, axis=-1) + 0.5  # (P,); half a px: never 0

    def log_ratio(pos: F64) -> F64:
        out: F64 = np.log(
            (np.linalg.norm(pos - anchor[:, None], axis=-1) + 0.5) / proximal[:, None]
        )
        return out

    x_h, x_c = log_ratio(cand), log_ratio(current[:, None])
    values = {"limb_dlog": x_h - x_c, "limb_dlog2": x_h**2 - x_c**2}
    return np.stack([values[n] for n in names], axis=-1)


def accept_probability(config: ScioSearchConfig, feats: F64, group: I64 | None = None) -> F64:
    """The acceptance rule's P(hypothesis closer to the truth than the current D), (P, H); with
    per-group rules, each row (of `group`) by its own."""
    if config.accept_group_weights and group is not None:
        w = _per_group(config.accept_group_weights, group, "accept_group_weights")
        b = _per_group(config.accept_group_bias, group, "accept_group_bias")
        return sigmoid(np.einsum("phf,pf->ph", feats, w) + b[:, None])
    return sigmoid(feats @ np.asarray(config.accept_weights, dtype=np.float64) + config.accept_bias)


def apply_rule(
    config: ScioSearchConfig,
    cand: F64,
    feats: F64,
    valid: npt.NDArray[np.bool_],
    current: F64,
    loss_current: F64,
    group: I64 | None = None,
) -> tuple[F64, F64, npt.NDArray[np.bool_]]:
    """Move each row to its likeliest hypothesis where the rule says "closer" with probability
    above the threshold (its group's, where the settings have per-group thresholds); hypotheses
    within half a pixel of the current D do not count."""
    p = len(current)
    ruled = config.accept_weights or (config.accept_group_weights and group is not None)
    if not ruled or cand.shape[1] == 0:
        return current, loss_current, np.zeros(p, dtype=bool)
    prob = accept_probability(config, feats, group)
    far = np.linalg.norm(cand - current[:, None], axis=-1) > 0.5
    prob = np.where(valid & far, prob, -1.0)
    best = np.argmax(prob, axis=1)
    rows = np.arange(p)
    threshold = np.full(p, config.accept_threshold)
    if config.accept_group_thresholds and group is not None:
        threshold = _per_group(config.accept_group_thresholds, group, "accept_group_thresholds")
    moved = prob[rows, best] > threshold
    end = np.where(moved[:, None], cand[rows, best], current)
    loss = np.where(moved, loss_current + feats[rows, best, 0], loss_current)
    return end, loss, moved


def _active_rows(
    scores: F64, groups: tuple[ScioGroup, ...], min_conf: float, max_distal: float
) -> I64:
    """(person, group) pairs whose A, B and C are confident enough to verify anything, and whose
    D is not already confident beyond `max_distal` (1.0: never skip on that account)."""
    abcd = np.array([[g.a, g.b, g.c, g.d] for g in groups], dtype=np.intp).reshape(-1, 4)
    s = np.asarray(scores)
    ok = s[:, abcd[:, :3]].min(axis=2) >= min_conf  # (N, G)
    if max_distal < 1.0:
        ok &= s[:, abcd[:, 3]] < max_distal
    out: I64 = np.argwhere(ok).astype(np.int64)  # (person, group) pairs, in that order
    return out


def _prior_positions(
    hd: F32,
    phi_heat: F32 | None,
    phi_d: F64 | None,
    backbone_d: F64,
    config: ScioSearchConfig,
    decode: str,
    sigma: float,
) -> F64:
    """Where the search starts: the backbone's D, or the decoded Φ / fused heatmap (SCL),
    anywhere or near the backbone's D (`prior_radius`, in pixels here)."""
    if config.prior == "backbone" or phi_heat is None:
        return backbone_d.copy()
    if config.prior == "phi" and phi_d is not None and config.prior_radius == 0:
        return phi_d.copy()
    prior = (
        phi_heat
        if config.prior == "phi"
        else (config.fusion_weight * hd + (1 - config.fusion_weight) * phi_heat)
    )
    if config.prior_radius > 0:
        return _decoded_near(prior, backbone_d, config.prior_radius, decode, sigma)
    return _decoded(prior, backbone_d, decode, sigma)


def _decoded(heat: F32, fallback: F64, decode: str, sigma: float) -> F64:
    """Decoded positions of (M, h, w) maps (DARK's blur sized for `sigma`, as the bundle's
    codec decodes); a map with no positive peak says nothing, so the fallback (the backbone's D)
    stays."""
    if decode == "dark":
        pos, val = decode_dark(heat.astype(np.float32), dark_kernel_size(sigma))
    else:
        pos, val = decode_argmax(heat.astype(np.float32))
    out: F64 = np.where((val > 0)[:, None], pos, fallback)
    return out


def _decoded_near(heat: F32, centre: F64, radius: float, decode: str, sigma: float) -> F64:
    """Decoded positions of (M, h, w) maps, each map's maximum taken within `radius` px of its
    `centre` (M, 2) and read to sub-pixel as `decode` reads a peak (the DARK or quarter-pixel
    step there, over the whole map); where the disc holds no positive value, the centre stays."""
    m, h, w = heat.shape
    dx = np.arange(w)[None, None, :] - centre[:, 0, None, None]
    dy = np.arange(h)[None, :, None] - centre[:, 1, None, None]
    inside = dx * dx + dy * dy <= radius * radius  # (M, h, w)
    masked = np.where(inside, heat, -np.inf).reshape(m, -1)
    at = masked.argmax(axis=1)
    val = masked[np.arange(m), at]
    y, x = np.divmod(at, w)
    method = "dark" if decode == "dark" else "argmax"
    pos = HeatmapCodec((h, w), (h, w), sigma).refine_at(heat.astype(np.float32), x, y, method)
    out: F64 = np.where((val > 0)[:, None], pos, centre)
    return out


class _Evaluator:
    """Loss of candidate positions; counts Γ head calls."""

    def __init__(
        self,
        gamma: Verifier,
        ctx: Any,
        target: F32,
        hw: tuple[int, int],
        sigma: float,
        batched: bool,
        score: str = "l2",
    ) -> None:
        self.gamma, self.ctx = gamma, ctx
        self.target = _scored(target, score)  # once per row, not once per candidate
        self.hw, self.sigma, self.batched, self.score = hw, sigma, batched, score
        self.calls = 0

    def __call__(self, rows: I64, positions: F64) -> F64:
        """Loss for candidate `positions` (M, 2) of context rows `rows` (M,)."""
        if len(rows) == 0:
            return np.zeros(0)
        hd = render_gaussians(positions, self.hw, self.sigma)
        if self.batched:
            self.calls += 1
            pred = self.gamma.head(self.ctx, rows, hd)
        else:
            parts = []
            for i in range(len(rows)):
                self.calls += 1
                parts.append(self.gamma.head(self.ctx, rows[i : i + 1], hd[i : i + 1]))
            pred = np.concatenate(parts)
        return _norms(self.target[rows] - _scored(pred.reshape(hd.shape), self.score))


def _clip(pos: F64, start: F64, radius: float, hw: tuple[int, int]) -> F64:
    """Keep candidates within `radius` of their start and inside the heatmap."""
    delta = pos - start
    norm = np.linalg.norm(delta, axis=-1, keepdims=True)
    scale = np.minimum(1.0, radius / np.maximum(norm, 1e-12))
    pos = start + delta * scale
    return np.clip(pos, 0.0, [hw[1] - 1.0, hw[0] - 1.0])


def _grid_candidates(start: F64, config: ScioSearchConfig, hw: tuple[int, int]) -> F64:
    """The grid strategy's lattice around each start (P, G, 2), the start itself first."""
    offsets = grid_offsets(config.radius, config.grid_step)  # (G, 2), (0, 0) first
    return _clip(start[:, None, :] + offsets[None], start[:, None, :], config.radius, hw)


def _grid_pick(cand: F64, loss: F64) -> tuple[F64, F64, F64]:
    """The lattice point of least loss: (end, loss at the start, loss at the end)."""
    best = np.argmin(loss, axis=1)
    pick = np.arange(len(cand))
    return cand[pick, best], loss[:, 0], loss[pick, best]


def _descent(
    evaluate: _Evaluator,
    start: F64,
    loss_start: F64,
    config: ScioSearchConfig,
    hw: tuple[int, int],
) -> tuple[F64, F64, F64]:
    """Compass search: each iteration tries the 8 moves of the current step length for every
    active group (one Γ call for all); a group moves to its best improving move, else halves its
    step, and drops out once the step is below `min_step`."""
    p = len(start)
    pos = start.copy()
    loss = loss_start.copy()
    loss_before = loss.copy()
    step = np.full(p, config.step)
    active = np.ones(p, dtype=bool)
    for _ in range(config.iterations):
        act = np.flatnonzero(active)
        if len(act) == 0:
            break
        cand = pos[act, None, :] + step[act, None, None] * COMPASS[None]  # (A, 8, 2)
        cand = _clip(cand, start[act, None, :], config.radius, hw)
        cl = evaluate(np.repeat(act, len(COMPASS)), cand.reshape(-1, 2)).reshape(len(act), -1)
        j = np.argmin(cl, axis=1)
        best = cl[np.arange(len(act)), j]
        better = best < loss[act]
        moved = act[better]
        pos[moved] = cand[np.flatnonzero(better), j[better]]
        loss[moved] = best[better]
        stuck = act[~better]
        step[stuck] /= 2
        active[stuck[step[stuck] < config.min_step]] = False
    return pos, loss_before, loss
