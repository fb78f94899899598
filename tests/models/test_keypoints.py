import json
from pathlib import Path

import numpy as np
import pytest

from models.keypoints import (
    COCO17,
    CROWDPOSE14,
    KeypointSpec,
    ScioGroup,
    get_spec,
    proximal_groups,
)

SHARED = Path(__file__).resolve().parents[3] / "shared"

# DESIGN.md's table, by name: group -> (A, B, C, D)
DESIGN_GROUPS = {
    "left_arm": ("left_elbow", "left_shoulder", "left_hip", "left_wrist"),
    "right_arm": ("right_elbow", "right_shoulder", "right_hip", "right_wrist"),
    "left_leg": ("left_knee", "left_hip", "left_shoulder", "left_ankle"),
    "right_leg": ("right_knee", "right_hip", "right_shoulder", "right_ankle"),
    "left_head": ("left_eye", "nose", "left_shoulder", "left_ear"),
    "right_head": ("right_eye", "nose", "right_shoulder", "right_ear"),
}


def _by_name(spec: KeypointSpec) -> dict[str, tuple[str, ...]]:
    n = spec.keypoint_names
    return {g.name: tuple(n[i] for i in g.members) for g in spec.groups}


def test_coco_groups_are_the_design_table() -> None:
    assert _by_name(COCO17) == DESIGN_GROUPS
    assert len(COCO17.groups) == 6


def test_named_picks_the_keypoints_whose_names_contain_a_word() -> None:
    face = COCO17.named(("nose", "eye", "ear"))
    assert [n for n, f in zip(COCO17.keypoint_names, face, strict=True) if f] == [
        "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    ]  # fmt: skip
    assert not CROWDPOSE14.named(("nose", "eye", "ear")).any()


def test_crowdpose_uses_the_four_limb_groups() -> None:
    limbs = {k: v for k, v in DESIGN_GROUPS.items() if "head" not in k}
    assert _by_name(CROWDPOSE14) == limbs
    assert CROWDPOSE14.keypoint_names[12:] == ("top_head", "neck")
    assert CROWDPOSE14.eval_iou_type == "keypoints_crowd"


@pytest.mark.parametrize("spec", [COCO17, CROWDPOSE14])
def test_flip_index_swaps_left_and_right_names(spec: KeypointSpec) -> None:
    perm = spec.flip_index
    assert sorted(perm) == list(range(spec.num_keypoints))
    assert np.array_equal(perm[perm], np.arange(spec.num_keypoints))
    for i, j in enumerate(perm):
        a, b = spec.keypoint_names[i], spec.keypoint_names[j]
        if i == j:
            assert not a.startswith(("left_", "right_"))
        else:
            assert a.replace("left_", "X_").replace("right_", "left_").replace("X_", "right_") == b


@pytest.mark.parametrize("spec", [COCO17, CROWDPOSE14])
def test_sided_edges_are_the_skeleton_minus_the_edges_across(spec: KeypointSpec) -> None:
    """The limb loss's edges: one side's limbs only. The flip maps the set onto itself, each
    edge onto its partner on the other side, never onto itself."""
    perm = spec.flip_index
    edges = spec.sided_edges
    across = [e for e in spec.skeleton if e not in edges]
    assert {frozenset(e) for e in edges} == {frozenset(int(perm[i]) for i in e) for e in edges}
    assert all({int(perm[i]) for i in e} != set(e) for e in edges)
    assert all({int(perm[i]) for i in e} == set(e) for e in across)
    if spec is COCO17:
        names = {tuple(spec.keypoint_names[i] for i in e) for e in across}
        assert names == {("left_hip", "right_hip"), ("left_shoulder", "right_shoulder"),
                         ("left_eye", "right_eye")}  # fmt: skip
        assert (spec.index("left_ankle"), spec.index("left_knee")) in edges


@pytest.mark.parametrize("spec", [COCO17, CROWDPOSE14])
def test_sigmas_are_symmetric_and_in_range(spec: KeypointSpec) -> None:
    s = spec.sigmas_array
    assert len(s) == spec.num_keypoints
    assert np.all((s > 0.02) & (s < 0.11))
    assert np.allclose(s, s[spec.flip_index])


def test_coco_category_matches_the_real_annotation_file() -> None:
    ann = SHARED / "data" / "coco-val-mini" / "person_keypoints.json"
    if not ann.exists():
        pytest.skip("../shared/data/coco-val-mini is not beside the checkout")
    cat = json.loads(ann.read_text())["categories"][0]
    ours = COCO17.coco_category()
    assert ours["keypoints"] == cat["keypoints"]
    assert ours["skeleton"] == cat["skeleton"]


@pytest.mark.parametrize("spec", [COCO17, CROWDPOSE14])
def test_dict_round_trip(spec: KeypointSpec) -> None:
    d = json.loads(json.dumps(spec.to_dict()))
    assert KeypointSpec.from_dict(d) == spec


def test_proximal_groups_put_a_torso_joint_in_a() -> None:
    alt = proximal_groups(COCO17)
    names = COCO17.keypoint_names
    for g_old, g_new in zip(COCO17.groups, alt, strict=True):
        assert g_new.d == g_old.d
        assert set(g_new.members) == set(g_old.members)
        assert names[g_new.a].endswith(("shoulder", "hip"))
    assert names[alt[4].a] == "left_shoulder"  # left_head: the shoulder, not the eye


def test_invalid_specs_are_rejected() -> None:
    with pytest.raises(ValueError, match="sigmas"):
        KeypointSpec("x", ("a", "b"), (), (0.1,), (), ())
    with pytest.raises(ValueError, match="flip pair"):
        KeypointSpec("x", ("a", "b"), ((0, 0),), (0.1, 0.1), (), ())
    with pytest.raises(ValueError, match="group"):
        KeypointSpec("x", ("a", "b"), (), (0.1, 0.1), (), (ScioGroup("g", 0, 1, 1, 0),))
    with pytest.raises(ValueError, match="unknown keypoint spec"):
        get_spec("mpii")
