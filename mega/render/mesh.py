"""Mesh primitives with nvdiffrast's conventions, on a torch backend and a CUDA backend.

``rasterize(pos_clip [B, V, 4], tri [F, 3], (H, W)) → rast [B, H, W, 4]`` holds, per pixel,
``(u, v, z/w, triangle_id + 1)``; 0 in the last channel means no triangle. ``u`` and ``v`` are
the perspective-correct barycentric weights of the triangle's vertices 0 and 1 (vertex 2 gets
``1 − u − v``), so ``interpolate`` computes ``u·a0 + v·a1 + (1 − u − v)·a2``. ``texture`` samples
``tex [B, Ht, Wt, C]`` bilinearly at ``uv [B, H, W, 2]`` in [0, 1], texel centres at
``(k + 0.5) / Wt``, row 0 of the array at v = 0.

Gradients flow as in nvdiffrast without antialiasing: through the barycentrics and z/w to the
vertex positions, and through ``interpolate`` and ``texture`` to their inputs; coverage (which
triangle wins a pixel) is piecewise constant and has none.

Backends: ``"torch"`` (CPU or CUDA, exact z-buffer, vectorized over triangles with per-triangle
bounding boxes and chunked to a memory budget), ``"cuda"`` (nvdiffrast, imported only when
selected), ``"auto"`` (nvdiffrast for CUDA tensors when it imports, torch otherwise).
"""

from __future__ import annotations

import sys
import threading
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mega.render.ranges import expand_ranges

Backend = Literal["auto", "torch", "cuda"]

# Upper bound on (triangle, pixel) candidate pairs held at once by the torch rasterizer; each
# pair costs about 60 bytes of temporaries, so 4M pairs stay under a quarter of a gigabyte.
DEFAULT_PAIR_BUDGET = 4_000_000
_EMPTY_KEY = torch.iinfo(torch.int64).max
# Pixel centres exactly on an edge shared by two triangles must not fall in neither of them.
_INSIDE_TOLERANCE = 1e-6


# ----------------------------------------------------------------------------- backend choice
_nvdiffrast_contexts: dict[torch.device, object] = {}
_context_lock = threading.Lock()
# Devices on which nvdiffrast failed to build or load, with why: 'auto' falls back to torch there
# at once rather than trying the build again on every call.
_nvdiffrast_unavailable: dict[torch.device, str] = {}


def _nvdiffrast():
    try:
        import nvdiffrast.torch as dr  # noqa: PLC0415 - the CUDA extension is imported only when chosen
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError("the 'cuda' mesh backend needs nvdiffrast: pip install diffrp-nvdiffrast "
                          "(or choose backend 'torch')") from exc
    _load_nvdiffrast_plugin()
    return dr


def _load_nvdiffrast_plugin() -> None:
    """Build (on first use) and import nvdiffrast's CUDA plugin; later calls find it cached.

    nvdiffrast up to 0.3.3 imports the plugin it has just built by module name, but torch's JIT
    loader no longer puts the build folder on ``sys.path`` (NVlabs/nvdiffrast#228), so the import
    fails even though the build succeeded: put the folder there and import again.
    """
    from nvdiffrast.torch import ops  # noqa: PLC0415

    try:
        ops._get_plugin(gl=False)
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("nvdiffrast_plugin"):
            raise
        from torch.utils.cpp_extension import _get_build_directory  # noqa: PLC0415

        folder = _get_build_directory(exc.name, verbose=False)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        ops._get_plugin(gl=False)


def _cuda_context(device: torch.device):
    dr = _nvdiffrast()
    with _context_lock:
        if device not in _nvdiffrast_contexts:
            _nvdiffrast_contexts[device] = dr.RasterizeCudaContext(device=device)
        return _nvdiffrast_contexts[device]


def resolve_backend(backend: Backend, device: torch.device) -> str:
    """'auto' → 'cuda' for CUDA tensors when nvdiffrast imports, else 'torch'."""
    if backend not in ("auto", "torch", "cuda"):
        raise ValueError(f"mesh backend must be 'auto', 'torch' or 'cuda', got {backend!r}")
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"mesh backend 'cuda' needs CUDA tensors, got tensors on {device}")
    if backend == "auto":
        if device.type != "cuda" or device in _nvdiffrast_unavailable:
            return "torch"
        try:
            _cuda_context(device)  # the first call compiles nvdiffrast's CUDA sources
        except Exception as exc:  # noqa: BLE001 - any failure to build or load means: fall back
            _nvdiffrast_unavailable[device] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"nvdiffrast unavailable on {device} ({_nvdiffrast_unavailable[device]}); "
                          "using the torch mesh backend", stacklevel=3)
            return "torch"
        return "cuda"
    return backend


