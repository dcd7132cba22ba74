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


def hair_over_other_triangles(hair: Tensor, triangle_id: Tensor, scalp_faces: Tensor) -> Tensor:
    """[B, 1, H, W] bool: hair pixels whose mesh triangle is not on the scalp.

    hair [B, 1, H, W] bool; triangle_id [B, H, W] (the rasterizer's ``triangle_id + 1``, 0 = no
    triangle); scalp_faces [F] bool. Off the mesh and over the scalp the face stage's white target
    is what the blend wants; over the forehead, cheeks or neck it teaches the skin white."""
    on_scalp = torch.cat([scalp_faces.new_ones(1), scalp_faces])[triangle_id.long()]  # "no triangle" counts as scalp
    return hair & ~on_scalp[:, None]


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


# ---- hair (paper eqs. 12–15)
# Masks are [B, 1, H, W] bool, alphas [B, 1, H, W] in [0, 1], distances in pixels of the image
# the loss sees (the authors' 550 × 802), Gaussian positions in metres, covariances in m².

def hair_only(image: Tensor, hair: Tensor) -> Tensor:
    """The hair stage's images: non-hair pixels set to white, hair pixels as given.

    image [B, 3, H, W], hair [B, 1, H, W] bool. Applied to the render as well as to the ground
    truth, so the white pixels carry no gradient and compare equal."""
    return torch.where(hair, image, torch.ones_like(image))


