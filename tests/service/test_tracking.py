"""The video tracker and the 1€ filter of `scio-pose predict`."""

from __future__ import annotations

import numpy as np
import pytest

from service.tracking import KeypointSmoother, OneEuroFilter, Tracker, box_iou


def test_box_iou() -> None:
    a = np.array([[0.0, 0.0, 10.0, 10.0]])
    b = np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50.0 / 150.0, 0.0]])
    assert box_iou(a, np.zeros((0, 4))).shape == (1, 0)


def _box(x: float) -> list[float]:
    return [x, 0.0, x + 20.0, 60.0]


def test_ids_follow_moving_people_and_survive_a_gap() -> None:
    tr = Tracker(iou_threshold=0.3, memory=5)
    ids = []
    for t in range(12):
        missed = 4 <= t <= 6  # nobody detected for three frames; both walk on meanwhile
        boxes = [] if missed else [_box(10 + 4 * t), _box(200 - 4 * t)]
        ids.append(tr.update(np.array(boxes).reshape(-1, 4), t))
    assert ids[0] == [1, 2]
    assert all(i == [1, 2] for t, i in enumerate(ids) if i)


def test_ids_are_retired_after_the_memory_and_never_reused() -> None:
    tr = Tracker(memory=2)
    assert tr.update(np.array([_box(0)]), 0) == [1]
    assert tr.update(np.zeros((0, 4)), 1) == []
    assert tr.update(np.array([_box(0)]), 3) == [1]  # away 2 frames: kept
    assert tr.update(np.array([_box(0)]), 7) == [2]  # away 4 frames: a new ID
    assert tr.update(np.array([_box(0), _box(100)]), 8) == [2, 3]


def test_each_track_takes_one_person() -> None:
    tr = Tracker()
    assert tr.update(np.array([_box(0)]), 0) == [1]
    # two people where one was: the better overlap continues the track
    assert tr.update(np.array([_box(8), _box(1)]), 1) == [2, 1]


def test_one_euro_calms_noise_and_follows_a_step() -> None:
    rng = np.random.default_rng(0)
    f = OneEuroFilter(min_cutoff_hz=1.0, beta=0.01)
    t = np.arange(90) / 30.0
    noisy = 100.0 + rng.normal(0.0, 2.0, (90, 1, 2))
    out = np.array([f(x, s) for x, s in zip(noisy, t, strict=True)])
    assert np.abs(np.diff(out, axis=0)).mean() < 0.3 * np.abs(np.diff(noisy, axis=0)).mean()
    # a jump of 50 px: followed within a second, fast thanks to beta
    g = OneEuroFilter(min_cutoff_hz=1.0, beta=0.05)
    ys = [g(np.array([[0.0 if s < 1.0 else 50.0, 0.0]]), s) for s in t]
    assert ys[-1][0, 0] == pytest.approx(50.0, abs=1.0)
    assert ys[int(1.2 * 30)][0, 0] > 25.0


def test_smoother_restarts_a_track_that_was_away() -> None:
    sm = KeypointSmoother(reset_s=0.5)
    sm(1, np.array([[0.0, 0.0]]), 0.0)
    sm(1, np.array([[0.0, 0.0]]), 0.1)
    # back after 2 s somewhere else: no lag from the old position
    np.testing.assert_allclose(sm(1, np.array([[80.0, 5.0]]), 2.1), [[80.0, 5.0]])
    # another track is its own filter
    np.testing.assert_allclose(sm(2, np.array([[3.0, 4.0]]), 0.1), [[3.0, 4.0]])
