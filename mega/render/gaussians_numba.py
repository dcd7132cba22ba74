"""The Gaussian compositing of :mod:`mega.render.gaussians` as compiled CPU loops (numba): the
CPU's fast path, with the torch backend's outputs and gradients.

The torch backend composites with segmented scans over every (pixel, Gaussian) pair of a chunk:
some thirty passes over arrays of a million pairs per image, and the pairs after a pixel's stop
are computed before they are thrown away. Here each pixel walks its own depth-ordered list front
to back and stops where 3DGS stops, so a pair costs a few arithmetic operations.

Per chunk of at most ``pair_budget`` pairs (spans in depth order, as the torch backend takes
them): a counting sort by pixel of the pairs of the pixels still alive (stable, so each pixel's
list stays front to back), then one loop over pixels that carries each pixel's state
(log T in float64, the last significant depth, the near-z count, alive) into the next chunk, and
keeps (pixel, Gaussian, α, T) of every composited pair for the backward. The backward walks each
pixel's composited pairs back to front across the chunks (the loss's share of everything behind
a pair, in float64, as the torch backend sums it) and adds each pair's gradient to its
Gaussian's table row.

Each image's loops run on one thread: on the small CPUs this path is for, a thread pool of
numba's beside torch's cost more than it gained (measured on 2 cores: five times slower under
load than one thread). A batch's images instead share torch's thread count among Python threads
(:func:`composite_images`; the loops release the GIL), forward and backward, while torch's own
threads wait: 6–16 % off a joint step on two threads (docs/benchmarks.md). numba compiles the
loops on first use and caches the machine code beside this file.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numba import njit
from torch import Tensor

from mega.render.gaussians import MAX_ALPHA, MIN_ALPHA, _span_chunks


@njit(cache=True, nogil=True, inline="always")
def _offset_and_power(table, g, px, py):
    """(dx, dy, exponent of the Gaussian) at pixel centre (px, py) for Gaussian ``g``'s table row."""
    dx = px - table[g, 0]
    dy = py - table[g, 1]
    return dx, dy, -0.5 * (table[g, 2] * dx * dx + table[g, 4] * dy * dy) - table[g, 3] * dx * dy


@njit(cache=True, nogil=True)
def _sort_chunk(span_rank, span_row, span_col0, span_length, order, alive, W, HW):
    """Pairs of live pixels of the chunk's spans, sorted by pixel, each pixel's in depth order:
    (pixel_start [HW + 1] offsets, gaussian [P] ids)."""
    counts = np.zeros(HW + 1, np.int64)
    for s in range(span_rank.shape[0]):
        base = span_row[s] * W + span_col0[s]
        for k in range(span_length[s]):
            if alive[base + k]:
                counts[base + k + 1] += 1
    for p in range(HW):
        counts[p + 1] += counts[p]
    fill = counts[:HW].copy()
    gaussian = np.empty(counts[HW], np.int64)
    for s in range(span_rank.shape[0]):
        base = span_row[s] * W + span_col0[s]
        g = order[span_rank[s]]
        for k in range(span_length[s]):
            p = base + k
            if alive[p]:
                gaussian[fill[p]] = g
                fill[p] += 1
    return counts, gaussian


