"""The view-dependent colour of :func:`mega.render.gaussians.rasterize_gaussians` (3DGS's
``max(eval_sh(degree, sh, normalise(mean − camera centre)) + 0.5, 0)``, :mod:`mega.render.sh`)
fused into one Triton kernel per direction, with the gradients to the coefficients and, through
the viewing direction, to the means, as the torch code's autograd gives them.

Why: in torch, degree 3 is about eighty element-wise kernels forward and twice that backward for
every rendered image, each a launch that costs more than its work on a GPU (see
:mod:`mega.render.projection_triton`). Three channels, as the hair's coefficients have; the
arithmetic is in the inputs' dtype. The torch code stays the reference of the tests.

Imported only when the ``triton`` Gaussian backend is chosen.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mega.render import sh as reference

BLOCK = 128  # Gaussians per program
C0 = tl.constexpr(reference.SH_C0)
C1 = tl.constexpr(reference.SH_C1)
C2_0, C2_1, C2_2, C2_3, C2_4 = (tl.constexpr(c) for c in reference.SH_C2)
C3_0, C3_1, C3_2, C3_3, C3_4, C3_5, C3_6 = (tl.constexpr(c) for c in reference.SH_C3)


@triton.jit
def _direction(means_ptr, center_ptr, idx, valid):
    """Unit viewing direction (x, y, z) from the camera centre to each mean, and the distance."""
    dx = tl.load(means_ptr + 3 * idx + 0, mask=valid, other=1.0) - tl.load(center_ptr + 0)
    dy = tl.load(means_ptr + 3 * idx + 1, mask=valid, other=0.0) - tl.load(center_ptr + 1)
    dz = tl.load(means_ptr + 3 * idx + 2, mask=valid, other=0.0) - tl.load(center_ptr + 2)
    norm = tl.sqrt(dx * dx + dy * dy + dz * dz)
    return dx / norm, dy / norm, dz / norm, norm


@triton.jit
def _basis(x, y, z):
    """The 16 real SH basis functions of degree ≤ 3 at (x, y, z), with 3DGS's signs. (Tensors
    before constants in each product: the interpreter keeps constant × tensor a constant.)"""
    xx, yy, zz = x * x, y * y, z * z
    return (x * 0.0 + C0, y * -C1, z * C1, x * -C1,
            x * y * C2_0, y * z * C2_1, (2 * zz - xx - yy) * C2_2, x * z * C2_3, (xx - yy) * C2_4,
            y * (3 * xx - yy) * C3_0, x * y * z * C3_1, y * (4 * zz - xx - yy) * C3_2,
            z * (2 * zz - 3 * xx - 3 * yy) * C3_3, x * (4 * zz - xx - yy) * C3_4, z * (xx - yy) * C3_5,
            x * (xx - 3 * yy) * C3_6)


@triton.jit
def _coefficient(sh_ptr, row, k, c, valid, NK: tl.constexpr):
    """Coefficient k of channel c (0 past the degree's NK)."""
    return tl.load(sh_ptr + row + 3 * k + c, mask=valid & (k < NK), other=0.0)


@triton.jit
def _channel(sh_ptr, row, c, valid, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15,
             NK: tl.constexpr):
    """Σ_k basis_k · coefficient_k of channel c."""
    value = b0 * _coefficient(sh_ptr, row, 0, c, valid, NK)
    value += b1 * _coefficient(sh_ptr, row, 1, c, valid, NK) + b2 * _coefficient(sh_ptr, row, 2, c, valid, NK)
    value += b3 * _coefficient(sh_ptr, row, 3, c, valid, NK) + b4 * _coefficient(sh_ptr, row, 4, c, valid, NK)
    value += b5 * _coefficient(sh_ptr, row, 5, c, valid, NK) + b6 * _coefficient(sh_ptr, row, 6, c, valid, NK)
    value += b7 * _coefficient(sh_ptr, row, 7, c, valid, NK) + b8 * _coefficient(sh_ptr, row, 8, c, valid, NK)
    value += b9 * _coefficient(sh_ptr, row, 9, c, valid, NK) + b10 * _coefficient(sh_ptr, row, 10, c, valid, NK)
    value += b11 * _coefficient(sh_ptr, row, 11, c, valid, NK) + b12 * _coefficient(sh_ptr, row, 12, c, valid, NK)
    value += b13 * _coefficient(sh_ptr, row, 13, c, valid, NK) + b14 * _coefficient(sh_ptr, row, 14, c, valid, NK)
    value += b15 * _coefficient(sh_ptr, row, 15, c, valid, NK)
    return value


@triton.jit
def _sh_forward(means_ptr, center_ptr, sh_ptr, colors_ptr, N, K, NK: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    idx = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    valid = idx < N
    x, y, z, _ = _direction(means_ptr, center_ptr, idx, valid)
    b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15 = _basis(x, y, z)
    row = idx.to(tl.int64) * K * 3
    for c in tl.static_range(3):
        value = _channel(sh_ptr, row, c, valid, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14,
                         b15, NK)
        tl.store(colors_ptr + 3 * idx + c, tl.maximum(value + 0.5, 0.0), mask=valid)


@triton.jit
def _coefficient_grad(sh_ptr, grad_sh_ptr, row, k, valid, basis, v0, v1, v2, NK: tl.constexpr):
    """Store coefficient k's gradient (basis · v_c per channel); return the basis function's
    gradient Σ_c coefficient_c · v_c."""
    live = valid & (k < NK)
    tl.store(grad_sh_ptr + row + 3 * k + 0, basis * v0, mask=live)
    tl.store(grad_sh_ptr + row + 3 * k + 1, basis * v1, mask=live)
    tl.store(grad_sh_ptr + row + 3 * k + 2, basis * v2, mask=live)
    return (_coefficient(sh_ptr, row, k, 0, valid, NK) * v0 + _coefficient(sh_ptr, row, k, 1, valid, NK) * v1
            + _coefficient(sh_ptr, row, k, 2, valid, NK) * v2)


@triton.jit
def _sh_backward(means_ptr, center_ptr, sh_ptr, grad_colors_ptr, grad_means_ptr, grad_sh_ptr, N, K,
                 NK: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    idx = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    valid = idx < N
    x, y, z, norm = _direction(means_ptr, center_ptr, idx, valid)
    b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15 = _basis(x, y, z)
    row = idx.to(tl.int64) * K * 3
    # The clamp at 0 passes the gradient where value + 0.5 ≥ 0 (torch.clamp_min's rule).
    v0 = tl.load(grad_colors_ptr + 3 * idx + 0, mask=valid, other=0.0)
    v1 = tl.load(grad_colors_ptr + 3 * idx + 1, mask=valid, other=0.0)
    v2 = tl.load(grad_colors_ptr + 3 * idx + 2, mask=valid, other=0.0)
    v0 = tl.where(_channel(sh_ptr, row, 0, valid, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14,
                           b15, NK) + 0.5 >= 0, v0, 0.0)
    v1 = tl.where(_channel(sh_ptr, row, 1, valid, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14,
                           b15, NK) + 0.5 >= 0, v1, 0.0)
    v2 = tl.where(_channel(sh_ptr, row, 2, valid, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14,
                           b15, NK) + 0.5 >= 0, v2, 0.0)
    _coefficient_grad(sh_ptr, grad_sh_ptr, row, 0, valid, b0, v0, v1, v2, NK)
    g1 = _coefficient_grad(sh_ptr, grad_sh_ptr, row, 1, valid, b1, v0, v1, v2, NK)
    g2 = _coefficient_grad(sh_ptr, grad_sh_ptr, row, 2, valid, b2, v0, v1, v2, NK)
    g3 = _coefficient_grad(sh_ptr, grad_sh_ptr, row, 3, valid, b3, v0, v1, v2, NK)
    g4 = _coefficient_grad(sh_ptr, grad_sh_ptr, row, 4, valid, b4, v0, v1, v2, NK)
    g5 = _coefficient_grad(sh_ptr, grad_sh_ptr, row, 5, valid, b5, v0, v1, v2, NK)
    g6 = _coefficient_grad(sh_ptr, grad_sh_ptr, row, 6, valid, b6, v0, v1, v2, NK)
    g7 = _coefficient_grad(sh_ptr, grad_sh_ptr, row, 7, valid, b7, v0, v1, v2, NK)
    g8 = _coefficient_grad(sh_ptr, grad_sh_ptr, row, 8, valid, b8, v0, v1, v2, NK)
    g9 = _coefficient_grad(sh_ptr, grad_sh_ptr, row, 9, valid, b9, v0, v1, v2, NK)
    g10 = _coefficient_grad(sh_ptr, grad_sh_ptr, row, 10, valid, b10, v0, v1, v2, NK)
    g11 = _coefficient_grad(sh_ptr, grad_sh_ptr, row, 11, valid, b11, v0, v1, v2, NK)
    g12 = _coefficient_grad(sh_ptr, grad_sh_ptr, row, 12, valid, b12, v0, v1, v2, NK)
    g13 = _coefficient_grad(sh_ptr, grad_sh_ptr, row, 13, valid, b13, v0, v1, v2, NK)
    g14 = _coefficient_grad(sh_ptr, grad_sh_ptr, row, 14, valid, b14, v0, v1, v2, NK)
    g15 = _coefficient_grad(sh_ptr, grad_sh_ptr, row, 15, valid, b15, v0, v1, v2, NK)
    # The basis functions' derivatives in x, y, z (g_k is 0 past the degree).
    xx, yy, zz = x * x, y * y, z * z
    v_x = (g3 * -C1 + y * g4 * C2_0 + x * g6 * (-2 * C2_2) + z * g7 * C2_3 + x * g8 * (2 * C2_4)
           + x * y * g9 * (6 * C3_0) + y * z * g10 * C3_1 + x * y * g11 * (-2 * C3_2) + x * z * g12 * (-6 * C3_3)
           + (4 * zz - 3 * xx - yy) * g13 * C3_4 + x * z * g14 * (2 * C3_5) + (3 * xx - 3 * yy) * g15 * C3_6)
    v_y = (g1 * -C1 + x * g4 * C2_0 + z * g5 * C2_1 + y * g6 * (-2 * C2_2) + y * g8 * (-2 * C2_4)
           + (3 * xx - 3 * yy) * g9 * C3_0 + x * z * g10 * C3_1 + (4 * zz - xx - 3 * yy) * g11 * C3_2
           + y * z * g12 * (-6 * C3_3) + x * y * g13 * (-2 * C3_4) + y * z * g14 * (-2 * C3_5)
           + x * y * g15 * (-6 * C3_6))
    v_z = (g2 * C1 + y * g5 * C2_1 + z * g6 * (4 * C2_2) + x * g7 * C2_3 + x * y * g10 * C3_1
           + y * z * g11 * (8 * C3_2) + (6 * zz - 3 * xx - 3 * yy) * g12 * C3_3 + x * z * g13 * (8 * C3_4)
           + (xx - yy) * g14 * C3_5)
    # d / |d| → d (the mean; the camera centre is a constant).
    along = x * v_x + y * v_y + z * v_z
    tl.store(grad_means_ptr + 3 * idx + 0, (v_x - x * along) / norm, mask=valid)
    tl.store(grad_means_ptr + 3 * idx + 1, (v_y - y * along) / norm, mask=valid)
    tl.store(grad_means_ptr + 3 * idx + 2, (v_z - z * along) / norm, mask=valid)


class FusedSHColors(torch.autograd.Function):
    """means [N, 3], sh [N, K, 3] (K ≥ (degree + 1)²), camera centre [3] → colours [N, 3]."""

    @staticmethod
    def forward(ctx, means, sh, center, degree):
        N, K = sh.shape[0], sh.shape[1]
        means, sh = means.detach().contiguous(), sh.detach().contiguous()
        center = center.detach().to(means.dtype).contiguous()
        colors = means.new_empty(N, 3)
        n_coefficients = reference.num_sh_coefficients(degree)
        if N:
            _sh_forward[(triton.cdiv(N, BLOCK),)](means, center, sh, colors, N, K, NK=n_coefficients,
                                                  BLOCK_SIZE=BLOCK)
        ctx.save_for_backward(means, sh, center)
        ctx.n_coefficients = n_coefficients
        return colors

    @staticmethod
    def backward(ctx, grad_colors):
        means, sh, center = ctx.saved_tensors
        N, K = sh.shape[0], sh.shape[1]
        grad_means = torch.empty_like(means)
        grad_sh = torch.zeros_like(sh)  # coefficients past the degree get none
        if N:
            _sh_backward[(triton.cdiv(N, BLOCK),)](means, center, sh, grad_colors.to(means.dtype).contiguous(),
                                                   grad_means, grad_sh, N, K, NK=ctx.n_coefficients,
                                                   BLOCK_SIZE=BLOCK)
        return grad_means, grad_sh, None, None


def sh_colors(means: Tensor, sh: Tensor, center: Tensor, degree: int) -> Tensor:
    """Colours [N, 3] of Gaussians at ``means`` [N, 3] with coefficients ``sh`` [N, K, 3] seen
    from ``center`` [3]: ``max(eval_sh(degree, sh, unit(means − center)) + 0.5, 0)``."""
    if not 0 <= degree <= 3:
        raise ValueError(f"spherical-harmonics degree must be 0..3, got {degree}")
    if sh.shape[-1] != 3 or sh.shape[1] < reference.num_sh_coefficients(degree):
        raise ValueError(f"sh: expected [N, ≥{reference.num_sh_coefficients(degree)}, 3] for degree {degree}, "
                         f"got {tuple(sh.shape)}")
    return FusedSHColors.apply(means, sh, center, degree)