# ----------------------------------------------------------------------------- rasterize
def rasterize(pos_clip: Tensor, tri: Tensor, resolution: tuple[int, int], backend: Backend = "auto",
              pair_budget: int = DEFAULT_PAIR_BUDGET) -> Tensor:
    """Rasterize triangles.

    pos_clip    [B, V, 4] float, clip-space positions (see :func:`mega.render.projection.world_to_clip`)
    tri         [F, 3] int, vertex indices
    resolution  (H, W) pixels
    returns     rast [B, H, W, 4] float: (u, v, z/w, triangle_id + 1), zeros where empty

    Triangles with a vertex at or behind the camera plane (w ≤ 0) are dropped rather than
    clipped, and fragments outside −1 ≤ z/w ≤ 1 are discarded. Both faces of a triangle are
    drawn (no back-face culling), as nvdiffrast does.
    """
    if pos_clip.ndim != 3 or pos_clip.shape[-1] != 4:
        raise ValueError(f"pos_clip must be [B, V, 4], got {tuple(pos_clip.shape)}")
    if tri.ndim != 2 or tri.shape[-1] != 3:
        raise ValueError(f"tri must be [F, 3], got {tuple(tri.shape)}")
    height, width = int(resolution[0]), int(resolution[1])
    if resolve_backend(backend, pos_clip.device) == "cuda":
        dr = _nvdiffrast()
        rast, _ = dr.rasterize(_cuda_context(pos_clip.device), pos_clip.float().contiguous(),
                               tri.to(torch.int32).contiguous(), (height, width))
        return rast
    return torch.stack([_rasterize_one(pos_clip[b], tri.long(), height, width, pair_budget)
                        for b in range(pos_clip.shape[0])])


def _screen_triangles(pos: Tensor, tri: Tensor, height: int, width: int):
    """Per-triangle screen-space vertices (pixels) and z/w, and which triangles can be drawn."""
    v = pos[tri]  # [F, 3, 4]
    w = v[..., 3]
    drawable = (w > 0).all(dim=1)
    w_safe = torch.where(w > 0, w, torch.ones_like(w))
    sx = (v[..., 0] / w_safe + 1) * (0.5 * width)
    sy = (v[..., 1] / w_safe + 1) * (0.5 * height)
    sz = v[..., 2] / w_safe
    return sx, sy, sz, drawable


