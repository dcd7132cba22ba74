"""Gaussian splatting with MeGA's extras: near-z depths, the early-stop gap and an optional mesh
depth that occludes Gaussians behind the face.

Compositing follows 3D Gaussian Splatting front to back in the order of the Gaussians' camera
depth. For each pixel, Gaussian i contributes ``α_i = min(0.99, o_i·exp(−½ dᵀΣ⁻¹d))`` if
``α_i ≥ 1/255`` (otherwise it is skipped), with weight ``α_i·T_i``, ``T_i = Π_{j<i}(1 − α_j)``.
Compositing of a pixel stops, before Gaussian i, when any of these holds:

* transmittance: ``T_i·(1 − α_i) < min_transmittance`` (1e-4, as in 3DGS);
* early stop (MeGA): the last Gaussian composited with ``α > near_z_alpha`` (0.05) lies more
  than ``early_stop_gap_m`` (0.1 m = the authors' 100 mm) in front of Gaussian i, so hair on
  the far side of the head does not leak through the face;
* mesh occlusion: Gaussian i lies behind ``mesh_depth`` at that pixel.

Each can be switched off (``None``). The check applies to Gaussians that would contribute
(``α ≥ 1/255``); the authors' kernel also forgets the last significant depth at the start of each
256-Gaussian batch, a tiling artefact that is not reproduced.

Outputs (a dict; images [H, W] or [H, W, C], depths in metres, camera z):

* ``color`` Σ c_i α_i T_i (no background: add ``(1 − alpha)·background``);
* ``alpha`` 1 − T after the last composited Gaussian;
* ``depth`` Σ z_i α_i T_i (alpha-weighted, not normalised, as the authors');
* ``near_z`` [3, H, W]: depth of the 1st, 2nd and 3rd composited Gaussian with α > near_z_alpha,
  ``inf`` where there is none; ``num_significant`` [H, W] counts them all;
* ``means2d`` [N, 2] pixel positions (gradient retained: ``means2d.grad`` after backward is the
  screen-space gradient densification reads), ``radii`` [N] int pixels (0 = not drawn),
  ``depths`` [N] camera z of the means.

The torch backend (CPU or CUDA) enumerates exactly the pixels inside each Gaussian's
α ≥ 1/255 ellipse (row spans of the conic, no bounding-box waste) and composites all pixels at
once with segmented scans, in chunks of at most ``pair_budget`` (pixel, Gaussian) pairs taken
front to back; pixels whose compositing has stopped drop out of later chunks, so Gaussians
hidden behind dense hair cost little. The backward pass is written by hand (3DGS's recurrence,
vectorized) and checked against autograd of a plain per-pixel loop in the tests. The triton
backend (:mod:`mega.render.gaussians_triton`) composites the same table in 16 × 16 pixel tiles
on a GPU, and the numba backend (:mod:`mega.render.gaussians_numba`) pixel by pixel in compiled
CPU loops, both with the same outputs and gradients.
"""

from __future__ import annotations

import inspect
import math
import os
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from mega.data.camera import Camera
from mega.render.backends import GAUSSIAN_BACKENDS, RASTERIZE_MODES
from mega.render.ranges import expand_ranges
from mega.render.sh import eval_sh

MIN_ALPHA = 1.0 / 255.0
MAX_ALPHA = 0.99
# 3DGS's screen-space dilation of every covariance (pixels²): an anti-aliasing low-pass filter.
COVARIANCE_DILATION_PX2 = 0.3
# (pixel, Gaussian) pairs per chunk. Small chunks on a CPU let saturated pixels drop out early;
# large ones on a GPU keep kernel launches few.
DEFAULT_PAIR_BUDGET = {"cpu": 500_000, "cuda": 8_000_000}