def hair_photometric(pred: Tensor, target: Tensor, hair: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 12 as the authors compute it: (L2, D-SSIM) between the hair render and the ground
    truth, both with the non-hair pixels set to white (:func:`hair_only`).

    pred: the Gaussian hair alone, composited on white, [B, 3, H, W]; target [B, 3, H, W]
    the captured image; hair [B, 1, H, W] bool the parsed hair mask.
    L2 is the per-pixel Euclidean RGB distance averaged over all B·H·W pixels (outside the
    mask both images are white, so those pixels add 0 but stay in the mean); D-SSIM is
    :func:`dssim` of the two whitened images (its window straddles the mask border, where the
    render's hair meets the target's white)."""
    hair_pred, hair_target = hair_only(pred, hair), hair_only(target, hair)
    return photometric_l2(hair_pred, hair_target), dssim(hair_pred, hair_target)


def hair_distance_weights(hair: Tensor, squared: bool = True, dtype: torch.dtype = torch.float32,
                          pair_budget: int = 1 << 26) -> Tensor:
    """Eq. 13's Δ: for every pixel, the exact Euclidean distance in pixels to the nearest hair
    pixel (0 on the hair) — by default squared, as the authors' weight is.

    hair [B, 1, H, W] bool → [B, 1, H, W] ``dtype``. An image without any hair pixel gets 0
    everywhere (its silhouette term vanishes), which is what the authors' nearest-neighbour
    search returns for an empty target set.

    Exact separable transform: a linear pass along the longer image axis gives each pixel's
    distance to the nearest hair pixel of its own column; a min-plus pass along the shorter axis,
    min over s' of (s − s')² + g(s')², completes it. The second pass costs B·H·W·min(H, W)
    operations, done in chunks of at most ``pair_budget`` elements. Squared distances are
    integers, computed exactly (float64 where H² + W² would exceed float32's exact range).
    The weight is data, not a function of the render: it carries no gradient, and for a fixed
    mask it may be computed once and cached.
    """
    if hair.dim() != 4 or hair.shape[1] != 1:
        raise ValueError(f"hair mask: expected [B, 1, H, W], got {tuple(hair.shape)}")
    B, _, H, W = hair.shape
    work_dtype = torch.float64 if H * H + W * W >= 1 << 24 else torch.float32
    mask = hair[:, 0].bool()
    transposed = W > H
    if transposed:
        mask = mask.transpose(1, 2)
    L, S = mask.shape[1], mask.shape[2]  # S ≤ L: the min-plus pass runs along the shorter axis
    inf = torch.tensor(float("inf"), dtype=work_dtype, device=hair.device)
    index = torch.arange(L, dtype=work_dtype, device=hair.device).view(1, L, 1)
    # Nearest hair pixel above and below, per column: running max / min of the hair rows' indices.
    above = torch.where(mask, index, -inf).cummax(1).values
    below = torch.where(mask, index, inf).flip(1).cummin(1).values.flip(1)
    column = torch.minimum(index - above, below - index)  # inf in a column without hair
    column_sq = column * column
    s = torch.arange(S, dtype=work_dtype, device=hair.device)
    offset_sq = (s[:, None] - s[None, :]) ** 2  # [s, s']
    rows = max(1, pair_budget // max(1, B * S * S))
    distance_sq = torch.cat([(column_sq[:, i:i + rows, None, :] + offset_sq).amin(-1) for i in range(0, L, rows)], 1)
    distance_sq = torch.where(torch.isinf(distance_sq), torch.zeros_like(distance_sq), distance_sq)
    if transposed:
        distance_sq = distance_sq.transpose(1, 2)
    weights = distance_sq if squared else distance_sq.sqrt()
    return weights[:, None].to(dtype)


def silhouette_loss(hair_alpha: Tensor, hair: Tensor, weights: Tensor) -> Tensor:
    """Eq. 13: mean over all B·H·W pixels of |M_hair − Â_hair|·Δ.

    hair_alpha [B, 1, H, W]: the Gaussian hair's alpha where the hair lies in front of the face
    mesh (the authors multiply the rasterized alpha by the hard depth-test mask of the blend);
    hair [B, 1, H, W] bool; weights [B, 1, H, W] from :func:`hair_distance_weights`, held constant.
    Δ is 0 on the hair, so only alpha spilled outside the mask costs, the more the farther
    it spills; hair left uncovered is the photometric and solid terms' business."""
    return ((hair.to(hair_alpha.dtype) - hair_alpha).abs() * weights.detach().to(hair_alpha.dtype)).mean()


def erode(mask: Tensor, size: int = 5) -> Tensor:
    """Binary erosion of [B, 1, H, W] bool by a size × size square (odd ``size``).

    Outside the image counts as inside the mask, as with OpenCV's default border (the authors'
    ``cv2.erode``): hair cut by the frame edge is not eroded there."""
    if size % 2 != 1:
        raise ValueError(f"erosion size: expected an odd number of pixels, got {size}")
    # A pixel stays when no non-mask pixel lies in its window; max-pooling pads with −inf, so
    # pixels beyond the border never count as non-mask.
    outside = F.max_pool2d((~mask.bool()).float(), size, stride=1, padding=size // 2)
    return outside == 0


def solid_hair_loss(hair_alpha: Tensor, hair: Tensor, erode_px: int = 5) -> Tensor:
    """The solid-hair regulariser L_sol: mean over all B·H·W pixels of (1 − Â_hair)·Erode(M_hair).

    hair_alpha [B, 1, H, W]: the Gaussian hair's own alpha (no depth test, as the authors');
    hair [B, 1, H, W] bool; ``erode_px`` the side of the square structuring element (the
    authors' 5 × 5). The hair must be opaque inside its mask; a band of about
    ``erode_px // 2`` pixels along the border may stay translucent."""
    eroded = erode(hair, erode_px).to(hair_alpha.dtype)
    return ((1 - hair_alpha) * eroded).mean()


def offset_regulariser(offsets: dict[str, Tensor]) -> dict[str, Tensor]:
    """Eq. 15's per-Gaussian update penalty, per attribute: the Euclidean norm of each
    Gaussian's offset (not squared, as the authors compute it), averaged over all B·N.

    offsets: name → [B, N, n] offsets as the deformation field outputs them (already × 1e-3);
    returns name → scalar. The authors weight rotation, scaling, opacity and the degree-0 colour
    by 10 each and give the position offset no weight. The norm's gradient at a zero offset is
    0, which matters: the field starts at exactly zero."""
    return {name: _mean(torch.linalg.vector_norm(offset, dim=-1)) for name, offset in offsets.items()}


def _mean(values: Tensor) -> Tensor:
    """The mean, and 0 (with a gradient path) over no element: a hairless avatar's hair has no
    Gaussian, and its regularisers nothing to regularise."""
    return values.mean() if values.numel() else values.sum()


def knn_indices(points: Tensor, k: int = 7, pair_budget: int = 1 << 24) -> Tensor:
    """The k nearest neighbours of every point among the others (itself excluded), by
    Euclidean distance, nearest first.

    points [N, 3] → [N, k] long. Brute force in chunks of at most ``pair_budget`` point pairs,
    so 150k canonical Gaussians fit in a CPU's memory; meant to run once per stage on the frozen
    canonical hair. k = 7 reproduces the authors' AIAP neighbourhood: their ``K = 8`` neighbour
    search counts each point as its own first neighbour and drops it. Fewer points than k + 1
    give each point all the others ([N, N − 1]; none: [0, k]).
    """
    N = points.shape[0]
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points: expected [N, 3], got {tuple(points.shape)}")
    if N == 0:
        return torch.zeros(0, k, dtype=torch.long, device=points.device)
    k = min(k, N - 1)
    rows = max(1, pair_budget // N)
    with torch.no_grad():
        points = points.detach()
        chunks = []
        for start in range(0, N, rows):
            chunk = points[start:start + rows]
            distance = torch.cdist(chunk, points)
            own = torch.arange(chunk.shape[0], device=points.device)
            distance[own, own + start] = float("inf")
            chunks.append(distance.topk(k, dim=1, largest=False).indices)
    return torch.cat(chunks)


def covariances(rotations: Tensor, scales: Tensor) -> Tensor:
    """Gaussian covariances R·diag(s²)·Rᵀ [..., 3, 3] (m²) from rotation matrices [..., 3, 3]
    and scales [..., 3] in metres (activated, not log)."""
    scaled = rotations * scales[..., None, :]
    return scaled @ scaled.transpose(-1, -2)


def _neighbour_distances(values: Tensor, neighbours: Tensor) -> Tensor:
    """[..., N, D] values, [N, k] indices → [..., N, k] Euclidean distances between each value
    and its neighbours' (zero-safe gradient: identical neighbours are common after cloning)."""
    return torch.linalg.vector_norm(values[..., neighbours, :] - values[..., :, None, :], dim=-1)


def _upper_triangle(covariance: Tensor) -> Tensor:
    """[..., 3, 3] → [..., 6]: (xx, xy, xz, yy, yz, zz), the 3DGS "stripped" covariance."""
    rows, cols = torch.triu_indices(3, 3, device=covariance.device)
    return covariance[..., rows, cols]


def aiap_losses(canonical_means: Tensor, deformed_means: Tensor, canonical_cov: Tensor, deformed_cov: Tensor,
                neighbours: Tensor, rotation: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Eq. 15's as-isometric-as-possible loss, as the authors code it: (xyz term, covariance term).

    For every Gaussian i and neighbour j (from :func:`knn_indices` on the canonical means):
    xyz = mean |‖x_i − x_j‖ − ‖x'_i − x'_j‖| (metres) and
    cov = mean |‖u(Σ_i) − u(Σ_j)‖ − ‖u(Σ'_i) − u(Σ'_j)‖| (m²), u = the 6 upper-triangle entries,
    unprimed canonical, primed deformed, means over all B·N·k (the authors average per frame,
    then over frames: the same number). Their weights: 1000 (xyz), 1e5 (cov).

    canonical_means [N, 3], deformed_means [B, N, 3], canonical_cov [N, 3, 3],
    deformed_cov [B, N, 3, 3], neighbours [N, k] long.
    rotation [B, 3, 3]: the frames' rigid head rotation when the deformed Gaussians turn with the
    head. The upper-triangle distance is not rotation invariant, and the authors' Gaussians never
    turn (their rigid transform moves positions only), so Rᵀ·Σ'·R is compared instead: a rigid
    motion then costs nothing and the rest is measured as they measure it. None: as given.
    """
    if rotation is not None:
        deformed_cov = rotation.transpose(-1, -2)[:, None] @ deformed_cov @ rotation[:, None]
    xyz = _mean((_neighbour_distances(canonical_means, neighbours)
                 - _neighbour_distances(deformed_means, neighbours)).abs())
    cov = _mean((_neighbour_distances(_upper_triangle(canonical_cov), neighbours)
                 - _neighbour_distances(_upper_triangle(deformed_cov), neighbours)).abs())
    return xyz, cov


# ---- GaussianAvatars (the baseline; Qian et al. 2024, eqs. 8–9; the authors' train.py)
def _visible_mean(values: Tensor, visible: Tensor) -> Tensor:
    """Mean of values [N] over visible [B, N] (each image's visible Gaussians, all images
    together; the authors' batch of one: the visible ones). 0 when none is visible."""
    weights = visible.to(values.dtype)
    return (weights * values[None]).sum() / weights.sum().clamp_min(1.0)


def position_regulariser(local_means: Tensor, visible: Tensor, threshold: float = 1.0) -> Tensor:
    """mean over visible Gaussians of relu(‖μ‖ − threshold): local positions [N, 3] (units of
    the bound triangle's size) that leave their triangle by more than ``threshold``. The
    authors' default (``metric_xyz`` off): local units, visible = radius > 0 in the image."""
    return _visible_mean(torch.relu(local_means.norm(dim=-1) - threshold), visible)


def scale_regulariser(local_log_scales: Tensor, visible: Tensor, threshold: float = 0.6) -> Tensor:
    """mean over visible Gaussians of ‖relu(exp(s) − threshold)‖₂ (per axis, then the norm over
    the three): local scales [N, 3] as logs, larger than ``threshold`` triangle sizes. The
    authors' default (``metric_scale`` off)."""
    return _visible_mean(torch.relu(torch.exp(local_log_scales) - threshold).norm(dim=-1), visible)
