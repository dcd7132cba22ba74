"""The enhanced mesh: subdivision keeps the parent model, labels survive, teeth are skinned right."""

import numpy as np
import torch

from mega.flame import FlameModel, add_teeth, subdivide
from mega.flame.enhance import EYEBALL_REGIONS
from mega.flame.geometry import face_normals


def _edges(faces):
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    return np.unique(e, axis=0, return_counts=True)


def test_subdivision_keeps_parents_and_averages_children(toy_head):
    sub = subdivide(toy_head)
    V = toy_head.n_vertices
    for name in ("v_template", "shapedirs", "posedirs", "lbs_weights"):
        np.testing.assert_array_equal(getattr(sub, name)[:V], getattr(toy_head, name), err_msg=name)
    eyeball = np.zeros(V, bool)
    for r in EYEBALL_REGIONS:
        eyeball[toy_head.regions[r]] = True
    split = ~eyeball[toy_head.faces].all(1)
    edges, _ = _edges(toy_head.faces[split])
    assert sub.n_vertices == V + len(edges)
    assert sub.n_faces == (~split).sum() + 4 * split.sum()
    # Each new vertex is the midpoint of one edge, in every per-vertex attribute.
    new = sub.v_template[V:]
    mids = 0.5 * (toy_head.v_template[edges[:, 0]] + toy_head.v_template[edges[:, 1]])
    np.testing.assert_allclose(new, mids)
    np.testing.assert_allclose(sub.shapedirs[V:], 0.5 * (toy_head.shapedirs[edges[:, 0]] + toy_head.shapedirs[edges[:, 1]]))
    np.testing.assert_allclose(sub.lbs_weights.sum(1), 1.0)
    assert np.all(sub.J_regressor[:, V:] == 0)
    np.testing.assert_allclose(sub.J_regressor @ sub.v_template, toy_head.J_regressor @ toy_head.v_template)


def test_subdivision_is_a_clean_manifold_refinement(toy_head):
    sub = subdivide(toy_head)
    _, counts = _edges(sub.faces)
    assert counts.max() == 2  # no edge shared by three faces: parents were replaced, not kept
    def area(v, f):
        return 0.5 * np.linalg.norm(face_normals(v, f), axis=1).sum()

    np.testing.assert_allclose(area(sub.v_template, sub.faces), area(toy_head.v_template, toy_head.faces), rtol=1e-9)
    def uv_area(uv, f):
        a, b = uv[f[:, 1]] - uv[f[:, 0]], uv[f[:, 2]] - uv[f[:, 0]]
        return 0.5 * np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum()

    np.testing.assert_allclose(uv_area(sub.uvs, sub.faces_uv), uv_area(toy_head.uvs, toy_head.faces_uv), rtol=1e-9)


def test_region_labels_survive_subdivision(toy_head):
    sub = subdivide(toy_head)
    V = toy_head.n_vertices
    np.testing.assert_array_equal(sub.region_labels()[:V], toy_head.region_labels())
    for name in toy_head.regions:
        member = sub.region_mask(name)
        np.testing.assert_array_equal(member[:V], toy_head.region_mask(name))
    # A new vertex is in the scalp exactly when both ends of its edge are.
    eyeball = np.zeros(V, bool)
    for r in EYEBALL_REGIONS:
        eyeball[toy_head.regions[r]] = True
    edges, _ = _edges(toy_head.faces[~eyeball[toy_head.faces].all(1)])
    scalp = toy_head.region_mask("scalp")
    np.testing.assert_array_equal(sub.region_mask("scalp")[V:], scalp[edges[:, 0]] & scalp[edges[:, 1]])
    # Eyeballs are not subdivided.
    assert len(sub.regions["left_eyeball"]) == len(toy_head.regions["left_eyeball"])


def test_teeth(toy_head):
    with_teeth = add_teeth(toy_head)
    teeth = with_teeth.regions["teeth"]
    assert len(teeth) == 90 and with_teeth.n_faces - toy_head.n_faces == 140
    assert with_teeth.region_labels()[teeth].tolist() == [1] * 90  # REGION_NAMES[1] == "teeth"
    weights = with_teeth.lbs_weights[teeth].reshape(6, 15, 5)
    assert np.all(weights[:3, :, 1] == 1) and np.all(weights[3:, :, 2] == 1)
    # Teeth sit behind the lips.
    lips_z = toy_head.v_template[toy_head.lip_ring_upper, 2]
    assert np.all(with_teeth.v_template[teeth].reshape(6, 15, 3)[..., 2] < lips_z[None])
    # Teeth UVs live in their own rectangle, overlapping nothing else.
    teeth_uv = with_teeth.uvs[toy_head.uvs.shape[0]:]
    assert teeth_uv.shape == (90, 2)
    u0, u1 = teeth_uv[:, 0].min(), teeth_uv[:, 0].max()
    v0, v1 = teeth_uv[:, 1].min(), teeth_uv[:, 1].max()
    others = toy_head.uvs
    inside = (others[:, 0] > u0) & (others[:, 0] < u1) & (others[:, 1] > v0) & (others[:, 1] < v1)
    assert not inside.any()
    model = FlameModel(with_teeth)
    rest = model(jaw_pose=torch.zeros(1, 3))[0]
    opened = model(jaw_pose=torch.tensor([[0.3, 0.0, 0.0]]))[0]
    moved = (opened - rest).norm(dim=1)[torch.as_tensor(teeth)].reshape(6, 15)
    assert moved[:3].max() < 1e-6 and moved[3:].min() > 1e-3


def test_enhanced_counts(toy_head, toy_enhanced):
    sub = subdivide(toy_head)
    assert toy_enhanced.n_vertices == sub.n_vertices + 90
    assert toy_enhanced.n_faces == sub.n_faces + 140
    assert toy_enhanced.uvs.shape[0] == sub.uvs.shape[0] + 90