@njit(cache=True, nogil=True)
def _composite_chunk(pixel_start, gaussian, geometry, colors, W, near_z_alpha, gap, min_t, mesh_depth, use_gap,
                     use_min_t, use_mesh, log_t, last_z, count, alive, image, near_z, kept_alpha, kept_t, kept):
    """Front to back over each pixel's pairs; updates the per-pixel state and outputs in place and
    marks the composited pairs (``kept``, with their α and T)."""
    HW = pixel_start.shape[0] - 1
    n_colors = colors.shape[1]
    for p in range(HW):
        first, last = pixel_start[p], pixel_start[p + 1]
        if first == last:
            continue
        px = (p % W) + 0.5
        py = (p // W) + 0.5
        lt = log_t[p]
        previous_z = last_z[p]
        n = count[p]
        surface = mesh_depth[p] if use_mesh else 0.0
        has_surface = use_mesh and math.isfinite(surface) and surface > 0
        for j in range(first, last):
            g = gaussian[j]
            _, _, power = _offset_and_power(geometry, g, px, py)
            alpha = min(geometry[g, 5] * math.exp(power), MAX_ALPHA)
            if alpha < MIN_ALPHA:
                continue
            z = geometry[g, 6]
            t = math.exp(lt)
            if use_min_t and t * (1.0 - alpha) < min_t:
                alive[p] = False
                break
            if use_gap and math.isfinite(previous_z) and z - previous_z > gap:
                alive[p] = False
                break
            if has_surface and z > surface:
                alive[p] = False
                break
            weight = alpha * t
            for c in range(n_colors):
                image[c, p] += colors[g, c] * weight
            image[n_colors, p] += weight
            image[n_colors + 1, p] += weight * z
            if alpha > near_z_alpha:
                if n < 3:
                    near_z[n, p] = z
                n += 1
                previous_z = max(previous_z, z)
            lt += math.log1p(-alpha)
            kept_alpha[j] = alpha
            kept_t[j] = t
            kept[j] = True
        log_t[p] = lt
        last_z[p] = previous_z
        count[p] = n


@njit(cache=True, nogil=True)
def _backward_chunk(pixel_start, gaussian, alpha, transmittance, table, grad_image, W, behind, grad_table):
    """Back to front over each pixel's composited pairs, adding each pair's gradient with respect
    to its Gaussian's table row into ``grad_table`` [N, 7 + C]. ``behind`` [HW] float64 carries
    the loss's share of the pairs of later chunks and is updated in place."""
    HW = pixel_start.shape[0] - 1
    n_colors = table.shape[1] - 7
    for p in range(HW):
        first, last = pixel_start[p], pixel_start[p + 1]
        if first == last:
            continue
        px = (p % W) + 0.5
        py = (p // W) + 0.5
        acc = behind[p]
        for j in range(last - 1, first - 1, -1):
            g = gaussian[j]
            a = alpha[j]
            t = transmittance[j]
            value = grad_image[p, n_colors] + table[g, 6] * grad_image[p, n_colors + 1]
            for c in range(n_colors):
                value += table[g, 7 + c] * grad_image[p, c]
            weight = a * t
            dx, dy, power = _offset_and_power(table, g, px, py)
            gauss = math.exp(power)
            raw = table[g, 5] * gauss
            grad_raw = (t * value - acc / (1.0 - a)) if raw <= MAX_ALPHA else 0.0
            grad_power = grad_raw * raw
            grad_table[g, 0] += grad_power * (table[g, 2] * dx + table[g, 3] * dy)
            grad_table[g, 1] += grad_power * (table[g, 3] * dx + table[g, 4] * dy)
            grad_table[g, 2] += -0.5 * grad_power * dx * dx
            grad_table[g, 3] += -grad_power * dx * dy
            grad_table[g, 4] += -0.5 * grad_power * dy * dy
            grad_table[g, 5] += grad_raw * gauss
            grad_table[g, 6] += weight * grad_image[p, n_colors + 1]
            for c in range(n_colors):
                grad_table[g, 7 + c] += weight * grad_image[p, c]
            acc += weight * value
        behind[p] = acc


@njit(cache=True, nogil=True)
def _row_spans(means2d, conic, level, extent_y, H, W):
    """:func:`mega.render.gaussians._row_spans` as a loop (same spans, same order): inputs of the
    drawn Gaussians in depth order; returns (rank, row, first column, length) [R]."""
    n = means2d.shape[0]
    total = 0
    for i in range(n):
        row0 = min(max(math.ceil(means2d[i, 1] - extent_y[i] - 0.5), 0), H - 1)
        row1 = min(max(math.floor(means2d[i, 1] + extent_y[i] - 0.5), -1), H - 1)
        total += max(row1 - row0 + 1, 0)
    rank = np.empty(total, np.int64)
    row = np.empty(total, np.int64)
    col0 = np.empty(total, np.int64)
    length = np.empty(total, np.int64)
    r = 0
    for i in range(n):
        mx, my = means2d[i, 0], means2d[i, 1]
        A, B, C = conic[i, 0], conic[i, 1], conic[i, 2]
        row0 = min(max(math.ceil(my - extent_y[i] - 0.5), 0), H - 1)
        row1 = min(max(math.floor(my + extent_y[i] - 0.5), -1), H - 1)
        for y in range(row0, row1 + 1):
            dy = y + 0.5 - my
            disc = B * B * dy * dy - A * (C * dy * dy - level[i])
            if disc < 0:
                continue
            half = math.sqrt(disc) / A
            centre = mx - B * dy / A
            c0 = min(max(math.ceil(centre - half - 0.5), 0), W - 1)
            c1 = min(max(math.floor(centre + half - 0.5), -1), W - 1)
            if c1 - c0 + 1 > 0:
                rank[r], row[r], col0[r], length[r] = i, y, c0, c1 - c0 + 1
                r += 1
    return rank[:r], row[:r], col0[:r], length[:r]


def row_spans(means2d: Tensor, conic: Tensor, level: Tensor, extent_y: Tensor, H: int, W: int):
    """The spans of the drawn Gaussians (depth order) as torch tensors."""
    arrays = [t.detach().contiguous().numpy() for t in (means2d, conic, level, extent_y)]
    return tuple(torch.from_numpy(a) for a in _row_spans(*arrays, H, W))


def _np_dtype(dtype: torch.dtype):
    return np.float64 if dtype == torch.float64 else np.float32


def _forward_image(table: Tensor, order: Tensor, spans: tuple[Tensor, ...], mesh_depth: Tensor | None, settings):
    """One image's compositing: (image [C + 2, H·W], near_z [3, H·W], count [H·W]) as numpy arrays
    and what its backward reads (the composited pairs of each chunk)."""
    H, W = settings.H, settings.W
    HW = H * W
    np_dtype = _np_dtype(table.dtype)
    table_np = table.detach().numpy().astype(np_dtype, copy=False)
    geometry = np.ascontiguousarray(table_np[:, :7])
    colors = np.ascontiguousarray(table_np[:, 7:])
    n_colors = colors.shape[1]
    order_np = order.numpy()
    span_length = spans[3]
    rank, row, col0, length = (t.numpy() for t in spans)
    use_mesh = mesh_depth is not None
    mesh = mesh_depth.numpy().astype(np_dtype, copy=False) if use_mesh else np.zeros(1, np_dtype)
    log_t = np.zeros(HW, np.float64)
    last_z = np.full(HW, -np.inf, np_dtype)
    count = np.zeros(HW, np.int32)
    alive = np.ones(HW, np.bool_)
    image = np.zeros((n_colors + 2, HW), np_dtype)
    near_z = np.full((3, HW), np.inf, np_dtype)
    gap = settings.early_stop_gap_m if settings.early_stop_gap_m is not None else 0.0
    min_t = settings.min_transmittance if settings.min_transmittance is not None else 0.0
    saved = []
    for start, stop in _span_chunks(span_length, settings.pair_budget):
        pixel_start, gaussian = _sort_chunk(rank[start:stop], row[start:stop], col0[start:stop],
                                            length[start:stop], order_np, alive, W, HW)
        P = gaussian.shape[0]
        if P == 0:
            continue
        kept_alpha = np.empty(P, np_dtype)
        kept_t = np.empty(P, np_dtype)
        kept = np.zeros(P, np.bool_)
        _composite_chunk(pixel_start, gaussian, geometry, colors, W, settings.near_z_alpha, gap, min_t, mesh,
                         settings.early_stop_gap_m is not None, settings.min_transmittance is not None, use_mesh,
                         log_t, last_z, count, alive, image, near_z, kept_alpha, kept_t, kept)
        # Keep only the composited pairs, still grouped by pixel.
        kept_before = np.zeros(P + 1, np.int64)
        np.cumsum(kept, out=kept_before[1:])
        kept_start = kept_before[pixel_start]
        saved.append((kept_start, gaussian[kept], kept_alpha[kept], kept_t[kept]))
    return image, near_z, count, saved


def _backward_image(table: Tensor, saved: list, grad_image: np.ndarray, W: int, out: np.ndarray) -> None:
    """One image's gradient with respect to its table [N, 7 + C], added into ``out`` (numpy,
    zeros); ``grad_image`` [H·W, C + 2] numpy in the table's precision."""
    np_dtype = _np_dtype(table.dtype)
    table_np = np.ascontiguousarray(table.detach().numpy().astype(np_dtype, copy=False))
    behind = np.zeros(grad_image.shape[0], np.float64)
    for kept_start, gaussian, alpha, transmittance in reversed(saved):
        if gaussian.shape[0]:
            _backward_chunk(kept_start, gaussian, alpha, transmittance, table_np, grad_image, W, behind, out)


def _gradient_arrays(table: Tensor, grad_image: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The backward's numpy arrays in the table's precision: the image's gradient (contiguous)
    and the table's gradient (zeros, to add into)."""
    np_dtype = _np_dtype(table.dtype)
    grad_np = np.ascontiguousarray(grad_image.detach().numpy().astype(np_dtype, copy=False))
    return grad_np, np.zeros(tuple(table.shape), np_dtype)


_POOLS: dict[int, ThreadPoolExecutor] = {}
# A forked child (a data worker) has none of its parent's threads: it makes its own pool if needed.
os.register_at_fork(after_in_child=_POOLS.clear)


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mega-composite")
    return _POOLS[threads]


def _map(threads: int):
    """``map`` over the images: on this thread, or shared among a pool's ``threads``."""
    return map if threads < 2 else _pool(threads).map


class _CompositeImages(torch.autograd.Function):
    """The torch backend's ``_Composite`` (the same results and gradients) for B images of one
    size, the images shared among ``threads`` Python threads (the loops release the GIL), forward
    and backward. ``tables``: the B tables one after the other [ΣN, 7 + C], ``sizes`` their row
    counts; the rest are per-image lists."""

    @staticmethod
    def forward(ctx, tables, sizes, orders, spans, mesh_depths, settings, threads):
        parts = tables.split(sizes)
        results = list(_map(threads)(_forward_image, parts, orders, spans, mesh_depths, [settings] * len(parts)))
        ctx.saved, ctx.sizes, ctx.W, ctx.threads = [r[3] for r in results], sizes, settings.W, threads
        ctx.save_for_backward(tables)
        image = torch.from_numpy(np.stack([r[0] for r in results])).transpose(1, 2)
        near_z = torch.from_numpy(np.stack([r[1] for r in results]))
        count = torch.from_numpy(np.stack([r[2] for r in results]))
        ctx.mark_non_differentiable(near_z, count)
        return image, near_z, count

    @staticmethod
    def backward(ctx, grad_image, _grad_near_z, _grad_count):
        (tables,) = ctx.saved_tensors
        grad_np, out = _gradient_arrays(tables, grad_image)
        offsets = np.cumsum([0, *ctx.sizes])
        list(_map(ctx.threads)(
            lambda i: _backward_image(tables[offsets[i]:offsets[i + 1]], ctx.saved[i], grad_np[i], ctx.W,
                                      out[offsets[i]:offsets[i + 1]]), range(len(ctx.sizes))))
        return torch.from_numpy(out).to(tables.dtype), None, None, None, None, None, None


def composite(table: Tensor, order: Tensor, spans: tuple[Tensor, ...], mesh_depth: Tensor | None, settings):
    """(image [H·W, C + 2], near_z [3, H·W], count [H·W]) as the torch backend's compositing."""
    image, near_z, count = composite_images([table], [order], [spans], [mesh_depth], settings, threads=1)
    return image[0], near_z[0], count[0]


def composite_images(tables: list[Tensor], orders: list[Tensor], spans: list[tuple[Tensor, ...]],
                     mesh_depths: list[Tensor | None], settings, threads: int):
    """:func:`composite` of B images of one size, ``threads`` at a time: (image [B, H·W, C + 2],
    near_z [B, 3, H·W], count [B, H·W]); each image's values and gradients are :func:`composite`'s."""
    for table in tables:
        if table.device.type != "cpu":
            raise ValueError(f"the numba Gaussian backend runs on the CPU, got tensors on {table.device}")
    spans = [tuple(s.contiguous() for s in image_spans) for image_spans in spans]
    meshes = [None if m is None else m.contiguous() for m in mesh_depths]
    stacked = tables[0] if len(tables) == 1 else torch.cat(tables)  # one image: no copy of its table
    return _CompositeImages.apply(stacked, [t.shape[0] for t in tables], [o.contiguous() for o in orders],
                                  spans, meshes, settings, threads)
