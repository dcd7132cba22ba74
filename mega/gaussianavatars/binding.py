"""Gaussians bound to mesh triangles (GaussianAvatars, Qian et al. 2024, eqs. 3–4).

Each Gaussian lives in the frame of one triangle of the posed head mesh: a local position μ
(in units of the triangle's size), a local rotation r and a local log-scale s. Per frame, the
triangle gives its centroid T, an orientation R and a scalar size k, and the Gaussian's world
position is k·R·μ + T, its rotation R·r, its scale k·exp(s). The frame is the authors'
(``utils/graphics_utils.py::compute_face_orientation``): R's columns are the unit direction of
the first edge (v1 − v0), the unit normal ((v1 − v0) × (v2 − v0), normalised) and their cross
product (edge × normal), a rotation by construction; k is the mean of the first edge's length
and the triangle's height over it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mega.geometry import matrix_to_quaternion, quaternion_multiply


def triangle_frames(vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-triangle frames of posed meshes.

    vertices [B, V, 3] metres, faces [F, 3] int64 → centroids [B, F, 3] metres, orientations
    [B, F, 3, 3] (columns: edge, normal, edge × normal), sizes k [B, F] metres.
    """
    v0, v1, v2 = (vertices[:, faces[:, i]] for i in range(3))
    edge = v1 - v0
    a0 = F.normalize(edge, dim=-1)
    a1 = F.normalize(torch.linalg.cross(a0, v2 - v0), dim=-1)
    a2 = -F.normalize(torch.linalg.cross(a1, a0), dim=-1)
    orientation = torch.stack([a0, a1, a2], dim=-1)
    size = 0.5 * (edge.norm(dim=-1) + (a2 * (v2 - v0)).sum(-1).abs())
    centroid = (v0 + v1 + v2) / 3
    return centroid, orientation, size


def bound_to_world(local_means: Tensor, local_quats: Tensor, local_log_scales: Tensor, binding: Tensor,
                   centroid: Tensor, orientation: Tensor, size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """World Gaussians of B frames from their local parameters.

    local_means [N, 3] (units of k), local_quats [N, 4] (w, x, y, z, any norm), local_log_scales
    [N, 3], binding [N] triangle index of each; the frames of :func:`triangle_frames`. Returns
    means [B, N, 3] metres, quats [B, N, 4] unit, scales [B, N, 3] metres. Differentiable in the
    local parameters and in the vertices behind the frames.
    """
    R = orientation[:, binding]  # [B, N, 3, 3]
    k = size[:, binding, None]  # [B, N, 1]
    means = k * (R @ local_means[None, :, :, None])[..., 0] + centroid[:, binding]
    face_quats = matrix_to_quaternion(orientation)[:, binding]  # once per triangle, then gathered
    quats = quaternion_multiply(face_quats, F.normalize(local_quats, dim=-1)[None].expand_as(face_quats))
    scales = k * torch.exp(local_log_scales)[None]
    return means, quats, scales
