"""Projection shared by the mesh and the Gaussian renderers.

Both renderers map a camera-space point (OpenCV: x right, y down, z forward, metres) to the
same pixel position ``(fx·x/z + cx, fy·y/z + cy)`` and the same depth ``z``. The mesh path goes
through nvdiffrast's clip space, whose pixel (row i, column j) centre sits at
``x_ndc = 2(j + 0.5)/W − 1``, ``y_ndc = 2(i + 0.5)/H − 1`` (row 0 at y_ndc = −1), so the image
comes out with row 0 at the top, as the photographs are, with no flip.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mega.data.camera import Camera

DEFAULT_NEAR_M = 0.05
DEFAULT_FAR_M = 100.0


def clip_from_camera_matrix(camera: Camera, near_m: float = DEFAULT_NEAR_M, far_m: float = DEFAULT_FAR_M) -> Tensor:
    """[..., 4, 4] matrix taking OpenCV camera coordinates (x, y, z, 1) to clip space.

    x_clip = (2fx/W)·x + (2cx/W − 1)·z, y_clip likewise, w_clip = z, and z_clip/w_clip runs from
    −1 at ``near_m`` to +1 at ``far_m``. Off-centre principal points are exact.
    """
    K = camera.intrinsics
    W, H = float(camera.width), float(camera.height)
    P = torch.zeros(K.shape[:-2] + (4, 4), dtype=K.dtype, device=K.device)
    P[..., 0, 0] = 2 * K[..., 0, 0] / W
    P[..., 0, 2] = 2 * K[..., 0, 2] / W - 1
    P[..., 1, 1] = 2 * K[..., 1, 1] / H
    P[..., 1, 2] = 2 * K[..., 1, 2] / H - 1
    P[..., 2, 2] = (far_m + near_m) / (far_m - near_m)
    P[..., 2, 3] = -2 * far_m * near_m / (far_m - near_m)
    P[..., 3, 2] = 1.0
    return P


def world_to_clip(points: Tensor, camera: Camera, near_m: float = DEFAULT_NEAR_M,
                  far_m: float = DEFAULT_FAR_M) -> Tensor:
    """points [..., V, 3] world metres → clip-space positions [..., V, 4] for :func:`mega.render.mesh.rasterize`.

    A batched camera ([B] leading dims) with unbatched points gives [B, V, 4].
    """
    full = clip_from_camera_matrix(camera, near_m, far_m) @ camera.world_to_camera
    homog = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
    return homog @ full.transpose(-1, -2).to(points.dtype)


def ndc_depth_to_metres(z_over_w: Tensor, near_m: float = DEFAULT_NEAR_M, far_m: float = DEFAULT_FAR_M) -> Tensor:
    """Invert the clip mapping: nvdiffrast's ``z/w`` channel → camera-space depth in metres."""
    a = (far_m + near_m) / (far_m - near_m)
    b = -2 * far_m * near_m / (far_m - near_m)
    return b / (z_over_w - a)
