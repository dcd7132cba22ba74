"""Small mesh-geometry helpers shared by the head-model code and its figures."""

from __future__ import annotations

import numpy as np


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted face normals [F, 3] (length = twice the triangle area)."""
    tri = vertices[faces]
    return np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals [V, 3]: the sum of the adjacent area-weighted face normals."""
    per_face = face_normals(vertices, faces)
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], per_face)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def mesh_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique edges [E, 2] (sorted vertex pairs) and, per face, the edge index of its corner
    pairs (01, 12, 20) [F, 3]."""
    pairs = np.stack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], axis=1)  # [F, 3, 2]
    edges, inverse = np.unique(np.sort(pairs, axis=-1).reshape(-1, 2), axis=0, return_inverse=True)
    return edges, inverse.reshape(-1, 3)
