"""The paper's enhanced FLAME mesh: one 4-way midpoint subdivision and teeth from the lip rings.

Subdivision appends one vertex per edge of the subdivided faces; original vertices keep their
indices, so per-vertex data of the base model (lip rings, regions) stays valid. A new vertex
takes the mean of its edge's two ends for the template, blendshapes, pose correctives and
skinning weights; it gets no weight in the joint regressor, so the joints do not move. It
belongs to a region when both ends do.

Departure from the authors' code, on purpose: their subdivision keeps each parent face beside
its four children (a duplicate, coplanar surface); here the parent is replaced. Counts for
FLAME 2023 are in ``docs/head_model.md``.
"""

from __future__ import annotations

import numpy as np

from mega.flame.geometry import face_normals, mesh_edges
from mega.flame.head_model import HeadModel

EYEBALL_REGIONS = ("left_eyeball", "right_eyeball")

# Teeth rows (upper root, upper edge, upper back edge, lower back edge, lower edge, lower root)
# and their texture rectangle: an unused area of FLAME's UV layout (the toy model keeps it free).
TEETH_UV_U = (0.348, 0.085)  # across the ring, corner to corner
TEETH_UV_V = (0.757, 0.791)  # across the six rows
NECK_JOINT, JAW_JOINT = 1, 2


def _split_faces(faces: np.ndarray, mids: np.ndarray) -> np.ndarray:
    """Each face (a,b,c) with midpoints (ab, bc, ca) → four faces, orientation kept. [4F,3]"""
    a, b, c = faces.T
    ab, bc, ca = mids.T
    return np.concatenate([
        np.stack([a, ab, ca], 1), np.stack([ab, b, bc], 1), np.stack([ca, bc, c], 1), np.stack([ab, bc, ca], 1),
    ])


def subdivide(head: HeadModel, exclude_regions: tuple[str, ...] = EYEBALL_REGIONS) -> HeadModel:
    """One 4-way midpoint subdivision of every face not wholly inside ``exclude_regions``."""
    keep_face = head.regions_mask(exclude_regions)[head.faces].all(axis=1)
    split = ~keep_face
    edges, face_edges = mesh_edges(head.faces[split])
    mids = head.n_vertices + face_edges  # the midpoint vertex of each face's corner pairs
    kept = head.faces[keep_face]
    kept_edges = np.sort(np.concatenate([kept[:, [0, 1]], kept[:, [1, 2]], kept[:, [2, 0]]]), axis=1)
    as_key = lambda e: e[:, 0] * head.n_vertices + e[:, 1]  # noqa: E731
    if np.isin(as_key(kept_edges), as_key(edges)).any():
        raise ValueError("excluded regions share edges with subdivided faces; subdivision would crack the mesh")

    uv_edges, uv_face_edges = mesh_edges(head.faces_uv[split])
    uv_mids = head.uvs.shape[0] + uv_face_edges

    def extend(values: np.ndarray) -> np.ndarray:
        return np.concatenate([values, 0.5 * (values[edges[:, 0]] + values[edges[:, 1]])])

    regions = {}
    for name, idx in head.regions.items():
        member = np.zeros(head.n_vertices, dtype=bool)
        member[idx] = True
        new_members = head.n_vertices + np.flatnonzero(member[edges[:, 0]] & member[edges[:, 1]])
        regions[name] = np.concatenate([idx, new_members])

    return head.replace(
        v_template=extend(head.v_template),
        shapedirs=extend(head.shapedirs),
        posedirs=extend(head.posedirs),
        lbs_weights=extend(head.lbs_weights),
        J_regressor=np.concatenate([head.J_regressor, np.zeros((head.J_regressor.shape[0], len(edges)))], axis=1),
        faces=np.concatenate([head.faces[keep_face], _split_faces(head.faces[split], mids)]),
        uvs=np.concatenate([head.uvs, 0.5 * (head.uvs[uv_edges[:, 0]] + head.uvs[uv_edges[:, 1]])]),
        faces_uv=np.concatenate([head.faces_uv[keep_face], _split_faces(head.faces_uv[split], uv_mids)]),
        regions=regions,
    )


