"""Small geometry shared by the data and model layers."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def fit_similarity(source: np.ndarray, target: np.ndarray,
                   with_scaling: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fit of known correspondences (Kabsch; Umeyama with scaling).

    source, target [S, 3] metres, row k of one matching row k of the other.
    Returns A [3, 3] (a rotation, or scale × rotation with ``with_scaling``) and t [3] metres
    with ``A @ source_k + t ≈ target_k``.
    """
    mu_s, mu_t = source.mean(0), target.mean(0)
    xs, xt = source - mu_s, target - mu_t
    U, S, Vt = np.linalg.svd(xs.T @ xt)
    # For nearly planar, noisy sets the SVD's optimum can be a reflection; flipping the weakest
    # axis gives the best proper rotation instead.
    d = np.sign(np.linalg.det(Vt.T @ U.T)) or 1.0
    D = np.array([1.0, 1.0, d])
    R = Vt.T @ np.diag(D) @ U.T
    scale = float((S * D).sum() / (xs ** 2).sum()) if with_scaling else 1.0
    A = scale * R
    return A, mu_t - A @ mu_s


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] → unit quaternions [..., 4] (w, x, y, z), w >= 0.

    Each of the four classic formulas divides by one component; the one with the largest is
    taken, so the result is stable for every rotation (including 180° turns)."""
    m = matrix
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    candidates = torch.stack([
        torch.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),
        torch.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),
        torch.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),
    ], -2)  # [..., 4, 4]: row k is 4 q_k · q
    best = torch.diagonal(candidates, dim1=-2, dim2=-1).argmax(-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a ⊗ b of quaternions [..., 4] (w, x, y, z): the rotation b, then a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)