@torch.no_grad()
def _visible_triangle_per_pixel(pos: Tensor, tri: Tensor, height: int, width: int, pair_budget: int) -> Tensor:
    """Z-buffer: for each pixel (flattened, [H·W] int64) the nearest triangle index, −1 if none."""
    device = pos.device
    sx, sy, sz, drawable = _screen_triangles(pos.double(), tri, height, width)
    # Pixel centres (j + 0.5) inside [min, max] of the triangle: j in [ceil(min − 0.5), floor(max − 0.5)].
    x0 = torch.ceil(sx.amin(1) - 0.5).clamp(0, width - 1).long()
    x1 = torch.floor(sx.amax(1) - 0.5).clamp(-1, width - 1).long()
    y0 = torch.ceil(sy.amin(1) - 0.5).clamp(0, height - 1).long()
    y1 = torch.floor(sy.amax(1) - 0.5).clamp(-1, height - 1).long()
    box_w = (x1 - x0 + 1).clamp(min=0)
    box_h = (y1 - y0 + 1).clamp(min=0)
    # Screen-space barycentrics and z/w are affine in the pixel position: b = A·x + B·y + C.
    xa, xb, xc = sx.unbind(1)
    ya, yb, yc = sy.unbind(1)
    area = (xb - xa) * (yc - ya) - (xc - xa) * (yb - ya)
    drawable &= area.abs() > 1e-12
    counts = torch.where(drawable, box_w * box_h, torch.zeros_like(box_w))
    area = torch.where(drawable, area, torch.ones_like(area))
    # b0(x, y) = ((xb − x)(yc − y) − (xc − x)(yb − y)) / area, b1 likewise with (c, a).
    A0, B0, C0 = (yb - yc) / area, (xc - xb) / area, (xb * yc - xc * yb) / area
    A1, B1, C1 = (yc - ya) / area, (xa - xc) / area, (xc * ya - xa * yc) / area
    za, zb, zc = sz.unbind(1)
    Az = A0 * (za - zc) + A1 * (zb - zc)
    Bz = B0 * (za - zc) + B1 * (zb - zc)
    Cz = C0 * (za - zc) + C1 * (zb - zc) + zc

    zbuffer = torch.full((height * width,), _EMPTY_KEY, dtype=torch.int64, device=device)
    candidates = torch.nonzero(counts > 0).squeeze(1)
    ends = torch.cumsum(counts[candidates], 0)
    start = 0
    while start < candidates.numel():
        # The largest run of triangles whose candidate pixels fit the budget (at least one).
        base = ends[start - 1] if start > 0 else ends.new_zeros(())
        stop = int(torch.searchsorted(ends, base + pair_budget, right=True))
        stop = max(stop, start + 1)
        ids = candidates[start:stop]
        owner, local = expand_ranges(counts[ids])
        tid = ids.index_select(0, owner)
        bw = box_w[tid]
        px = x0[tid] + local % bw
        py = y0[tid] + local // bw
        cx, cy = px.double() + 0.5, py.double() + 0.5
        b0 = A0[tid] * cx + B0[tid] * cy + C0[tid]
        b1 = A1[tid] * cx + B1[tid] * cy + C1[tid]
        z = Az[tid] * cx + Bz[tid] * cy + Cz[tid]
        keep = ((b0 >= -_INSIDE_TOLERANCE) & (b1 >= -_INSIDE_TOLERANCE) & (1 - b0 - b1 >= -_INSIDE_TOLERANCE)
                & (z >= -1) & (z <= 1))
        # One int64 key orders by depth, then by triangle index: a single scatter-min is the z-test.
        z_bits = ((z[keep] + 1) * (0.5 * (2**31 - 1))).long()
        key = (z_bits << 32) | tid[keep]
        zbuffer.scatter_reduce_(0, py[keep] * width + px[keep], key, reduce="amin")
        start = stop
    winner = zbuffer & 0xFFFFFFFF
    return torch.where(zbuffer == _EMPTY_KEY, torch.full_like(winner, -1), winner)


