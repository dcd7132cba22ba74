"""The face's mesh: the enhanced head model, its UV layout and the topology the regularisers need."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mega.flame.enhance import EYEBALL_REGIONS, enhance
from mega.flame.head_model import HeadModel
from mega.flame.model import FlameModel

MOUTH_REGIONS = ("lips", "teeth")
"""Edges with both ends here stretch with every word; the edge-length loss leaves them out."""


def unique_edges(faces: np.ndarray) -> np.ndarray:
    """[E, 2] sorted vertex pairs, each edge once."""
    pairs = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return np.unique(np.sort(pairs, axis=1), axis=0)


def adjacent_face_pairs(faces: np.ndarray) -> np.ndarray:
    """[P, 2] faces sharing an edge (edges with exactly two faces: the manifold part)."""
    pairs = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    owner = np.tile(np.arange(len(faces)), 3)
    _, inverse, counts = np.unique(pairs, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    manifold = counts[inverse] == 2
    order = np.argsort(inverse[manifold], kind="stable")
    owners = owner[manifold][order]
    return owners.reshape(-1, 2)


def vertex_uvs(n_vertices: int, faces: np.ndarray, faces_uv: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """[V, 2] one UV per vertex (its first corner's; seams pick one side), OBJ convention (v up)."""
    out = np.zeros((n_vertices, 2))
    out[faces[::-1].reshape(-1)] = uvs[faces_uv[::-1].reshape(-1)]  # reversed: the first corner wins
    return out


class FaceMesh(nn.Module):
    """Buffers of the enhanced head model for rendering and regularisation. None is saved in
    ``state_dict()``: they are rebuilt from the head model.

    faces [F, 3], faces_uv [F, 3], uvs [T, 2] (image convention: v down), vertex_uv [V, 2],
    no_displacement [V] (eyeballs), scalp [V], edges [E, 2] (mouth edges removed),
    face_pairs [P, 2].
    """

    def __init__(self, head: HeadModel, subdivision: bool = True, teeth: bool = True):
        super().__init__()
        self.head = enhance(head, subdivision=subdivision, teeth=teeth)
        h = self.head
        self.flame = FlameModel(h, persistent=False)
        as_long = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.int64)  # noqa: E731
        as_float = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
        flip_v = np.array([0.0, 1.0]) + np.array([1.0, -1.0]) * h.uvs  # texture images have row 0 at the top
        self.register_buffer("faces", as_long(h.faces), persistent=False)
        self.register_buffer("faces_uv", as_long(h.faces_uv), persistent=False)
        self.register_buffer("uvs", as_float(flip_v), persistent=False)
        vertex_uv = np.array([0.0, 1.0]) + np.array([1.0, -1.0]) * vertex_uvs(h.n_vertices, h.faces, h.faces_uv, h.uvs)
        self.register_buffer("vertex_uv", as_float(vertex_uv), persistent=False)
        eyes = np.zeros(h.n_vertices, bool)
        for name in EYEBALL_REGIONS:
            if name in h.regions:
                eyes |= h.region_mask(name)
        self.register_buffer("no_displacement", torch.as_tensor(eyes), persistent=False)
        scalp = h.region_mask("scalp") if "scalp" in h.regions else np.zeros(h.n_vertices, bool)
        self.register_buffer("scalp", torch.as_tensor(scalp), persistent=False)
        mouth = np.zeros(h.n_vertices, bool)
        for name in MOUTH_REGIONS:
            if name in h.regions:
                mouth |= h.region_mask(name)
        edges = unique_edges(h.faces)
        self.register_buffer("edges", as_long(edges[~(mouth[edges[:, 0]] & mouth[edges[:, 1]])]), persistent=False)
        self.register_buffer("face_pairs", as_long(adjacent_face_pairs(h.faces)), persistent=False)

    @property
    def n_vertices(self) -> int:
        return self.head.n_vertices