def add_teeth(head: HeadModel) -> HeadModel:
    """Append a teeth sheet built behind the lip rings: 6 rows × R vertices, 5 strips of faces.

    Rows: upper root, upper edge, upper back edge, lower back edge, lower edge, lower root. The
    upper rows are skinned to the neck joint (they move with the skull), the lower rows to the
    jaw. Sizes are in units of the mean spacing ``d`` between neighbouring ring vertices: teeth
    sit 1.5 d behind the lips, are 2 d tall and 2 d deep; the lower edge sits 0.4 d further back.
    The identity blendshapes of a column are the mean of its two ring vertices, so the teeth
    follow the face shape; expression blendshapes, pose correctives and the joint regressor
    are zero.
    """
    upper, lower = head.lip_ring_upper, head.lip_ring_lower
    if upper.size < 2 or upper.shape != lower.shape:
        raise ValueError(f"lip rings of sizes {upper.size} and {lower.size}; need two equal rings of >= 2 vertices")
    R = upper.size
    v = head.v_template
    d = float(np.linalg.norm(np.diff(v[upper], axis=0), axis=1).mean())
    mid = 0.5 * (v[upper] + v[lower])  # [R, 3] mouth line
    y, z = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    upper_edge = mid - 1.5 * d * z
    lower_edge = mid - 1.9 * d * z
    rows = np.stack([
        upper_edge + 2 * d * y, upper_edge, upper_edge - 2 * d * z,
        lower_edge - 2 * d * z, lower_edge, lower_edge - 2 * d * y,
    ])  # [6, R, 3]
    n_rows = rows.shape[0]
    teeth_v = rows.reshape(-1, 3)
    base = head.n_vertices

    grid = base + np.arange(n_rows * R).reshape(n_rows, R)
    a, b = grid[:-1, :-1].ravel(), grid[:-1, 1:].ravel()
    c, e = grid[1:, 1:].ravel(), grid[1:, :-1].ravel()
    # Winding chosen so that the front of the teeth faces +z (out of the mouth).
    teeth_f = np.concatenate([np.stack([a, e, b], 1), np.stack([b, e, c], 1)])
    # The first R - 1 triangles are the upper front strip (root to edge).
    if face_normals(np.concatenate([v, teeth_v]), teeth_f[: R - 1])[:, 2].sum() < 0:
        teeth_f = teeth_f[:, [0, 2, 1]]

    uv_base = head.uvs.shape[0]
    us = np.linspace(*TEETH_UV_U, R)
    vs = np.linspace(*TEETH_UV_V, n_rows)
    teeth_uv = np.stack(np.meshgrid(us, vs), axis=-1).reshape(-1, 2)
    teeth_fuv = teeth_f - base + uv_base

    n_teeth = teeth_v.shape[0]
    K = head.shapedirs.shape[2]
    identity = 0.5 * (head.shapedirs[upper, :, : head.n_shape] + head.shapedirs[lower, :, : head.n_shape])
    teeth_shapedirs = np.zeros((n_rows, R, 3, K))
    teeth_shapedirs[..., : head.n_shape] = identity[None]
    weights = np.zeros((n_rows, R, head.lbs_weights.shape[1]))
    weights[:3, :, NECK_JOINT] = 1.0
    weights[3:, :, JAW_JOINT] = 1.0

    regions = dict(head.regions)
    regions["teeth"] = base + np.arange(n_teeth)
    return head.replace(
        v_template=np.concatenate([v, teeth_v]),
        faces=np.concatenate([head.faces, teeth_f]),
        shapedirs=np.concatenate([head.shapedirs, teeth_shapedirs.reshape(n_teeth, 3, K)]),
        posedirs=np.concatenate([head.posedirs, np.zeros((n_teeth,) + head.posedirs.shape[1:])]),
        J_regressor=np.concatenate([head.J_regressor, np.zeros((head.J_regressor.shape[0], n_teeth))], axis=1),
        lbs_weights=np.concatenate([head.lbs_weights, weights.reshape(n_teeth, -1)]),
        uvs=np.concatenate([head.uvs, teeth_uv]),
        faces_uv=np.concatenate([head.faces_uv, teeth_fuv]),
        regions=regions,
    )


def enhance(head: HeadModel, subdivision: bool = True, teeth: bool = True) -> HeadModel:
    """The enhanced mesh of the paper (eq. 1). ``subdivision=False`` is the ``nosubdiv`` ablation."""
    if subdivision:
        head = subdivide(head)
    if teeth:
        head = add_teeth(head)
    return head