def _rasterize_one(pos: Tensor, tri: Tensor, height: int, width: int, pair_budget: int) -> Tensor:
    winner = _visible_triangle_per_pixel(pos, tri, height, width, pair_budget)
    covered = torch.nonzero(winner >= 0).squeeze(1)
    tid = winner[covered]
    # Perspective-correct barycentrics of the pixel centre, recomputed with autograd so that
    # gradients reach the vertex positions: β ∝ (x_k − x_ndc·w_k) × (y_k − y_ndc·w_k).
    v = pos[tri[tid]]  # [P, 3, 4]
    x_ndc = (2 * ((covered % width).to(pos.dtype) + 0.5) / width - 1)[:, None]
    y_ndc = (2 * ((covered // width).to(pos.dtype) + 0.5) / height - 1)[:, None]
    a = v[..., 0] - x_ndc * v[..., 3]
    c = v[..., 1] - y_ndc * v[..., 3]
    e = torch.linalg.cross(a, c, dim=1)
    beta = e / e.sum(dim=1, keepdim=True)
    z_over_w = (beta * v[..., 2]).sum(1) / (beta * v[..., 3]).sum(1)
    values = torch.stack([beta[:, 0], beta[:, 1], z_over_w, (tid + 1).to(pos.dtype)], dim=1)
    rast = pos.new_zeros(height * width, 4).index_put((covered,), values)
    return rast.view(height, width, 4)


# ----------------------------------------------------------------------------- interpolate
def interpolate(attr: Tensor, rast: Tensor, tri: Tensor, backend: Backend = "auto") -> Tensor:
    """Interpolate vertex attributes over the rasterized triangles.

    attr   [B, V, C] or [1, V, C] (shared by the batch) or [V, C]
    rast   [B, H, W, 4] from :func:`rasterize`
    tri    [F, 3] int
    returns [B, H, W, C], zeros where no triangle covers the pixel
    """
    if attr.ndim == 2:
        attr = attr[None]
    if attr.ndim != 3:
        raise ValueError(f"attr must be [B, V, C] or [V, C], got {tuple(attr.shape)}")
    B, H, W, _ = rast.shape
    if attr.shape[0] not in (1, B):
        raise ValueError(f"attr batch {attr.shape[0]} does not match rast batch {B}")
    if resolve_backend(backend, rast.device) == "cuda":
        out, _ = _nvdiffrast().interpolate(attr.float().contiguous(), rast, tri.to(torch.int32).contiguous())
        return out
    V, C = attr.shape[1], attr.shape[2]
    flat = rast.reshape(-1, 4)
    covered = torch.nonzero(flat[:, 3].detach() > 0).squeeze(1)
    tid = flat[covered, 3].detach().long() - 1
    corners = tri.long()[tid]  # [P, 3]
    if attr.shape[0] > 1:
        corners = corners + (covered // (H * W) * V)[:, None]
    values = attr.reshape(-1, C)[corners]  # [P, 3, C]
    u, v = flat[covered, 0:1], flat[covered, 1:2]
    out_values = u * values[:, 0] + v * values[:, 1] + (1 - u - v) * values[:, 2]
    out = out_values.new_zeros(B * H * W, C).index_put((covered,), out_values)
    return out.view(B, H, W, C)


# ----------------------------------------------------------------------------- texture
def texture(tex: Tensor, uv: Tensor, boundary_mode: Literal["wrap", "clamp", "zero"] = "wrap",
            backend: Backend = "auto") -> Tensor:
    """Bilinear texture lookup.

    tex     [B, Ht, Wt, C] or [1, Ht, Wt, C] (shared by the batch)
    uv      [B, H, W, 2] in [0, 1]: u along the width, v along the rows (row 0 at v = 0)
    returns [B, H, W, C]
    """
    if tex.ndim != 4 or uv.ndim != 4 or uv.shape[-1] != 2:
        raise ValueError(f"texture needs tex [B, Ht, Wt, C] and uv [B, H, W, 2], got {tuple(tex.shape)} "
                         f"and {tuple(uv.shape)}")
    if boundary_mode not in ("wrap", "clamp", "zero"):
        raise ValueError(f"boundary_mode must be 'wrap', 'clamp' or 'zero', got {boundary_mode!r}")
    if resolve_backend(backend, uv.device) == "cuda":
        return _nvdiffrast().texture(tex.float().contiguous(), uv.float().contiguous(), filter_mode="linear",
                                     boundary_mode=boundary_mode)
    B = uv.shape[0]
    image = tex.permute(0, 3, 1, 2)
    if image.shape[0] == 1 and B > 1:
        image = image.expand(B, -1, -1, -1)
    if boundary_mode == "wrap":
        # One texel of the opposite border on each side, then bilinear lookup inside.
        Ht, Wt = image.shape[-2:]
        image = torch.cat([image[..., -1:, :], image, image[..., :1, :]], dim=-2)
        image = torch.cat([image[..., -1:], image, image[..., :1]], dim=-1)
        uv = uv - torch.floor(uv.detach())
        scale = uv.new_tensor([Wt / (Wt + 2), Ht / (Ht + 2)])
        offset = uv.new_tensor([1 / (Wt + 2), 1 / (Ht + 2)])
        uv = uv * scale + offset
    grid = uv * 2 - 1
    padding = "border" if boundary_mode == "clamp" else "zeros"
    out = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode=padding, align_corners=False)
    return out.permute(0, 2, 3, 1)


def texture_at(tex: Tensor, uv: Tensor, batch_index: Tensor) -> Tensor:
    """Bilinear lookup at scattered points, clamped at the border: what :func:`texture` with
    ``boundary_mode="clamp"`` gives at those pixels, without sampling the uncovered rest.

    tex          [B, C, Ht, Wt] channels first (a decoder's output)
    uv           [N, 2] in [0, 1], v along the rows (row 0 at v = 0)
    batch_index  [N] int, which texture each point reads
    returns      [N, C]
    """
    if tex.ndim != 4 or uv.ndim != 2 or uv.shape[-1] != 2 or batch_index.shape != uv.shape[:1]:
        raise ValueError(f"texture_at needs tex [B, C, Ht, Wt], uv [N, 2], batch_index [N], got "
                         f"{tuple(tex.shape)}, {tuple(uv.shape)}, {tuple(batch_index.shape)}")
    out = uv.new_zeros(uv.shape[0], tex.shape[1]).to(tex.dtype)
    for b in range(tex.shape[0]):
        rows = torch.nonzero(batch_index == b).squeeze(1)
        if rows.numel() == 0:
            continue
        grid = (uv[rows] * 2 - 1).to(tex.dtype).view(1, 1, -1, 2)
        sampled = F.grid_sample(tex[b:b + 1], grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = out.index_put((rows,), sampled[0, :, 0].transpose(0, 1))
    return out
