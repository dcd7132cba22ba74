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


def photometric_l2(pred: Tensor, target: Tensor) -> Tensor:
    """Mean per-pixel Euclidean RGB distance over the whole frame (the authors' L2: every one
    of the B·H·W pixels counts, the background included)."""
    d = pred - target
    return (d[:, 0] ** 2 + d[:, 1] ** 2 + d[:, 2] ** 2).add(1e-12).sqrt().mean()


def dssim(pred: Tensor, target: Tensor) -> Tensor:
    """1 − SSIM with an 11 × 11 Gaussian window, σ = 1.5."""
    return 1.0 - kornia_ssim(pred, target, window_size=11).mean()


def target_without_hair(image: Tensor, hair: Tensor) -> Tensor:
    """The face stage's ground truth: hair pixels set to white, the rest as captured.

    image [B, 3, H, W], hair [B, 1, H, W] bool. The scalp under the hair then learns white,
    which the blend relies on where hair is thin."""
    return torch.where(hair, torch.ones_like(image), image)


def _flat_ids(triangle_id: Tensor, n_faces: int) -> Tensor:
    """[B, H, W] indices into one table of B · (F + 1) entries (row b holds image b's ids)."""
    B = triangle_id.shape[0]
    return triangle_id.long() + torch.arange(B, device=triangle_id.device).view(B, 1, 1) * (n_faces + 1)


def _triangles_seen(region: Tensor, flat: Tensor, size: int) -> Tensor:
    """[size] bool: the table entries seen at the pixels of ``region`` [B, H, W]. A scatter into
    a spare last entry instead of boolean indexing, so the device never waits for the host."""
    index = torch.where(region, flat, torch.full_like(flat, size)).view(-1)
    seen = torch.zeros(size + 1, dtype=torch.bool, device=flat.device)
    return seen.scatter(0, index, True)[:size]


def seam_free_mask(region: Tensor, triangle_id: Tensor, n_faces: int) -> Tensor:
    """``region`` [B, 1, H, W] bool without the pixels of triangles that the region's border
    cuts: a triangle seen both inside and outside the region (the authors' "seams") mixes
    surfaces in its depth, so none of its pixels supervises depth.

    triangle_id [B, H, W] int: the rasterizer's ``triangle_id + 1``, 0 = no triangle.
    """
    B = triangle_id.shape[0]
    flat = _flat_ids(triangle_id, n_faces)
    size = B * (n_faces + 1)
    inside = region[:, 0]
    seam = _triangles_seen(inside, flat, size) & _triangles_seen(~inside, flat, size)
    seam[::n_faces + 1] = False  # "no triangle" is never a seam
    return region & ~seam[flat][:, None]


def depth_l1_mm(pred_m: Tensor, target_m: Tensor, supervised: Tensor, gate_mm: float) -> tuple[Tensor, Tensor]:
    """Eq. 9's depth term as the authors compute it: L1 in mm between the rendered depth and
    the target depth restricted to ``supervised`` (0 elsewhere), kept where the two differ by
    less than the gate, averaged over all B·H·W pixels.

    Off the region the target is 0, so a pixel the mesh covers there is far outside the gate
    and drops out; so does a pixel whose target depth is unknown (0).
    Returns (loss, gate [B, 1, H, W] bool) — the normal term uses the same gate.
    """
    target_mm = target_m * supervised.to(target_m.dtype) * MM_PER_M
    error_mm = (pred_m * MM_PER_M - target_mm).abs()
    gate = error_mm.detach() < gate_mm
    return (error_mm * gate).mean(), gate


def depth_normals_mm(depth_mm: Tensor) -> Tensor:
    """The authors' screen-space normals: n = normalise(−∂z/∂x, −∂z/∂y, 1) from central pixel
    differences of a depth map in mm (one-sided at the border); where both differences are
    exactly 0 (an empty background) the normal is (1, 1, 1).

    depth_mm [B, 1, H, W] → normals [B, 3, H, W]. The scale is the pixel's: these are not
    metric normals, which is what the authors supervise."""
    dz_dy, dz_dx = torch.gradient(depth_mm[:, 0], dim=(1, 2))
    # Written out per component: a norm across the channel dimension is a strided reduction,
    # several times slower on the CPU.
    inverse_length = torch.rsqrt(dz_dx * dz_dx + dz_dy * dz_dy + 1)
    normals = torch.stack([-dz_dx * inverse_length, -dz_dy * inverse_length, inverse_length], 1)
    flat = ((dz_dx == 0) & (dz_dy == 0))[:, None]
    return torch.where(flat, torch.ones_like(normals), normals)


