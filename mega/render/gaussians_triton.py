"""The Gaussian compositing of :mod:`mega.render.gaussians` as Triton kernels: tiles of 16 × 16
pixels, each tile's Gaussians in depth order, one program per tile walking them front to back
(forward) and back to front (backward), stopping as soon as every pixel of the tile has stopped.

Semantics are the torch backend's, pair for pair: the same α (``min(0.99, o·exp(power))``,
skipped below 1/255), the same three stops (transmittance, MeGA's early-stop gap after the
last significant Gaussian, the mesh depth), the same outputs (Σ w·c, Σ w, Σ w·z, the 1st–3rd
near-z and the count of significant Gaussians) and the same gradients to the per-Gaussian table
(means2d, conic, opacity, depth, colours). Two differences of arithmetic, not of method: the
transmittance is a float32 running product (the torch backend sums log(1 − α) in float64; float64
inputs are composited in float32 here, so a threshold test can fall the other way at the last
bit), and the backward pass recovers each Gaussian's transmittance from the pixel's final
log T on the way back, as 3DGS does from the final T, instead of storing it per pair.

Why Triton and not CUDA C++: its interpreter (``TRITON_INTERPRET=1``) runs these very kernels on
CPU tensors, so the tests compare them with the torch backend on a machine without a GPU, and
``triton.compile`` checks that they compile for sm_90 there too; a C++ extension could only be
compiled, never run, without a GPU.

Imported only when the ``triton`` backend is chosen.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mega.render import gaussians as reference
from mega.render.ranges import expand_ranges

TILE = 16  # pixels per tile side: one program composites TILE² pixels
BATCH = 8  # Gaussians per step of a program's loop (unrolled; the stop test runs once a batch)
BIN_BLOCK = 256  # Gaussians per program of the binning kernels
# The torch backend's constants, as constants the kernels can read.
MIN_ALPHA = tl.constexpr(reference.MIN_ALPHA)
MAX_ALPHA = tl.constexpr(reference.MAX_ALPHA)
GEOMETRY_COLUMNS = 7  # table columns before the colours: mean x, mean y, conic A, B, C, opacity, depth


# ----------------------------------------------------------------------------- binning (torch)
def bin_tiles(means2d: Tensor, extent_x: Tensor, extent_y: Tensor, order: Tensor, H: int, W: int
              ) -> tuple[Tensor, Tensor]:
    """Which drawn Gaussians each tile composites, in depth order: in torch, the reference that
    :func:`bin_tiles_fused` (what rendering calls) is tested against.

    means2d [N, 2] pixels, extent_x / extent_y [N] half-sizes (pixels) of each Gaussian's
    α ≥ 1/255 ellipse, order [M] the drawn Gaussians front to back. Returns the Gaussian list
    [P] int32 (tile by tile, each tile's front to back) and tile ranges [n_tiles + 1] int32
    (tile t composites list[ranges[t]:ranges[t + 1]]), tiles row-major.
    """
    tiles_x, tiles_y = triton.cdiv(W, TILE), triton.cdiv(H, TILE)
    mx, my = means2d[order, 0], means2d[order, 1]
    ex, ey = extent_x[order], extent_y[order]
    # The pixel columns/rows whose centres (i + 0.5) the ellipse's bounding box reaches.
    col0 = torch.ceil(mx - ex - 0.5).clamp(0, W - 1).long() // TILE
    col1 = torch.floor(mx + ex - 0.5).clamp(-1, W - 1).long() // TILE  # −1: reaches no pixel centre
    row0 = torch.ceil(my - ey - 0.5).clamp(0, H - 1).long() // TILE
    row1 = torch.floor(my + ey - 0.5).clamp(-1, H - 1).long() // TILE
    nx, ny = (col1 - col0 + 1).clamp_min(0), (row1 - row0 + 1).clamp_min(0)
    pairs = nx * ny
    if int(pairs.sum()) >= 2**31:
        raise ValueError(f"{int(pairs.sum()):,} (tile, Gaussian) pairs: more than the kernels' int32 lists hold; "
                         "render fewer or smaller Gaussians per call")
    rank, offset = expand_ranges(pairs)
    tile = (row0[rank] + offset // nx[rank]) * tiles_x + col0[rank] + offset % nx[rank]
    # A stable sort by tile keeps each tile's Gaussians in depth order (rank is ascending).
    tile, by_tile = torch.sort(tile, stable=True)
    gaussians = order[rank[by_tile]].to(torch.int32)
    counts = torch.bincount(tile, minlength=tiles_x * tiles_y)
    ranges = torch.zeros(tiles_x * tiles_y + 1, dtype=torch.int64, device=means2d.device)
    ranges[1:] = torch.cumsum(counts, 0)
    return gaussians.contiguous(), ranges.to(torch.int32).contiguous()


@triton.jit
def _tile_rect(order_ptr, key_ptr, means2d_ptr, extent_x_ptr, extent_y_ptr, i, live, H, W, TILE_SIZE: tl.constexpr):
    """bin_tiles' tile rectangle of the i-th Gaussian of ``order``: its id, first tile column and
    row, and how many tile columns and rows it reaches (0 × 0 where its key says not drawn)."""
    g = tl.load(order_ptr + i, mask=live, other=0)
    live = live & (tl.load(key_ptr + g, mask=live, other=float("inf")) < float("inf"))
    mx, my = tl.load(means2d_ptr + 2 * g, mask=live, other=0.0), tl.load(means2d_ptr + 2 * g + 1, mask=live, other=0.0)
    ex, ey = tl.load(extent_x_ptr + g, mask=live, other=0.0), tl.load(extent_y_ptr + g, mask=live, other=0.0)
    # The pixel columns/rows whose centres the box reaches, then their tiles (floor, so that the
    # column −1, "no pixel centre", falls in tile −1 as in bin_tiles).
    col0 = tl.floor(tl.minimum(tl.maximum(tl.ceil(mx - ex - 0.5), 0.0), W - 1.0) / TILE_SIZE)
    col1 = tl.floor(tl.minimum(tl.maximum(tl.floor(mx + ex - 0.5), -1.0), W - 1.0) / TILE_SIZE)
    row0 = tl.floor(tl.minimum(tl.maximum(tl.ceil(my - ey - 0.5), 0.0), H - 1.0) / TILE_SIZE)
    row1 = tl.floor(tl.minimum(tl.maximum(tl.floor(my + ey - 0.5), -1.0), H - 1.0) / TILE_SIZE)
    nx = tl.where(live, tl.maximum(col1 - col0 + 1, 0.0), 0.0).to(tl.int32)
    ny = tl.where(live, tl.maximum(row1 - row0 + 1, 0.0), 0.0).to(tl.int32)
    return g, col0.to(tl.int32), row0.to(tl.int32), nx, ny


@triton.jit
def _count_pairs(order_ptr, key_ptr, means2d_ptr, extent_x_ptr, extent_y_ptr, counts_ptr, M, H, W,
                 TILE_SIZE: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    i = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    live = i < M
    _, _, _, nx, ny = _tile_rect(order_ptr, key_ptr, means2d_ptr, extent_x_ptr, extent_y_ptr, i, live, H, W,
                                 TILE_SIZE)
    tl.store(counts_ptr + i, nx.to(tl.int64) * ny, mask=live)


@triton.jit
def _emit_pairs(order_ptr, key_ptr, means2d_ptr, extent_x_ptr, extent_y_ptr, ends_ptr, tiles_ptr, gaussians_ptr, M,
                H, W, tiles_x, TILE_SIZE: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """Each Gaussian's (tile, Gaussian) pairs at its place in the pair list (``ends`` the
    inclusive running count), its tiles in row-major order, as bin_tiles enumerates them."""
    i = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    live = i < M
    g, col0, row0, nx, ny = _tile_rect(order_ptr, key_ptr, means2d_ptr, extent_x_ptr, extent_y_ptr, i, live, H, W,
                                       TILE_SIZE)
    count = nx * ny
    start = tl.load(ends_ptr + i, mask=live, other=0) - count
    columns = tl.maximum(nx, 1)
    for j in range(0, tl.max(count, 0)):
        here = j < count
        tile = (row0 + j // columns) * tiles_x + col0 + j % columns
        tl.store(tiles_ptr + start + j, tile, mask=here)
        tl.store(gaussians_ptr + start + j, g.to(tl.int32), mask=here)


def bin_tiles_fused(means2d: Tensor, extent_x: Tensor, extent_y: Tensor, order: Tensor, key: Tensor, H: int, W: int
                    ) -> tuple[Tensor, Tensor]:
    """:func:`bin_tiles` in two kernels and four torch operations with one wait for the GPU (the
    pair count), instead of some sixty small operations and two waits. ``order`` [M] may hold
    Gaussians that are not drawn (``key`` [N] = ∞): they get no pairs. Same outputs as
    :func:`bin_tiles` on the drawn Gaussians of ``order``."""
    tiles_x, tiles_y = triton.cdiv(W, TILE), triton.cdiv(H, TILE)
    M = order.numel()
    device = means2d.device
    inputs = (order.contiguous(), key.contiguous(), means2d.contiguous(), extent_x.contiguous(), extent_y.contiguous())
    counts = torch.empty(M, dtype=torch.int64, device=device)
    grid = (triton.cdiv(max(M, 1), BIN_BLOCK),)
    if M:
        _count_pairs[grid](*inputs, counts, M, H, W, TILE_SIZE=TILE, BLOCK_SIZE=BIN_BLOCK)
    ends = torch.cumsum(counts, 0)
    total = int(ends[-1]) if M else 0  # the one wait: the lists' length
    if total >= 2**31:
        raise ValueError(f"{total:,} (tile, Gaussian) pairs: more than the kernels' int32 lists hold; "
                         "render fewer or smaller Gaussians per call")
    tiles = torch.empty(total, dtype=torch.int32, device=device)
    gaussians = torch.empty(total, dtype=torch.int32, device=device)
    if total:
        _emit_pairs[grid](*inputs, ends, tiles, gaussians, M, H, W, tiles_x, TILE_SIZE=TILE, BLOCK_SIZE=BIN_BLOCK)
    # A stable sort by tile keeps each tile's Gaussians in depth order (pairs are in depth order).
    tiles, by_tile = torch.sort(tiles, stable=True)
    ranges = torch.searchsorted(tiles, torch.arange(tiles_x * tiles_y + 1, dtype=torch.int32, device=device),
                                out_int32=True)
    return gaussians[by_tile], ranges


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _tile_pixels(tile, H, W, tiles_x, TILE_SIZE: tl.constexpr):
    """The TILE_SIZE² pixels of a tile: flat index, inside the image, pixel-centre x and y."""
    p = tl.arange(0, TILE_SIZE * TILE_SIZE)
    px = (tile % tiles_x) * TILE_SIZE + p % TILE_SIZE
    py = (tile // tiles_x) * TILE_SIZE + p // TILE_SIZE
    return py * W + px, (px < W) & (py < H), px.to(tl.float32) + 0.5, py.to(tl.float32) + 0.5


@triton.jit
def _gaussian_at(table_ptr, list_ptr, k, valid, fx, fy, STRIDE: tl.constexpr):
    """The k-th Gaussian of a tile list and its α at the pixel centres (fx, fy); a slot past the
    list (``valid`` False) has opacity 0. One function for both kernels, so that the backward
    finds α ≥ 1/255 exactly where the forward did."""
    g = tl.load(list_ptr + k, mask=valid, other=0)
    row = table_ptr + g.to(tl.int64) * STRIDE
    mx, my = tl.load(row + 0), tl.load(row + 1)
    ca, cb, cc = tl.load(row + 2), tl.load(row + 3), tl.load(row + 4)
    opacity = tl.where(valid, tl.load(row + 5), 0.0)
    z = tl.load(row + 6)
    dx = fx - mx
    dy = fy - my
    power = -0.5 * (ca * dx * dx + cc * dy * dy) - cb * dx * dy
    gauss = tl.exp(power)
    raw = opacity * gauss
    alpha = tl.minimum(raw, MAX_ALPHA)
    return g, ca, cb, cc, z, dx, dy, gauss, raw, alpha


@triton.jit
def _composite_forward(table_ptr, list_ptr, ranges_ptr, mesh_ptr, image_ptr, near_z_ptr, count_ptr,
                       final_log_t_ptr, last_ptr, H, W, tiles_x, near_z_alpha, gap_m, min_transmittance,
                       STRIDE: tl.constexpr, C: tl.constexpr, CP: tl.constexpr, TILE_SIZE: tl.constexpr,
                       HAS_MESH: tl.constexpr, USE_GAP: tl.constexpr, USE_MIN_T: tl.constexpr,
                       BATCH: tl.constexpr):
    tile = tl.program_id(0)
    pix, inside, fx, fy = _tile_pixels(tile, H, W, tiles_x, TILE_SIZE)
    start = tl.load(ranges_ptr + tile)
    end = tl.load(ranges_ptr + tile + 1)
    if HAS_MESH:
        surface = tl.load(mesh_ptr + pix, mask=inside, other=0.0)
        has_surface = (surface > 0) & (surface < float("inf"))
    cols = tl.arange(0, CP)
    color_mask = cols < C

    transmittance = tl.full([TILE_SIZE * TILE_SIZE], 1.0, tl.float32)
    # log T as well: the backward recovers each Gaussian's T from it, which a product that has
    # underflowed to 0 (about 20 opaque layers without the T cut-off) could not give back.
    log_t = tl.zeros([TILE_SIZE * TILE_SIZE], tl.float32)
    alive = inside
    last_significant = tl.full([TILE_SIZE * TILE_SIZE], float("-inf"), tl.float32)
    count = tl.zeros([TILE_SIZE * TILE_SIZE], tl.int32)
    near0 = tl.full([TILE_SIZE * TILE_SIZE], float("inf"), tl.float32)
    near1 = tl.full([TILE_SIZE * TILE_SIZE], float("inf"), tl.float32)
    near2 = tl.full([TILE_SIZE * TILE_SIZE], float("inf"), tl.float32)
    acc_color = tl.zeros([TILE_SIZE * TILE_SIZE, CP], tl.float32)
    acc_weight = tl.zeros([TILE_SIZE * TILE_SIZE], tl.float32)
    acc_depth = tl.zeros([TILE_SIZE * TILE_SIZE], tl.float32)
    last = tl.zeros([TILE_SIZE * TILE_SIZE], tl.int32) + start

    # Gaussians in batches of BATCH: the loads of a batch do not wait on each other's compositing.
    i = start
    while (i < end) & (tl.max(alive.to(tl.int32), 0) > 0):
        for j in tl.static_range(BATCH):
            k = i + j
            g, ca, cb, cc, z, dx, dy, gauss, raw, alpha = _gaussian_at(table_ptr, list_ptr, k, k < end, fx, fy,
                                                                       STRIDE)
            contributes = alive & (alpha >= MIN_ALPHA)
            stop = contributes & (contributes != contributes)  # all False, of the right shape
            if USE_MIN_T:
                stop = stop | (contributes & (transmittance * (1 - alpha) < min_transmittance))
            if USE_GAP:
                stop = stop | (contributes & (last_significant > float("-inf")) & (z - last_significant > gap_m))
            if HAS_MESH:
                stop = stop | (contributes & has_surface & (z > surface))
            take = contributes & ~stop
            weight = tl.where(take, alpha * transmittance, 0.0)
            color = tl.load(table_ptr + g.to(tl.int64) * STRIDE + 7 + cols, mask=color_mask, other=0.0)
            acc_color += weight[:, None] * color[None, :]
            acc_weight += weight
            acc_depth += weight * z
            significant = take & (alpha > near_z_alpha)
            near0 = tl.where(significant & (count == 0), z, near0)
            near1 = tl.where(significant & (count == 1), z, near1)
            near2 = tl.where(significant & (count == 2), z, near2)
            count += significant.to(tl.int32)
            last_significant = tl.where(significant, z, last_significant)
            transmittance = tl.where(take, transmittance * (1 - alpha), transmittance)
            log_t = tl.where(take, log_t + tl.log(1 - alpha), log_t)
            last = tl.where(take, k + 1, last)
            alive = alive & ~stop
        i += BATCH

    out = pix.to(tl.int64) * (C + 2)
    tl.store(image_ptr + out[:, None] + cols[None, :], acc_color, mask=inside[:, None] & color_mask[None, :])
    tl.store(image_ptr + out + C, acc_weight, mask=inside)
    tl.store(image_ptr + out + C + 1, acc_depth, mask=inside)
    n_pixels = H * W
    tl.store(near_z_ptr + pix, near0, mask=inside)
    tl.store(near_z_ptr + n_pixels + pix, near1, mask=inside)
    tl.store(near_z_ptr + 2 * n_pixels + pix, near2, mask=inside)
    tl.store(count_ptr + pix, count, mask=inside)
    tl.store(final_log_t_ptr + pix, log_t, mask=inside)
    tl.store(last_ptr + pix, last, mask=inside)


@triton.jit
def _composite_backward(table_ptr, list_ptr, ranges_ptr, grad_image_ptr, final_log_t_ptr, last_ptr, grad_table_ptr,
                        H, W, tiles_x, STRIDE: tl.constexpr, C: tl.constexpr, CP: tl.constexpr,
                        TILE_SIZE: tl.constexpr, BATCH: tl.constexpr):
    tile = tl.program_id(0)
    pix, inside, fx, fy = _tile_pixels(tile, H, W, tiles_x, TILE_SIZE)
    start = tl.load(ranges_ptr + tile)
    cols = tl.arange(0, CP)
    color_mask = cols < C

    row = pix.to(tl.int64) * (C + 2)
    grad_color = tl.load(grad_image_ptr + row[:, None] + cols[None, :], mask=inside[:, None] & color_mask[None, :],
                         other=0.0)
    grad_weight = tl.load(grad_image_ptr + row + C, mask=inside, other=0.0)
    grad_depth = tl.load(grad_image_ptr + row + C + 1, mask=inside, other=0.0)
    log_t = tl.load(final_log_t_ptr + pix, mask=inside, other=0.0)
    last = tl.load(last_ptr + pix, mask=inside, other=0)
    behind = tl.zeros([TILE_SIZE * TILE_SIZE], tl.float32)  # Σ over later Gaussians of w·value

    i = tl.max(tl.where(inside, last, start), 0) - 1
    while i >= start:
        for j in tl.static_range(BATCH):
            k = i - j
            g, ca, cb, cc, z, dx, dy, gauss, raw, alpha = _gaussian_at(table_ptr, list_ptr, k, k >= start, fx, fy,
                                                                       STRIDE)
            # Every Gaussian with α ≥ 1/255 before the pixel's last composited one was composited.
            active = inside & (k < last) & (alpha >= MIN_ALPHA)
            if tl.max(active.to(tl.int32), 0) > 0:
                color = tl.load(table_ptr + g.to(tl.int64) * STRIDE + 7 + cols, mask=color_mask, other=0.0)
                log_before = tl.where(active, log_t - tl.log(1 - alpha), log_t)
                t_before = tl.exp(log_before)
                value = tl.sum(color[None, :] * grad_color, 1) + grad_weight + z * grad_depth
                weight = tl.where(active, alpha * t_before, 0.0)
                grad_raw = tl.where(active & (raw <= MAX_ALPHA), t_before * value - behind / (1 - alpha), 0.0)
                behind += weight * value
                log_t = log_before
                grad_power = grad_raw * raw
                out = grad_table_ptr + g.to(tl.int64) * STRIDE
                tl.atomic_add(out + 0, tl.sum(grad_power * (ca * dx + cb * dy), 0))
                tl.atomic_add(out + 1, tl.sum(grad_power * (cb * dx + cc * dy), 0))
                tl.atomic_add(out + 2, tl.sum(-0.5 * grad_power * dx * dx, 0))
                tl.atomic_add(out + 3, tl.sum(-grad_power * dx * dy, 0))
                tl.atomic_add(out + 4, tl.sum(-0.5 * grad_power * dy * dy, 0))
                tl.atomic_add(out + 5, tl.sum(grad_raw * gauss, 0))
                tl.atomic_add(out + 6, tl.sum(weight * grad_depth, 0))
                tl.atomic_add(out + 7 + cols, tl.sum(weight[:, None] * grad_color, 0), mask=color_mask)
        i -= BATCH


# ----------------------------------------------------------------------------- autograd
class TritonComposite(torch.autograd.Function):
    """Same contract as the torch backend's compositing: table [N, 7 + C] per Gaussian (mean x,
    mean y, conic A, B, C, opacity, depth, colours), the tile lists of :func:`bin_tiles`, an
    optional mesh depth [H·W]; returns image [H·W, C + 2] = (Σ w·c, Σ w, Σ w·z), near-z
    [3, H·W] and the significant-Gaussian count [H·W] (the last two not differentiable).

    The kernels compute in float32; a float64 table is composited in float32 and its outputs and
    gradient returned in float64.
    """

    @staticmethod
    def forward(ctx, table, gaussians, ranges, mesh_depth, settings):
        H, W = settings.H, settings.W
        dtype = table.dtype
        work = table.detach().to(torch.float32).contiguous()
        n_colors = work.shape[1] - GEOMETRY_COLUMNS
        device = work.device
        image = torch.empty(H * W, n_colors + 2, dtype=torch.float32, device=device)
        near_z = torch.empty(3, H * W, dtype=torch.float32, device=device)
        count = torch.empty(H * W, dtype=torch.int32, device=device)
        final_log_t = torch.empty(H * W, dtype=torch.float32, device=device)
        last = torch.empty(H * W, dtype=torch.int32, device=device)
        mesh = image if mesh_depth is None else mesh_depth.detach().to(torch.float32).contiguous()
        tiles_x = triton.cdiv(W, TILE)
        grid = (tiles_x * triton.cdiv(H, TILE),)
        _composite_forward[grid](
            work, gaussians, ranges, mesh, image, near_z, count, final_log_t, last, H, W, tiles_x,
            float(settings.near_z_alpha), float(settings.early_stop_gap_m or 0.0),
            float(settings.min_transmittance or 0.0), STRIDE=work.shape[1], C=n_colors,
            CP=triton.next_power_of_2(n_colors), TILE_SIZE=TILE, HAS_MESH=mesh_depth is not None,
            USE_GAP=settings.early_stop_gap_m is not None, USE_MIN_T=settings.min_transmittance is not None,
            BATCH=BATCH)
        ctx.mark_non_differentiable(near_z, count)
        ctx.save_for_backward(work, gaussians, ranges, final_log_t, last)
        ctx.shape, ctx.dtype = (H, W), dtype
        return image.to(dtype), near_z.to(dtype), count

    @staticmethod
    def backward(ctx, grad_image, _grad_near_z, _grad_count):
        work, gaussians, ranges, final_log_t, last = ctx.saved_tensors
        H, W = ctx.shape
        n_colors = work.shape[1] - GEOMETRY_COLUMNS
        grad_table = torch.zeros_like(work)
        tiles_x = triton.cdiv(W, TILE)
        _composite_backward[(tiles_x * triton.cdiv(H, TILE),)](
            work, gaussians, ranges, grad_image.to(torch.float32).contiguous(), final_log_t, last, grad_table, H, W,
            tiles_x, STRIDE=work.shape[1], C=n_colors, CP=triton.next_power_of_2(n_colors), TILE_SIZE=TILE,
            BATCH=BATCH)
        return grad_table.to(ctx.dtype), None, None, None, None


def composite(table: Tensor, means2d: Tensor, extent_x: Tensor, extent_y: Tensor, order: Tensor, key: Tensor,
              mesh_depth: Tensor | None, settings) -> tuple[Tensor, Tensor, Tensor]:
    """Bin the drawn Gaussians (``key`` [N] finite) of ``order`` (depth order; it may go on past
    the drawn ones) into tiles and composite them (see :class:`TritonComposite`)."""
    with torch.no_grad():
        gaussians, ranges = bin_tiles_fused(means2d.detach(), extent_x, extent_y, order, key, settings.H, settings.W)
    return TritonComposite.apply(table, gaussians, ranges, mesh_depth, settings)


def compile_for(capability: int = 90, n_colors: int = 3, flags: bool = True) -> dict[str, bytes]:
    """Compile the compositing kernels for a CUDA GPU of ``capability`` (90 = H100/H200) without
    one, for ``n_colors`` channels and the three stops on (``flags``) or off, and the fused
    projection's (antialiased with ``flags``, classic without), SH colours' (degree 3) and
    binning's kernels: returns each kernel's cubin.
    Raises if they do not compile."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", capability, 32)
    constants = {"STRIDE": GEOMETRY_COLUMNS + n_colors, "C": n_colors, "CP": triton.next_power_of_2(n_colors),
                 "TILE_SIZE": TILE, "BATCH": BATCH}
    common = {"H": "i32", "W": "i32", "tiles_x": "i32"}
    forward = ASTSource(fn=_composite_forward, signature={
        "table_ptr": "*fp32", "list_ptr": "*i32", "ranges_ptr": "*i32", "mesh_ptr": "*fp32", "image_ptr": "*fp32",
        "near_z_ptr": "*fp32", "count_ptr": "*i32", "final_log_t_ptr": "*fp32", "last_ptr": "*i32", **common,
        "near_z_alpha": "fp32", "gap_m": "fp32", "min_transmittance": "fp32",
        **{name: "constexpr" for name in (*constants, "HAS_MESH", "USE_GAP", "USE_MIN_T")}},
        constexprs={**constants, "HAS_MESH": flags, "USE_GAP": flags, "USE_MIN_T": flags})
    backward = ASTSource(fn=_composite_backward, signature={
        "table_ptr": "*fp32", "list_ptr": "*i32", "ranges_ptr": "*i32", "grad_image_ptr": "*fp32",
        "final_log_t_ptr": "*fp32", "last_ptr": "*i32", "grad_table_ptr": "*fp32", **common,
        **{name: "constexpr" for name in constants}}, constexprs=constants)
    from mega.render import projection_triton

    pointers = ("means_ptr", "quats_ptr", "scales_ptr", "opacities_ptr")
    size = {"N": "i32", "W": "fp32", "H": "fp32", "near": "fp32", "BLOCK_SIZE": "constexpr",
            "ANTIALIASED": "constexpr"}
    # The antialiased rasterize mode with the stops (flags), the classic one without.
    project_constants = {"BLOCK_SIZE": projection_triton.BLOCK, "ANTIALIASED": flags}
    project_forward = ASTSource(fn=projection_triton._project_forward, signature={
        **{name: "*fp32" for name in (*pointers, "w2c_ptr", "k_ptr", "means2d_ptr", "rest_ptr", "extent_ptr",
                                      "key_ptr")}, "radii_ptr": "*i64", **size}, constexprs=project_constants)
    project_backward = ASTSource(fn=projection_triton._project_backward, signature={
        **{name: "*fp32" for name in (*pointers, "w2c_ptr", "k_ptr", "grad_means2d_ptr", "grad_rest_ptr",
                                      "grad_means_ptr", "grad_quats_ptr", "grad_scales_ptr",
                                      "grad_opacities_ptr")}, **size}, constexprs=project_constants)
    from mega.render import sh_triton

    sh = {"N": "i32", "K": "i32", "NK": "constexpr", "BLOCK_SIZE": "constexpr"}
    sh_constants = {"NK": 16, "BLOCK_SIZE": sh_triton.BLOCK}
    sh_forward = ASTSource(fn=sh_triton._sh_forward, signature={
        **{name: "*fp32" for name in ("means_ptr", "center_ptr", "sh_ptr", "colors_ptr")}, **sh},
        constexprs=sh_constants)
    sh_backward = ASTSource(fn=sh_triton._sh_backward, signature={
        **{name: "*fp32" for name in ("means_ptr", "center_ptr", "sh_ptr", "grad_colors_ptr", "grad_means_ptr",
                                      "grad_sh_ptr")}, **sh}, constexprs=sh_constants)
    binning = {"order_ptr": "*i64", "key_ptr": "*fp32", "means2d_ptr": "*fp32", "extent_x_ptr": "*fp32",
               "extent_y_ptr": "*fp32"}
    bin_constants = {"TILE_SIZE": TILE, "BLOCK_SIZE": BIN_BLOCK}
    count_pairs = ASTSource(fn=_count_pairs, signature={
        **binning, "counts_ptr": "*i64", "M": "i32", "H": "i32", "W": "i32", "TILE_SIZE": "constexpr",
        "BLOCK_SIZE": "constexpr"}, constexprs=bin_constants)
    emit_pairs = ASTSource(fn=_emit_pairs, signature={
        **binning, "ends_ptr": "*i64", "tiles_ptr": "*i32", "gaussians_ptr": "*i32", "M": "i32", "H": "i32",
        "W": "i32", "tiles_x": "i32", "TILE_SIZE": "constexpr", "BLOCK_SIZE": "constexpr"}, constexprs=bin_constants)
    return {name: triton.compile(source, target=target).asm["cubin"]
            for name, source in (("forward", forward), ("backward", backward), ("project_forward", project_forward),
                                 ("project_backward", project_backward), ("sh_forward", sh_forward),
                                 ("sh_backward", sh_backward), ("count_pairs", count_pairs),
                                 ("emit_pairs", emit_pairs))}
