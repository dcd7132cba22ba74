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
