"""The procedural head model: a plausible FLAME-format head whose expressions do what they say."""

import numpy as np
import torch

from mega.flame import EXPRESSIONS, FlameModel, build_toy_head
from mega.flame.files import JOINT_NAMES


def _expr(model, name, amount=1.0):
    e = torch.zeros(1, 100)
    e[0, EXPRESSIONS[name]] = amount
    return model(expr=e)[0].numpy()


def test_layout_matches_flame(toy_head):
    assert toy_head.n_vertices >= 1000
    assert toy_head.shapedirs.shape == (toy_head.n_vertices, 3, 400)
    assert toy_head.posedirs.shape == (toy_head.n_vertices, 3, 36)
    assert toy_head.J_regressor.shape == (len(JOINT_NAMES), toy_head.n_vertices)
    assert toy_head.parents.tolist() == [-1, 0, 1, 1, 1]
    np.testing.assert_allclose(toy_head.lbs_weights.sum(1), 1.0)
    np.testing.assert_allclose(toy_head.J_regressor.sum(1), 1.0)
    for region in ("face", "scalp", "neck", "left_eyeball", "right_eyeball", "lips", "nose", "forehead",
                   "left_ear", "right_ear", "boundary", "eye_region"):
        assert len(toy_head.regions[region]) > 0, region
    assert len(toy_head.lip_ring_upper) == len(toy_head.lip_ring_lower) == 15


def test_plausible_proportions(toy_head):
    v = toy_head.v_template
    height = v[:, 1].max() - v[:, 1].min()
    width = v[:, 0].max() - v[:, 0].min()
    assert 0.25 < height < 0.35 and 0.14 < width < 0.2  # metres, head and neck
    joints = toy_head.J_regressor @ v
    left_eye, right_eye = joints[3], joints[4]
    assert left_eye[0] > 0 > right_eye[0]  # +x is the subject's left
    assert 0.05 < left_eye[0] - right_eye[0] < 0.075  # interpupillary distance
    nose_tip = v[toy_head.regions["nose"]][:, 2].max()
    assert nose_tip == v[toy_head.regions["face"]][:, 2].max()  # the nose sticks out furthest
    assert joints[2, 1] < left_eye[1] and joints[1, 1] < joints[2, 1]  # jaw below eyes, neck below jaw


def test_face_uvs_do_not_overlap(toy_head):
    face = toy_head.region_mask("face")
    tri = toy_head.uvs[toy_head.faces_uv[face[toy_head.faces].all(1)]]  # [T, 3, 2]
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    signed = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    assert np.all(signed > 0) or np.all(signed < 0)  # no flipped triangle
    # Count how many triangles contain each sample point of a fine grid: never more than one.
    g = (np.arange(400) + 0.5) / 400
    pts = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    hits = np.zeros(len(pts), np.int64)
    for t in range(len(tri)):
        lo, hi = tri[t].min(0), tri[t].max(0)
        sel = np.flatnonzero(np.all((pts >= lo) & (pts <= hi), axis=1))
        p = pts[sel]
        w = []
        for i in range(3):
            e0, e1 = tri[t][(i + 1) % 3], tri[t][(i + 2) % 3]
            w.append((e1[0] - e0[0]) * (p[:, 1] - e0[1]) - (e1[1] - e0[1]) * (p[:, 0] - e0[0]))
        w = np.stack(w, 1) * np.sign(signed[t])
        hits[sel[np.all(w > 1e-12, axis=1)]] += 1
    assert hits.max() == 1 and hits.sum() > 1000


def test_expressions_do_what_they_say(toy_head):
    model = FlameModel(toy_head)
    rest = toy_head.v_template
    lower = toy_head.lip_ring_lower[1:-1]
    opened = _expr(model, "jaw_open")
    assert (rest[lower, 1] - opened[lower, 1]).mean() > 0.004  # lower lip drops
    smile = _expr(model, "smile")
    corners = [toy_head.lip_ring_upper[0], toy_head.lip_ring_upper[-1]]
    assert np.all(smile[corners, 1] - rest[corners, 1] > 0.003)  # corners rise
    brows = toy_head.regions["forehead"]
    raised = _expr(model, "brow_raise")
    assert (raised[brows, 1] - rest[brows, 1]).max() > 0.004
    closed = _expr(model, "eyes_close")
    eye_ball_front = rest[toy_head.regions["left_eyeball"], 2].max()
    lids = toy_head.regions["left_eye_region"]
    assert rest[lids, 2].min() < eye_ball_front < closed[lids, 2].max()  # the lid now covers the eye
    assert np.abs(closed[toy_head.regions["scalp"]] - rest[toy_head.regions["scalp"]]).max() < 1e-3


def test_blendshapes_are_smooth(toy_head):
    """Neighbouring vertices move alike: edge differences are small against the motion."""
    e = np.concatenate([toy_head.faces[:, [0, 1]], toy_head.faces[:, [1, 2]]])
    for k in (0, 1, 50, 299, 300, 303, 350):
        d = toy_head.shapedirs[:, :, k]
        motion = np.linalg.norm(d, axis=1).max()
        assert motion > 0, k
        jump = np.linalg.norm(d[e[:, 0]] - d[e[:, 1]], axis=1).max()
        assert jump < 0.5 * motion, k


def test_deterministic():
    a, b = build_toy_head(seed=0), build_toy_head(seed=0)
    np.testing.assert_array_equal(a.shapedirs, b.shapedirs)
    assert not np.array_equal(a.shapedirs, build_toy_head(seed=1).shapedirs)


def test_scalp_triangles_are_those_with_every_corner_on_the_scalp(toy_head):
    scalp = toy_head.region_mask("scalp")
    corners_on_scalp = scalp[toy_head.faces].sum(1)
    triangles = toy_head.scalp_triangles()
    assert triangles.shape == (toy_head.n_faces,) and triangles.any()
    assert (corners_on_scalp[triangles] == 3).all()
    # The hairline: triangles with one or two corners on the scalp are not the scalp's.
    hairline = (corners_on_scalp > 0) & (corners_on_scalp < 3)
    assert hairline.any() and not triangles[hairline].any()
    # Without a scalp region there are none.
    bald = toy_head.replace(regions={k: v for k, v in toy_head.regions.items() if k != "scalp"})
    assert not bald.scalp_triangles().any()
