"""The statistics behind the verification probes, against their definitions."""

import itertools

import numpy as np
import pytest

from training.probes import Rows, auroc, rank, spearman, summarise


def test_rank_averages_ties() -> None:
    assert rank([3.0, 1.0, 2.0]).tolist() == [2.0, 0.0, 1.0]
    assert rank([1.0, 2.0, 2.0, 5.0]).tolist() == [0.0, 1.5, 1.5, 3.0]


def test_auroc_is_the_pairwise_win_rate() -> None:
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.random(60) < 0.4
    pos, neg = s[y], s[~y]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    assert auroc(s, y) == pytest.approx(wins / (len(pos) * len(neg)))
    assert auroc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert auroc([4, 3, 2, 1], [False, False, True, True]) == 0.0
    assert np.isnan(auroc([1, 2], [True, True]))


def test_spearman_is_pearson_of_ranks() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(spearman(x, np.ones(5)))


def test_summary_measures_on_hand_made_rows() -> None:
    r = Rows()
    # group 0: two rows off by more than 1 px; in one the truth scores better than the start
    for g, start_err, lt, ls, acc, end_err, correct, peak in [
        (0, 3.0, 0.5, 0.9, True, 1.0, True, 0.9),
        (0, 2.0, 0.9, 0.5, True, 3.0, False, 0.2),
        (1, 0.5, 0.4, 0.4, False, 0.5, True, 0.8),
    ]:
        r.group.append(g)
        r.start_err.append(start_err)
        r.backbone_err.append(start_err)
        r.a_err.append(1.0)
        r.loss_truth.append(lt)
        r.loss_start.append(ls)
        r.loss_end.append(ls)
        r.spearman.append(0.5)
        r.gain.append(0.5)
        r.accepted.append(acc)
        r.end_err.append(end_err)
        r.peak.append(peak)
        r.correct.append(correct)
        r.confidence.append(float("nan"))  # no calibration
        r.oks.append(float(correct))
    s = summarise(r, ["a", "b"])
    g0 = s["per_group"]["a"]
    assert g0["truth_beats_start"] == 0.5
    assert g0["accepted"] == 2
    assert g0["accepted_closer"] == 0.5
    assert g0["a_error_over_gain"] == 2.0
    assert s["overall"]["rows"] == 3
    assert np.isnan(s["per_group"]["b"]["truth_beats_start"])  # no row off by 1 px there
    assert s["overall"]["auroc_peak"] == 1.0  # the peaks separate right from wrong here
    assert np.isnan(s["overall"]["auroc_confidence"])
