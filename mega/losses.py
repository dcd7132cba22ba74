"""Losses of the three stages. Images are [B, 3, H, W] in [0, 1]; vertices [B, V, 3] in metres;
depths [B, 1, H, W] in metres, compared in millimetres as the paper's thresholds are.

Mesh regularisers follow pytorch3d's definitions (cotangent Laplacian smoothing, normal
consistency, edge length against a reference), on metric vertices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.metrics import ssim as kornia_ssim
from torch import Tensor

MM_PER_M = 1000.0


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` [B, 1|C, H, W] over the pixels where ``mask`` [B, 1, H, W] is set (0 if none)."""
    weight = mask.to(values.dtype).expand_as(values)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def photometric_l2(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean per-pixel Euclidean RGB distance over ``mask`` (the authors' L2)."""
    distance = ((pred - target) ** 2).sum(1, keepdim=True).add(1e-12).sqrt()
    return _masked_mean(distance, mask)


def dssim(pred: Tensor, target: Tensor) -> Tensor:
    """1 − SSIM with an 11 × 11 Gaussian window, σ = 1.5."""
    return 1.0 - kornia_ssim(pred, target, window_size=11).mean()


def depth_l1_mm(pred_m: Tensor, target_m: Tensor, mask: Tensor, gate_mm: float) -> Tensor:
    """L1 in mm over ``mask`` where the target is known and the error is below the gate (eq. 9)."""
    error_mm = (pred_m - target_m).abs() * MM_PER_M
    valid = mask & (target_m > 0) & (error_mm.detach() < gate_mm)
    return _masked_mean(error_mm, valid)


def depth_normals(depth_m: Tensor, intrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """Screen-space normals of a depth map: back-project, cross the finite differences.

    depth [B, 1, H, W] metres (0 = none), intrinsics [B, 3, 3] → normals [B, 3, H, W] (unit,
    camera frame) and valid [B, 1, H, W] (the pixel and its right and lower neighbours have depth).
    """
    B, _, H, W = depth_m.shape
    ys, xs = torch.meshgrid(torch.arange(H, device=depth_m.device, dtype=depth_m.dtype),
                            torch.arange(W, device=depth_m.device, dtype=depth_m.dtype), indexing="ij")
    fx, fy = intrinsics[:, 0, 0].view(B, 1, 1), intrinsics[:, 1, 1].view(B, 1, 1)
    cx, cy = intrinsics[:, 0, 2].view(B, 1, 1), intrinsics[:, 1, 2].view(B, 1, 1)
    z = depth_m[:, 0]
    points = torch.stack([(xs + 0.5 - cx) / fx * z, (ys + 0.5 - cy) / fy * z, z], dim=1)  # [B, 3, H, W]
    dx = F.pad(points[..., :, 1:] - points[..., :, :-1], (0, 1))
    dy = F.pad(points[..., 1:, :] - points[..., :-1, :], (0, 0, 0, 1))
    normals = F.normalize(torch.cross(dy, dx, dim=1), dim=1)
    has = z > 0
    valid = has.clone()
    valid[:, :, :-1] &= has[:, :, 1:]
    valid[:, :-1, :] &= has[:, 1:, :]
    valid[:, :, -1] = False
    valid[:, -1, :] = False
    return normals, valid[:, None]


def normal_loss(pred_m: Tensor, target_m: Tensor, intrinsics: Tensor, mask: Tensor, gate_mm: float) -> Tensor:
    """Mean L1 between the screen-space normals of two depth maps over ``mask``, where both are
    defined and the depth error is below the gate."""
    n_pred, valid_pred = depth_normals(pred_m, intrinsics)
    n_true, valid_true = depth_normals(target_m, intrinsics)
    gate = (pred_m - target_m).abs().detach() * MM_PER_M < gate_mm
    valid = mask & valid_pred & valid_true & gate
    return _masked_mean((n_pred - n_true).abs().sum(1, keepdim=True), valid)


def cotangent_weights(vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Half-cotangent weights of each face's three edges: (rows [3F], cols [3F], w [B, 3F])."""
    a, b, c = (vertices[:, faces[:, k]] for k in range(3))
    la2, lb2, lc2 = ((b - c) ** 2).sum(-1), ((c - a) ** 2).sum(-1), ((a - b) ** 2).sum(-1)
    area = torch.cross(b - a, c - a, dim=-1).norm(dim=-1).clamp_min(1e-12) / 2
    # cot of the angle at a is opposite edge bc, and so on (pytorch3d's cot_laplacian).
    cot_a, cot_b, cot_c = (lb2 + lc2 - la2) / area / 4, (lc2 + la2 - lb2) / area / 4, (la2 + lb2 - lc2) / area / 4
    rows = torch.cat([faces[:, 1], faces[:, 2], faces[:, 0]])
    cols = torch.cat([faces[:, 2], faces[:, 0], faces[:, 1]])
    return rows, cols, torch.cat([cot_a, cot_b, cot_c], dim=1)


def laplacian_smoothing(vertices: Tensor, faces: Tensor) -> Tensor:
    """pytorch3d's ``mesh_laplacian_smoothing(method="cot")``: mean over vertices of
    ‖Σ_j w_ij v_j / Σ_j w_ij − v_i‖, cotangent weights held constant (metres)."""
    B, V, _ = vertices.shape
    with torch.no_grad():
        rows, cols, w = cotangent_weights(vertices, faces)
        rows2, cols2 = torch.cat([rows, cols]), torch.cat([cols, rows])
        w2 = torch.cat([w, w], dim=1)
        weight_sum = vertices.new_zeros(B, V).index_add_(1, rows2, w2)
        inverse = torch.where(weight_sum > 0, 1.0 / weight_sum.clamp_min(1e-12), torch.zeros_like(weight_sum))
    neighbours = vertices.new_zeros(B, V, 3).index_add_(1, rows2, w2[..., None] * vertices[:, cols2])
    return (neighbours * inverse[..., None] - vertices).norm(dim=-1).mean()


def face_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """[B, F, 3] unit normals."""
    a, b, c = (vertices[:, faces[:, k]] for k in range(3))
    return F.normalize(torch.cross(b - a, c - a, dim=-1), dim=-1)


def normal_consistency(vertices: Tensor, faces: Tensor, face_pairs: Tensor) -> Tensor:
    """Mean 1 − cos between the normals of faces sharing an edge."""
    n = face_normals(vertices, faces)
    return (1 - (n[:, face_pairs[:, 0]] * n[:, face_pairs[:, 1]]).sum(-1)).mean()


def edge_length(vertices: Tensor, reference: Tensor, edges: Tensor) -> Tensor:
    """Mean squared difference of edge lengths against a reference mesh (metres²)."""
    length = (vertices[:, edges[:, 0]] - vertices[:, edges[:, 1]]).norm(dim=-1)
    reference_length = (reference[:, edges[:, 0]] - reference[:, edges[:, 1]]).norm(dim=-1)
    return ((length - reference_length) ** 2).mean()


def scalp_shrink(vertices: Tensor, reference: Tensor, selected: Tensor) -> Tensor:
    """Mean distance (metres) of the selected scalp vertices to the centroid of the same vertices
    on the reference (un-displaced) mesh (eq. 10). selected [B, V] bool; 0 when none is."""
    weight = selected.to(vertices.dtype)
    count = weight.sum(1, keepdim=True).clamp_min(1.0)
    centroid = (reference.detach() * weight[..., None]).sum(1, keepdim=True) / count[..., None]
    distance = (vertices - centroid).norm(dim=-1)
    return (distance * weight).sum() / weight.sum().clamp_min(1.0)