def quaternion_to_matrix(quats: Tensor) -> Tensor:
    """quats [N, 4] (w, x, y, z), any norm → rotation matrices [N, 3, 3]."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).view(q.shape[:-1] + (3, 3))


def project_gaussians(means: Tensor, quats: Tensor, scales: Tensor, camera: Camera,
                      near_plane_m: float = 0.01) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EWA projection of 3D Gaussians (metres) into the camera's image.

    returns means2d [N, 2] pixels (same mapping as :meth:`Camera.project`), depths [N] camera z
    in metres, cov2d [N, 2, 2] pixels² (dilated by 0.3 px²), in_front [N] bool (z > near plane).
    """
    R = camera.world_to_camera[:3, :3].to(means.dtype)
    t = camera.world_to_camera[:3, 3].to(means.dtype)
    K = camera.intrinsics.to(means.dtype)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    p = means @ R.T + t
    z = p[:, 2]
    in_front = z > near_plane_m
    z_safe = torch.where(in_front, z, torch.full_like(z, near_plane_m))
    means2d = torch.stack([fx * p[:, 0] / z_safe + cx, fy * p[:, 1] / z_safe + cy], dim=-1)
    # The Jacobian is evaluated with x/z, y/z clamped a little beyond the image (as gsplat does
    # for off-centre principal points) so that Gaussians far off-screen do not blow up.
    tan_x, tan_y = 0.5 * camera.width / fx, 0.5 * camera.height / fy
    lim_x_pos, lim_x_neg = (camera.width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_y_pos, lim_y_neg = (camera.height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    tx = z_safe * torch.minimum(torch.maximum(p[:, 0] / z_safe, -lim_x_neg), lim_x_pos)
    ty = z_safe * torch.minimum(torch.maximum(p[:, 1] / z_safe, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z_safe)
    J = torch.stack([fx / z_safe, zero, -fx * tx / z_safe**2,
                     zero, fy / z_safe, -fy * ty / z_safe**2], dim=-1).view(-1, 2, 3)
    M = quaternion_to_matrix(quats) * scales[:, None, :]  # R·S
    cov_cam = R @ (M @ M.transpose(1, 2)) @ R.T
    cov2d = J @ cov_cam @ J.transpose(1, 2)
    cov2d = cov2d + COVARIANCE_DILATION_PX2 * torch.eye(2, dtype=means.dtype, device=means.device)
    return means2d, z, cov2d, in_front


def antialiased_opacities(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, camera: Camera,
                          near_plane_m: float = 0.01) -> Tensor:
    """Opacities [N] that make the 0.3 px² dilation keep each Gaussian's screen-space mass: scaled
    by sqrt(det Σ / det(Σ + 0.3 I)) in ``camera``'s pixels, gsplat's ``antialiased`` mode
    (Mip-Splatting's 2D filter). Without it a Gaussian thinner than a pixel is drawn a pixel wide
    at its full opacity, so the same thin structure covers more of a low-resolution image than of
    a high-resolution one; with it, renders at different resolutions agree after box filtering.
    means [N, 3] m, quats [N, 4], scales [N, 3] m, opacities [N] in [0, 1]."""
    _, _, cov2d, _ = project_gaussians(means, quats, scales, camera, near_plane_m)
    return opacities * _antialiasing_factor(cov2d)


def _antialiasing_factor(cov2d: Tensor) -> Tensor:
    """sqrt(det Σ / det(Σ + 0.3 I)) [N] of dilated screen-space covariances cov2d [N, 2, 2] px²."""
    a, b, d = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    undilated = (a - COVARIANCE_DILATION_PX2) * (d - COVARIANCE_DILATION_PX2) - b * b
    ratio = undilated / (a * d - b * b).clamp_min(1e-12)
    # The floor keeps the square root's gradient finite for a Gaussian seen edge-on (ratio 0).
    return ratio.clamp_min(1e-12).sqrt()


class _Prepared(NamedTuple):
    """One image's Gaussians ready for compositing (see :func:`_prepare`)."""

    backend: str
    table: Tensor  # [N, 7 + C] (mean x, mean y, conic A, B, C, opacity, depth, colour…)
    order: Tensor  # the drawn Gaussians front to back (all, the others last, for triton)
    spans: tuple[Tensor, ...] | None  # the torch and numba backends' row spans
    triton_screen: tuple[Tensor, ...] | None  # triton's (means2d, extent_x, extent_y, key)
    mesh_depth: Tensor | None  # [H·W]
    settings: "_Settings"
    n_colors: int
    means2d: Tensor
    radii: Tensor
    depths: Tensor


def _prepare(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, camera: Camera, colors: Tensor | None,
             sh: Tensor | None, sh_degree: int, mesh_depth: Tensor | None, near_z_alpha: float,
             early_stop_gap_m: float | None, min_transmittance: float | None, near_plane_m: float,
             pair_budget: int | None, backend: str, rasterize_mode: str) -> _Prepared:
    """Everything before compositing, checked: the projection, the colours, the depth order, the
    table compositing reads and (torch, numba) the Gaussians' row spans."""
    N = means.shape[0]
    _check_shape("means", means, (N, 3))
    _check_shape("quats", quats, (N, 4))
    _check_shape("scales", scales, (N, 3))
    _check_shape("opacities", opacities, (N,))
    if (colors is None) == (sh is None):
        raise ValueError("give exactly one of colors [N, C] or sh [N, K, 3]")
    if backend not in GAUSSIAN_BACKENDS:
        raise ValueError(f"Gaussian backend must be one of {', '.join(GAUSSIAN_BACKENDS)}, got {backend!r}")
    if rasterize_mode not in RASTERIZE_MODES:
        raise ValueError(f"rasterize_mode must be one of {', '.join(RASTERIZE_MODES)}, got {rasterize_mode!r}")
    backend = resolve_gaussian_backend(backend, means.device)
    H, W = camera.height, camera.width
    if mesh_depth is not None:
        _check_shape("mesh_depth", mesh_depth, (H, W))

    antialiased = rasterize_mode == "antialiased"
    if backend == "triton":
        from mega.render import projection_triton

        # One fused kernel each way instead of the torch projection's hundreds of small ones.
        means2d, rest, extent_x, extent_y, key, radii = projection_triton.project(means, quats, scales, opacities,
                                                                                  camera, near_plane_m, antialiased)
        depths = rest[:, 4]
        screen = [means2d, rest]  # (mean x, mean y), (conic A, B, C, opacity, depth)
    else:
        means2d, conic, depths, level, extent_x, extent_y, key, radii, opacities = _screen_space(
            means, quats, scales, opacities, camera, near_plane_m, antialiased)
        screen = [means2d, conic, opacities[:, None], depths[:, None]]
    if means2d.requires_grad:
        means2d.retain_grad()
    if colors is None:
        _check_shape("sh", sh, (N, sh.shape[1], 3))
        if backend == "triton":
            from mega.render import sh_triton

            colors = sh_triton.sh_colors(means, sh, camera.center, sh_degree)
        else:
            directions = means - camera.center.to(means.dtype)
            directions = directions / directions.norm(dim=-1, keepdim=True)
            colors = torch.clamp_min(eval_sh(sh_degree, sh, directions) + 0.5, 0.0)
    else:
        _check_shape("colors", colors, (N, colors.shape[-1]))
    with torch.no_grad():
        order = torch.argsort(key)  # the drawn Gaussians front to back, then the others
        if backend != "triton":  # the tile binning skips the others itself, without a wait for the GPU
            order = order[: int(torch.isfinite(key).sum())]

    # One table of everything compositing reads per Gaussian: (mean x, mean y, conic A, B, C,
    # opacity, depth, colour…), so that a pair needs one gather.
    table = torch.cat([*screen, colors], dim=1)
    if pair_budget is None:
        pair_budget = DEFAULT_PAIR_BUDGET.get(means.device.type, DEFAULT_PAIR_BUDGET["cpu"])
    settings = _Settings(H, W, near_z_alpha, early_stop_gap_m, min_transmittance, pair_budget)
    mesh_depth_flat = None if mesh_depth is None else mesh_depth.reshape(-1).detach().to(means.dtype)
    spans = triton_screen = None
    if backend == "triton":
        triton_screen = (means2d, extent_x, extent_y, key)
    else:
        with torch.no_grad():
            if backend == "numba":
                from mega.render import gaussians_numba

                spans = gaussians_numba.row_spans(means2d.detach()[order], conic.detach()[order], level[order],
                                                  extent_y[order], H, W)
            else:
                spans = _row_spans(means2d.detach()[order], conic.detach()[order], level[order], extent_y[order],
                                   H, W)
    return _Prepared(backend, table, order, spans, triton_screen, mesh_depth_flat, settings, colors.shape[-1],
                     means2d, radii, depths)


def _outputs(prepared: _Prepared, image: Tensor, near_z: Tensor, num_significant: Tensor) -> dict[str, Tensor]:
    """The rasterizer's dict (see the module docstring) from one image's compositing results."""
    H, W, C = prepared.settings.H, prepared.settings.W, prepared.n_colors
    return {
        "color": image[:, :C].reshape(H, W, C),
        "alpha": image[:, C].reshape(H, W),
        "depth": image[:, C + 1].reshape(H, W),
        "near_z": near_z.view(3, H, W),
        "num_significant": num_significant.view(H, W),
        "means2d": prepared.means2d,
        "radii": prepared.radii,
        "depths": prepared.depths,
    }


def rasterize_gaussians(
    means: Tensor,  # [N, 3] metres
    quats: Tensor,  # [N, 4] (w, x, y, z), normalised here
    scales: Tensor,  # [N, 3] metres (not log)
    opacities: Tensor,  # [N] in [0, 1]
    camera: Camera,  # one camera (unbatched)
    colors: Tensor | None = None,  # [N, C]
    sh: Tensor | None = None,  # [N, K, 3] spherical-harmonics coefficients
    sh_degree: int = 3,
    mesh_depth: Tensor | None = None,  # [H, W] metres; ≤ 0 or non-finite = no mesh
    near_z_alpha: float = 0.05,
    early_stop_gap_m: float | None = 0.1,
    min_transmittance: float | None = 1e-4,
    near_plane_m: float = 0.01,
    pair_budget: int | None = None,  # default: DEFAULT_PAIR_BUDGET for the device
    backend: Literal["auto", "torch", "triton", "numba"] = "auto",
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
) -> dict[str, Tensor]:
    """Render Gaussians into one camera; see the module docstring for the outputs.

    ``backend``: ``torch`` (any device, the reference), ``triton`` (the tiled kernels of
    :mod:`mega.render.gaussians_triton`: CUDA tensors, or CPU ones under ``TRITON_INTERPRET=1``),
    ``numba`` (:mod:`mega.render.gaussians_numba`, CPU tensors), ``auto`` = numba on the CPU,
    triton on CUDA (see :data:`AUTO_PICKS_TRITON`).

    ``rasterize_mode``: ``classic`` (3DGS: every Gaussian dilated by 0.3 px² at its full opacity)
    or ``antialiased`` (gsplat's mode: the opacities scaled by :func:`antialiased_opacities`'
    factor, computed from the projection the render makes anyway)."""
    p = _prepare(means, quats, scales, opacities, camera, colors, sh, sh_degree, mesh_depth, near_z_alpha,
                 early_stop_gap_m, min_transmittance, near_plane_m, pair_budget, backend, rasterize_mode)
    if p.backend == "triton":
        from mega.render import gaussians_triton

        means2d, extent_x, extent_y, key = p.triton_screen
        image, near_z, num_significant = gaussians_triton.composite(p.table, means2d, extent_x, extent_y, p.order,
                                                                    key, p.mesh_depth, p.settings)
    elif p.backend == "numba":
        from mega.render import gaussians_numba

        image, near_z, num_significant = gaussians_numba.composite(p.table, p.order, p.spans, p.mesh_depth,
                                                                   p.settings)
    else:
        image, near_z, num_significant = _Composite.apply(p.table, p.order, *p.spans, p.mesh_depth, p.settings)
    return _outputs(p, image, near_z, num_significant)


# rasterize_gaussians's own defaults, read once, so that the batched path cannot drift from it.
_RASTERIZE_DEFAULTS = {name: p.default for name, p in inspect.signature(rasterize_gaussians).parameters.items()
                       if p.default is not inspect.Parameter.empty
                       and name not in ("colors", "sh", "mesh_depth", "backend")}


def rasterize_gaussians_batch(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, cameras: list[Camera],
                              colors: Tensor | None = None, sh: Tensor | None = None, threads: int | None = None,
                              **options) -> list[dict[str, Tensor]]:
    """:func:`rasterize_gaussians` of B sets of Gaussians (means [B, N, 3] …, colors [B, N, C] or
    sh [B, N, K, 3]) into B cameras of one size, one dict per image, the same values and
    gradients. On the numba backend the images' compositing (forward and backward) is shared
    among ``threads`` threads (default: torch's thread count), which a per-image call cannot do:
    each image's loops run on one core. ``options``: :func:`rasterize_gaussians`'s keywords
    (``mesh_depth`` then [B, H, W])."""
    B = means.shape[0]
    threads = torch.get_num_threads() if threads is None else threads
    mesh_depth = options.pop("mesh_depth", None)

    def image_args(i):
        return dict(colors=None if colors is None else colors[i], sh=None if sh is None else sh[i],
                    mesh_depth=None if mesh_depth is None else mesh_depth[i])

    backend = resolve_gaussian_backend(options.get("backend", "auto"), means.device)
    if backend != "numba" or B < 2 or threads < 2:
        return [rasterize_gaussians(means[i], quats[i], scales[i], opacities[i], cameras[i], **image_args(i),
                                    **options) for i in range(B)]
    from mega.render import gaussians_numba

    settings = {**_RASTERIZE_DEFAULTS, **{k: v for k, v in options.items() if k != "backend"}}
    prepared = [_prepare(means[i], quats[i], scales[i], opacities[i], cameras[i], **image_args(i), **settings,
                         backend=backend) for i in range(B)]
    if len({(p.settings.H, p.settings.W) for p in prepared}) != 1:
        raise ValueError("rasterize_gaussians_batch renders images of one size; the cameras differ")
    image, near_z, count = gaussians_numba.composite_images([p.table for p in prepared], [p.order for p in prepared],
                                                            [p.spans for p in prepared],
                                                            [p.mesh_depth for p in prepared], prepared[0].settings,
                                                            threads)
    return [_outputs(p, image[i], near_z[i], count[i]) for i, p in enumerate(prepared)]


# ``auto`` picks the triton kernels for CUDA tensors: their CUDA tests passed on an H200
# (2026-12-04, docs/benchmarks.md "On a GPU"), where they ran 6× (render) to 12× (joint step)
# faster than the torch backend. False sends CUDA tensors to the torch backend again.
AUTO_PICKS_TRITON = True


def resolve_gaussian_backend(backend: str, device: torch.device) -> str:
    """``auto`` → the backend used on ``device`` (numba on the CPU, where it is installed);
    ``triton`` and ``numba`` are refused where they cannot run."""
    if backend == "auto":
        if device.type == "cpu":
            return "numba" if numba_available() else "torch"
        return "triton" if AUTO_PICKS_TRITON and device.type == "cuda" else "torch"
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"the numba Gaussian backend runs on the CPU, got tensors on {device}")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(f"the triton Gaussian backend needs CUDA tensors, got tensors on {device} "
                         "(TRITON_INTERPRET=1 runs it on the CPU in Triton's interpreter, slowly)")
    return backend


def numba_available() -> bool:
    """Whether numba imports here (the CPU's fast compositing; requirements.txt installs it)."""
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def _check_shape(name: str, tensor: Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {tuple(tensor.shape)}")


def _screen_space(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, camera: Camera,
                  near_plane_m: float, antialiased: bool = False) -> tuple[Tensor, ...]:
    """What compositing needs per Gaussian, in torch (the reference of the fused triton projection):
    means2d [N, 2] and conic [N, 3] (inverse covariance A, B, C, per pixel²), differentiable;
    depths [N] metres; and without gradient the α ≥ 1/255 level [N] (q ≤ 2·ln(255·o)), half-extents
    x and y [N] pixels, the depth-sort key [N] (∞ = not drawn: behind the near plane, degenerate,
    too transparent or off the image) and radii [N] pixels (0 = not drawn); last the opacities [N]
    drawn, ``opacities`` themselves or, ``antialiased``, scaled as :func:`antialiased_opacities`
    scales them, from the same projection."""
    W, H = camera.width, camera.height
    means2d, depths, cov2d, in_front = project_gaussians(means, quats, scales, camera, near_plane_m)
    if antialiased:
        opacities = opacities * _antialiasing_factor(cov2d)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = a * c - b * b
    conic = torch.stack([c / det, -b / det, a / det], dim=-1)  # inverse covariance (A, B, C)
    with torch.no_grad():
        # Level of the ellipse where o·exp(−q/2) = 1/255: q ≤ k² = 2·ln(255·o).
        level = 2 * torch.log(torch.clamp_min(opacities.detach() * 255.0, 1e-12))
        drawn = in_front & (det.detach() > 0) & (level > 0)
        extent_y = torch.sqrt(torch.clamp_min(level * c.detach(), 0))
        extent_x = torch.sqrt(torch.clamp_min(level * a.detach(), 0))
        mx, my = means2d.detach().unbind(-1)
        drawn &= (mx + extent_x > 0) & (mx - extent_x < W) & (my + extent_y > 0) & (my - extent_y < H)
        lam_max = 0.5 * (a + c).detach() + torch.sqrt(torch.clamp_min(0.25 * (a - c).detach() ** 2 + b.detach() ** 2, 0))
        radii = torch.where(drawn, torch.ceil(3 * torch.sqrt(lam_max)), torch.zeros_like(lam_max)).long()
        key = torch.where(drawn, depths.detach(), torch.full_like(depths.detach(), math.inf))
    return means2d, conic, depths, level, extent_x, extent_y, key, radii, opacities


def _row_spans(means2d: Tensor, conic: Tensor, level: Tensor, extent_y: Tensor, H: int, W: int):
    """Exact pixel spans of every Gaussian's ellipse q ≤ level, row by row.

    Inputs are for the drawn Gaussians in depth order. Returns (depth rank [R], row [R],
    first column [R], span length [R]), Gaussian by Gaussian in depth order.
    """
    mx, my = means2d.unbind(-1)
    A, B, Cc = conic.unbind(-1)
    row0 = torch.ceil(my - extent_y - 0.5).clamp(0, H - 1).long()
    row1 = torch.floor(my + extent_y - 0.5).clamp(-1, H - 1).long()
    rank, row_offset = expand_ranges((row1 - row0 + 1).clamp_min(0))
    row = row0[rank] + row_offset
    dy = row.to(means2d.dtype) + 0.5 - my[rank]
    a_r, b_r = A[rank], B[rank]
    # A·dx² + 2B·dy·dx + (C·dy² − k²) ≤ 0  ⇔  dx ∈ centre ± half.
    disc = b_r * b_r * dy * dy - a_r * (Cc[rank] * dy * dy - level[rank])
    half = torch.sqrt(torch.clamp_min(disc, 0)) / a_r
    centre = mx[rank] - b_r * dy / a_r
    col0 = torch.ceil(centre - half - 0.5).clamp(0, W - 1).long()
    col1 = torch.floor(centre + half - 0.5).clamp(-1, W - 1).long()
    length = torch.where(disc >= 0, (col1 - col0 + 1).clamp_min(0), torch.zeros_like(col0))
    keep = length > 0
    return rank[keep], row[keep], col0[keep], length[keep]


class _Settings(NamedTuple):
    """Constants of one call of :class:`_Composite`."""

    H: int
    W: int
    near_z_alpha: float
    early_stop_gap_m: float | None
    min_transmittance: float | None
    pair_budget: int


def _span_chunks(length: Tensor, pair_budget: int):
    """Consecutive span ranges [start, stop) of at most ``pair_budget`` pixels each (at least one span)."""
    ends = torch.cumsum(length, 0)
    start, done = 0, 0
    while start < length.numel():
        stop = max(int(torch.searchsorted(ends, done + pair_budget, right=True)), start + 1)
        yield start, stop
        start, done = stop, int(ends[stop - 1])


def _segment_starts(pix: Tensor) -> Tensor:
    """pix [P] sorted → index of the first pair of each pair's pixel, [P]."""
    index = torch.arange(pix.numel(), device=pix.device)
    new_pixel = torch.ones_like(pix, dtype=torch.bool)
    new_pixel[1:] = pix[1:] != pix[:-1]
    return torch.cummax(torch.where(new_pixel, index, torch.zeros_like(index)), 0).values


def _segment_exclusive_sum(values: Tensor, first: Tensor) -> Tensor:
    """For pairs grouped in segments, the float64 sum of ``values`` over the earlier pairs of the
    same segment (``first`` [P] = index of each pair's segment start)."""
    running = torch.cumsum(values.double(), 0)
    return running - values - (running.index_select(0, first) - values.index_select(0, first))


def _alpha(f: Tensor, pix: Tensor, W: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """f [P, ≥7] gathered table rows → (alpha, gaussian exp(power), dx, dy) per pair."""
    dx = (pix % W).to(f.dtype).add_(0.5).sub_(f[:, 0])
    dy = (pix // W).to(f.dtype).add_(0.5).sub_(f[:, 1])
    power = (f[:, 2] * dx * dx).add_(f[:, 4] * dy * dy).mul_(-0.5).sub_(f[:, 3] * dx * dy)
    gauss = torch.exp(power)
    alpha = torch.clamp_max(f[:, 5] * gauss, MAX_ALPHA)
    alpha.masked_fill_(alpha < MIN_ALPHA, 0.0)
    return alpha, gauss, dx, dy


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of all pixels at once, in chunks of Gaussians taken in depth
    order, with a hand-written backward.

    table [N, 7 + C] per Gaussian (see :func:`rasterize_gaussians`); order [M] the drawn
    Gaussians by depth; spans (rank, row, first column, length) [R] from :func:`_row_spans`.
    Returns image [H·W, C + 2] = (Σ w·c, Σ w, Σ w·z) and the non-differentiable near-z [3, H·W]
    and significant-Gaussian count [H·W].

    Within a chunk, the (pixel, Gaussian) pairs are sorted by pixel (a stable sort keeps depth
    order) and segmented scans replace the per-pixel loop: a running sum of log(1 − α) gives the
    transmittance, running maxima of indices find "the last significant Gaussian" and "the first
    stop". Each pixel carries its state (log T, last significant depth, count, stopped) from one
    chunk to the next, and pixels that have stopped drop out of later chunks, so hidden
    Gaussians behind dense hair cost little. Only the pairs that were composited are kept for
    the backward pass.
    """

    @staticmethod
    def forward(ctx, table, order, span_rank, span_row, span_col0, span_length, mesh_depth, settings):
        H, W = settings.H, settings.W
        HW = H * W
        device, dtype = table.device, table.dtype
        n_colors = table.shape[1] - 7
        geometry = table[:, :7].contiguous()
        colors = table[:, 7:].contiguous()
        log_t = torch.zeros(HW, dtype=torch.float64, device=device)
        last_significant_z = torch.full((HW,), -math.inf, dtype=dtype, device=device)
        count = torch.zeros(HW, dtype=torch.int32, device=device)
        alive = torch.ones(HW, dtype=torch.bool, device=device)
        image = torch.zeros(n_colors + 2, HW, dtype=dtype, device=device)
        near_z = torch.full((3, HW), math.inf, dtype=dtype, device=device)
        saved = []
        for start, stop in _span_chunks(span_length, settings.pair_budget):
            span, col_offset = expand_ranges(span_length[start:stop])
            first_pixel = span_row[start:stop] * W + span_col0[start:stop]
            pix = first_pixel.index_select(0, span) + col_offset
            live = torch.nonzero(alive.index_select(0, pix)).squeeze(1)
            if live.numel() == 0:
                continue
            pix = pix.index_select(0, live)
            # Pairs arrive Gaussian by Gaussian in depth order: a stable sort by pixel keeps each
            # pixel's Gaussians front to back (int32 keys sort faster).
            pix32, by_pixel = torch.sort(pix.to(torch.int32), stable=True)
            pix = pix32.long()
            g = order.index_select(0, span_rank[start:stop].index_select(0, span.index_select(0, live.index_select(0, by_pixel))))
            first = _segment_starts(pix)

            f = geometry.index_select(0, g)
            alpha, gauss, _, _ = _alpha(f, pix, W)
            z = f[:, 6].contiguous()
            log_keep = torch.log1p(-alpha)
            log_t_before = _segment_exclusive_sum(log_keep, first) + log_t.index_select(0, pix)
            transmittance = torch.exp(log_t_before).to(dtype)

            contributes = alpha > 0
            significant = contributes & (alpha > settings.near_z_alpha)
            stop_here = torch.zeros_like(contributes)
            if settings.min_transmittance is not None:
                stop_here |= contributes & (transmittance * (1 - alpha) < settings.min_transmittance)
            index = torch.arange(pix.numel(), device=device)
            if settings.early_stop_gap_m is not None:
                last = torch.cummax(torch.where(significant, index, torch.full_like(index, -1)), 0).values
                previous = torch.cat([last.new_full((1,), -1), last[:-1]])
                in_chunk = previous >= first
                previous_z = torch.where(in_chunk, z.index_select(0, previous.clamp_min(0)),
                                         last_significant_z.index_select(0, pix))
                # −inf = no significant Gaussian yet on this pixel: nothing to measure a gap from.
                stop_here |= contributes & torch.isfinite(previous_z) & (z - previous_z > settings.early_stop_gap_m)
            if mesh_depth is not None:
                surface = mesh_depth.index_select(0, pix)
                stop_here |= contributes & torch.isfinite(surface) & (surface > 0) & (z > surface)
            first_stop = torch.cummax(torch.where(stop_here, index, torch.full_like(index, -1)), 0).values
            included = first_stop < first

            # Carry each pixel's state into the next chunk.
            counted = significant & included
            counted_int = counted.int()
            running = torch.cumsum(counted_int, 0)
            nth = running - running.index_select(0, first) + counted_int.index_select(0, first)
            nth += count.index_select(0, pix)
            for k in range(3):
                chosen = counted & (nth == k + 1)
                near_z[k].index_put_((pix[chosen],), z[chosen])
            count.index_add_(0, pix, counted_int)
            last_significant_z.scatter_reduce_(0, pix[counted], z[counted], reduce="amax")
            log_t.index_add_(0, pix, torch.where(included, log_keep, 0.0).double())
            alive.index_fill_(0, pix[stop_here], False)

            kept = torch.nonzero(included & contributes).squeeze(1)
            pix, g = pix.index_select(0, kept), g.index_select(0, kept)
            alpha, gauss = alpha.index_select(0, kept), gauss.index_select(0, kept)
            transmittance, z = transmittance.index_select(0, kept), z.index_select(0, kept)
            weight = alpha * transmittance
            per_pair = torch.empty(n_colors + 2, pix.numel(), dtype=dtype, device=device)
            torch.mul(colors.index_select(0, g).T, weight, out=per_pair[:n_colors])
            per_pair[n_colors] = weight
            torch.mul(weight, z, out=per_pair[n_colors + 1])
            image.index_add_(1, pix, per_pair)
            saved += [pix, g, alpha, gauss, transmittance]

        ctx.mark_non_differentiable(near_z, count)
        ctx.save_for_backward(table, *saved)
        ctx.W = W
        return image.T, near_z, count

    @staticmethod
    def backward(ctx, grad_image, _grad_near_z, _grad_count):
        table, *saved = ctx.saved_tensors
        W = ctx.W
        n_colors = table.shape[1] - 7
        chunks = [saved[i:i + 5] for i in range(0, len(saved), 5)]
        grad_image = grad_image.contiguous()
        HW = grad_image.shape[0]
        # Pass 1: what each composited pair is worth to the loss per unit weight ("value"), its
        # share (weight · value), and each pixel's total share over all chunks.
        values, shares = [], []
        total = torch.zeros(HW, dtype=torch.float64, device=table.device)
        for pix, g, alpha, gauss, transmittance in chunks:
            f = table.index_select(0, g)
            grad_pair = grad_image.index_select(0, pix)
            value = (f[:, 7:] * grad_pair[:, :n_colors]).sum(1) + grad_pair[:, n_colors] + f[:, 6] * grad_pair[:, n_colors + 1]
            share = alpha * transmittance * value
            total.index_add_(0, pix, share.double())
            values.append(value)
            shares.append(share)
        # Pass 2: dL/dα_i = T_i·value_i − (Σ of shares behind i) / (1 − α_i), then the chain rule
        # to the table's columns, accumulated per Gaussian.
        grad_table = torch.zeros(table.shape[1], table.shape[0], dtype=table.dtype, device=table.device)
        before_chunk = torch.zeros_like(total)
        for (pix, g, alpha, gauss, transmittance), value, share in zip(chunks, values, shares):
            first = _segment_starts(pix)
            behind = total.index_select(0, pix) - before_chunk.index_select(0, pix)
            behind = (behind - _segment_exclusive_sum(share, first) - share).to(table.dtype)
            before_chunk.index_add_(0, pix, share.double())
            f = table.index_select(0, g)
            grad_pair = grad_image.index_select(0, pix)
            _, _, dx, dy = _alpha(f, pix, W)
            raw = f[:, 5] * gauss
            weight = alpha * transmittance
            grad_raw = (transmittance * value).sub_(behind / (1 - alpha)).mul_(raw <= MAX_ALPHA)
            grad_power = grad_raw * raw
            grads = torch.empty(table.shape[1], pix.numel(), dtype=table.dtype, device=table.device)
            torch.mul(grad_power, f[:, 2] * dx + f[:, 3] * dy, out=grads[0])
            torch.mul(grad_power, f[:, 3] * dx + f[:, 4] * dy, out=grads[1])
            torch.mul(grad_power, dx * dx, out=grads[2]).mul_(-0.5)
            torch.mul(grad_power, dx * dy, out=grads[3]).neg_()
            torch.mul(grad_power, dy * dy, out=grads[4]).mul_(-0.5)
            torch.mul(grad_raw, gauss, out=grads[5])
            torch.mul(weight, grad_pair[:, n_colors + 1], out=grads[6])
            torch.mul(grad_pair[:, :n_colors].T, weight, out=grads[7:])
            grad_table.index_add_(1, g, grads)
        return grad_table.T, None, None, None, None, None, None, None
