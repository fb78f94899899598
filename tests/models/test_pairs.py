import numpy as np
import pytest

from models.codec import HeatmapCodec, render_gaussians
from models.keypoints import COCO17, CROWDPOSE14
from models.pairs import PairSplit, candidate_pairs, split_pairs

HW = (64, 48)
CODEC = HeatmapCodec((256, 192), HW, 2.0)
ANKLES = (15, 16, 13, 14)  # left/right ankle by left/right knee


def _person(
    foot_a: tuple[float, float],
    foot_b: tuple[float, float],
    knees: tuple[tuple[float, float], tuple[float, float]],
    second: float = 0.6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One person whose ankle channels are the same map (a peak on each foot, the second one
    `second` as high as the first), the knees where given; decoded as the codec decodes."""
    hm = np.zeros((1, 17, *HW), np.float32)
    feet = render_gaussians(np.array([foot_a, foot_b]), HW, 2.0)
    both = feet[0] + second * feet[1]
    hm[0, 15] = hm[0, 16] = both
    hm[0, 13:15] = render_gaussians(np.array(knees), HW, 2.0)
    coords, scores = CODEC.decode(hm, "dark")
    return hm, coords, scores


def test_a_collapsed_pair_goes_to_both_feet_each_under_its_own_knee() -> None:
    # both ankles decode on the higher foot (30, 50); the left knee is above the other foot
    hm, coords, scores = _person((30, 50), (14, 52), ((15, 40), (29, 39)))
    np.testing.assert_allclose(coords[0, 15], coords[0, 16])
    out, out_scores, moved = split_pairs(hm, coords, scores, PairSplit((ANKLES,)), CODEC, "dark")
    assert moved.tolist() == [[True]]
    np.testing.assert_allclose(out[0, 16], coords[0, 16])  # the right one stays
    np.testing.assert_allclose(out[0, 15], (14, 52), atol=0.05)  # sub-pixel, as DARK reads it
    assert out_scores[0, 15] == pytest.approx(hm[0, 15, 52, 14])
    assert out_scores[0, 16] == scores[0, 16]
    # nothing else changes, and the inputs are not written to
    np.testing.assert_array_equal(np.delete(out[0], 15, 0), np.delete(coords[0], 15, 0))
    assert not np.shares_memory(out, coords)


def test_the_assignment_follows_the_knees() -> None:
    hm, coords, scores = _person((30, 50), (14, 52), ((29, 39), (15, 40)))  # knees swapped
    out, _, moved = split_pairs(hm, coords, scores, PairSplit((ANKLES,)), CODEC, "dark")
    assert moved.all()
    np.testing.assert_allclose(out[0, 15], coords[0, 15])
    np.testing.assert_allclose(out[0, 16], (14, 52), atol=0.05)


def test_argmax_decoding_reads_the_second_peak_as_it_reads_the_first() -> None:
    hm, _, _ = _person((30.3, 50.0), (14.0, 52.0), ((15, 40), (29, 39)))
    coords, scores = CODEC.decode(hm, "argmax")
    out, _, _ = split_pairs(hm, coords, scores, PairSplit((ANKLES,)), CODEC, "argmax")
    # the official quarter-pixel step at the second peak: exactly on a pixel there
    np.testing.assert_allclose(out[0, 15], (14, 52))


@pytest.mark.parametrize(
    ("second", "threshold", "feet_apart", "split"),
    [
        (0.6, 0.3, True, True),
        (0.2, 0.3, True, False),  # the second peak too low
        (0.6, 0.7, True, False),  # a stricter threshold
        (0.6, 0.3, False, False),  # one foot: no second peak
    ],
)
def test_split_only_where_a_second_peak_is_high_enough(
    second: float, threshold: float, feet_apart: bool, split: bool
) -> None:
    other = (14, 52) if feet_apart else (30, 50)
    hm, coords, scores = _person((30, 50), other, ((15, 40), (29, 39)), second)
    out, _, moved = split_pairs(
        hm, coords, scores, PairSplit((ANKLES,), min_second=threshold), CODEC, "dark"
    )
    assert moved.tolist() == [[split]]
    assert np.array_equal(out, coords) != split


def test_a_pair_already_apart_is_left_alone() -> None:
    hm, coords, scores = _person((30, 50), (14, 52), ((15, 40), (29, 39)))
    hm[0, 15] = render_gaussians(np.array([[14.0, 52.0]]), HW, 2.0)[0]  # its own map, own foot
    coords, scores = CODEC.decode(hm, "dark")
    out, out_scores, moved = split_pairs(hm, coords, scores, PairSplit((ANKLES,)), CODEC, "dark")
    assert not moved.any()
    np.testing.assert_array_equal(out, coords)
    np.testing.assert_array_equal(out_scores, scores)


def test_no_persons_and_no_pairs() -> None:
    empty = np.zeros((0, 17, *HW), np.float32)
    out, _, moved = split_pairs(
        empty, np.zeros((0, 17, 2)), np.zeros((0, 17)), PairSplit((ANKLES,)), CODEC, "dark"
    )
    assert out.shape == (0, 17, 2)
    assert moved.shape == (0, 1)
    hm, coords, scores = _person((30, 50), (14, 52), ((15, 40), (29, 39)))
    out, _, moved = split_pairs(hm, coords, scores, PairSplit(), CODEC, "dark")
    assert moved.shape == (1, 0)
    np.testing.assert_array_equal(out, coords)


def test_refine_at_the_global_maximum_is_the_decoding() -> None:
    rng = np.random.default_rng(0)
    centers = rng.uniform([3, 3], [44, 60], (20, 2))
    maps = render_gaussians(centers, HW, 2.0) * rng.uniform(0.2, 1.0, (20, 1, 1)).astype(np.float32)
    flat = maps.reshape(20, -1).argmax(1)
    x, y = flat % HW[1], flat // HW[1]
    for method in ("argmax", "dark"):
        coords, _ = CODEC.decode(maps, method)
        np.testing.assert_allclose(CODEC.refine_at(maps, x, y, method), coords, atol=1e-12)
    with pytest.raises(ValueError, match="unknown decode"):
        CODEC.refine_at(maps, x, y, "mean")


def test_candidate_pairs_come_from_the_mirror_image_groups() -> None:
    assert candidate_pairs(COCO17) == ((9, 10, 7, 8), (15, 16, 13, 14), (3, 4, 1, 2))
    # CrowdPose: the four limb groups (wrists by elbows, ankles by knees)
    assert candidate_pairs(CROWDPOSE14) == ((4, 5, 2, 3), (10, 11, 8, 9))


def test_settings_are_checked_and_round_trip() -> None:
    s = PairSplit((ANKLES,), min_second=0.4, max_apart=1.5)
    assert PairSplit.from_dict(s.to_dict()) == s
    s.check(COCO17)
    with pytest.raises(ValueError, match="indices must be in"):
        PairSplit(((15, 16, 13, 17),)).check(COCO17)
    with pytest.raises(ValueError, match="min_second"):
        PairSplit((ANKLES,), min_second=1.5)
    with pytest.raises(ValueError, match="max_apart"):
        PairSplit((ANKLES,), max_apart=0)
    with pytest.raises(ValueError, match="four distinct"):
        PairSplit(((15, 15, 13, 14),))