def stencil_inside(valid: Tensor) -> Tensor:
    """[B, 1, H, W] bool: the pixel and its four neighbours are all ``valid`` (the central
    differences of :func:`depth_normals_mm` read only valid depths there)."""
    padded = F.pad(valid.float(), (1, 1, 1, 1))
    neighbours = torch.stack([padded[..., 1:-1, 2:], padded[..., 1:-1, :-2], padded[..., 2:, 1:-1],
                              padded[..., :-2, 1:-1]]).amin(0)
    return valid & (neighbours > 0)


def normal_loss(pred_m: Tensor, target_m: Tensor, supervised: Tensor, gate: Tensor) -> Tensor:
    """Eq. 9's normal term: the Euclidean norm of the difference of the two depth maps'
    screen-space normals (depth in mm, target restricted to ``supervised``), where the depth
    gate holds and the normal's stencil lies inside the supervised region, averaged over all
    B·H·W pixels."""
    target_mm = target_m * supervised.to(target_m.dtype) * MM_PER_M
    difference = (depth_normals_mm(pred_m * MM_PER_M) - depth_normals_mm(target_mm)) * keep_of(gate, supervised,
                                                                                              target_m)
    squared = difference[:, 0] ** 2 + difference[:, 1] ** 2 + difference[:, 2] ** 2
    # The norm's gradient at 0 (every pixel left out) would be NaN: those pixels get none.
    return torch.where(squared > 0, squared.clamp_min(1e-30).sqrt(), torch.zeros_like(squared)).mean()


def keep_of(gate: Tensor, supervised: Tensor, target_m: Tensor) -> Tensor:
    """Pixels the normal term keeps: the depth gate holds and the normal's stencil lies where
    the target is known and supervised."""
    return gate & stencil_inside(supervised & (target_m > 0))


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


def edge_length(vertices: Tensor, reference: Tensor, edges: Tensor, keep: Tensor) -> Tensor:
    """The authors' edge term: |length − reference length| in metres, averaged over all edges
    of all meshes; edges not in ``keep`` [E] bool (the mouth's) count as 0 but stay in the mean.
    vertices, reference [B, V, 3], edges [E, 2]."""
    length = (vertices[:, edges[:, 0]] - vertices[:, edges[:, 1]]).norm(dim=-1)
    reference_length = (reference[:, edges[:, 0]] - reference[:, edges[:, 1]]).norm(dim=-1)
    return ((length - reference_length).abs() * keep.to(length.dtype)).mean()


def vertices_seen_in(region: Tensor, triangle_id: Tensor, faces: Tensor, n_vertices: int) -> Tensor:
    """[B, V] bool: the vertices of the triangles seen at the pixels of ``region`` [B, 1, H, W]
    (the back-projection of a 2-D mask onto the mesh). triangle_id [B, H, W]: ``id + 1``, 0 = none;
    faces [F, 3]."""
    B, F_ = triangle_id.shape[0], faces.shape[0]
    seen_faces = _triangles_seen(region[:, 0], _flat_ids(triangle_id, F_), B * (F_ + 1)).view(B, F_ + 1)[:, 1:]
    corners = seen_faces.repeat_interleave(3, dim=1).float()  # [B, 3F], face-major like faces.view(-1)
    seen = torch.zeros(B, n_vertices, device=faces.device)
    return seen.scatter_reduce(1, faces.reshape(1, -1).expand(B, -1), corners, reduce="amax") > 0


def scalp_shrink(vertices: Tensor, scalp_reference: Tensor, selected: Tensor) -> Tensor:
    """Eq. 10 as the authors compute it: per image, the mean distance (metres) of the selected
    vertices to the centroid of the scalp on the un-displaced mesh; then the mean over images
    (an image with nothing selected adds 0).

    vertices [B, V, 3]; scalp_reference [B, S, 3] (all scalp vertices before displacement);
    selected [B, V] bool."""
    centroid = scalp_reference.detach().mean(1, keepdim=True)
    weight = selected.to(vertices.dtype)
    distance = (vertices - centroid).norm(dim=-1)
    per_image = (distance * weight).sum(1) / weight.sum(1).clamp_min(1.0)
    return per_image.mean()
