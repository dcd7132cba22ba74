"""The face's mesh: the enhanced head model, its UV layout and the topology the regularisers need."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mega.flame.enhance import EYEBALL_REGIONS, enhance
from mega.flame.geometry import mesh_edges
from mega.flame.head_model import HeadModel
from mega.flame.model import FlameModel

MOUTH_REGIONS = ("lips", "teeth")
"""Edges with both ends here stretch with every word; the edge-length loss masks them out."""


def adjacent_face_pairs(faces: np.ndarray) -> np.ndarray:
    """[P, 2] faces sharing an edge (edges with exactly two faces: the manifold part)."""
    _, face_edges = mesh_edges(faces)
    edge_of_corner = face_edges.reshape(-1)
    owner = np.repeat(np.arange(len(faces)), 3)
    manifold = np.bincount(edge_of_corner)[edge_of_corner] == 2
    order = np.argsort(edge_of_corner[manifold], kind="stable")
    return owner[manifold][order].reshape(-1, 2)


def vertex_uvs(n_vertices: int, faces: np.ndarray, faces_uv: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """[V, 2] one UV per vertex (its first corner's; seams pick one side), in the convention of ``uvs``."""
    out = np.zeros((n_vertices, 2))
    out[faces[::-1].reshape(-1)] = uvs[faces_uv[::-1].reshape(-1)]  # reversed: the first corner wins
    return out


class FaceMesh(nn.Module):
    """Buffers of the enhanced head model for rendering and regularisation. None is saved in
    ``state_dict()``: they are rebuilt from the head model.

    faces [F, 3], faces_uv [F, 3], uvs [T, 2] (image convention: v down), vertex_uv [V, 2],
    no_displacement [V] (eyeballs), scalp_index [S], scalp_faces [F] bool,
    edges [E, 2] (every unique edge), edge_keep [E] bool (False on mouth edges), face_pairs [P, 2].
    """

    def __init__(self, head: HeadModel, subdivision: bool = True, teeth: bool = True):
        super().__init__()
        self.head = enhance(head, subdivision=subdivision, teeth=teeth)
        h = self.head
        self.flame = FlameModel(h, persistent=False)
        as_long = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.int64)  # noqa: E731
        as_float = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
        # OBJ UVs have v up; texture images have row 0 at the top.
        uvs = h.uvs * np.array([1.0, -1.0]) + np.array([0.0, 1.0])
        self.register_buffer("faces", as_long(h.faces), persistent=False)
        self.register_buffer("faces_uv", as_long(h.faces_uv), persistent=False)
        self.register_buffer("uvs", as_float(uvs), persistent=False)
        self.register_buffer("vertex_uv", as_float(vertex_uvs(h.n_vertices, h.faces, h.faces_uv, uvs)),
                             persistent=False)
        self.register_buffer("no_displacement", torch.as_tensor(h.regions_mask(EYEBALL_REGIONS)), persistent=False)
        self.register_buffer("scalp_index", as_long(np.flatnonzero(h.regions_mask(["scalp"]))), persistent=False)
        self.register_buffer("scalp_faces", torch.as_tensor(h.scalp_triangles()), persistent=False)
        mouth = h.regions_mask(MOUTH_REGIONS)
        edges, _ = mesh_edges(h.faces)
        self.register_buffer("edges", as_long(edges), persistent=False)
        self.register_buffer("edge_keep", torch.as_tensor(~(mouth[edges[:, 0]] & mouth[edges[:, 1]])),
                             persistent=False)
        self.register_buffer("face_pairs", as_long(adjacent_face_pairs(h.faces)), persistent=False)

    @property
    def n_vertices(self) -> int:
        return self.head.n_vertices
