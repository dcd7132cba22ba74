"""Small geometry shared by the data and model layers."""

from __future__ import annotations

import numpy as np


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
