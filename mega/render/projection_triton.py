"""The EWA projection of :func:`mega.render.gaussians.project_gaussians` and the drawing test of
:func:`mega.render.gaussians.rasterize_gaussians`, fused into one Triton kernel per direction:
one program projects BLOCK Gaussians, reading their means, quaternions, scales and opacities
once and writing each one's screen-space mean and the rest of its compositing row (conic A, B,
C, opacity, depth), its α ≥ 1/255 half-extents, radius and depth-sort key; the backward kernel recomputes the same
intermediates and chains the row's gradient back to the four inputs by hand. In the ``antialiased``
rasterize mode the row's opacity is scaled as :func:`mega.render.gaussians.antialiased_opacities`
scales it, in the same kernels.

Why: on a GPU the torch projection is about a hundred small element-wise kernels forward and two
hundred backward, each a launch whose cost (tens of microseconds) is far above its work, so a
render of 100k Gaussians spent most of its time launching them (the measured GPU figures are in
docs/benchmarks.md). gsplat fuses its projection for the same reason.

Semantics are the torch code's, term for term (the same Jacobian clamp, the same 0.3 px²
dilation, the same conic, extents and radii, depth = camera z); the arithmetic is in the inputs'
dtype (float32 or float64). The torch code stays the reference: the tests compare values and
gradients with it, on a GPU compiled and on a CPU in Triton's interpreter.

Imported only when the ``triton`` Gaussian backend is chosen.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mega.data.camera import Camera
from mega.render import gaussians as reference

BLOCK = 256  # Gaussians per program
REST_COLUMNS = 5  # conic A, B, C, opacity, depth: the compositing row after the mean
ROW = tl.constexpr(REST_COLUMNS)  # the same, as the kernels read it
DILATION_PX2 = tl.constexpr(reference.COVARIANCE_DILATION_PX2)


@triton.jit
def _camera(w2c_ptr, k_ptr):
    """The world-to-camera rotation (row-major), translation and the intrinsics' fx, fy, cx, cy."""
    r00, r01, r02 = tl.load(w2c_ptr + 0), tl.load(w2c_ptr + 1), tl.load(w2c_ptr + 2)
    r10, r11, r12 = tl.load(w2c_ptr + 4), tl.load(w2c_ptr + 5), tl.load(w2c_ptr + 6)
    r20, r21, r22 = tl.load(w2c_ptr + 8), tl.load(w2c_ptr + 9), tl.load(w2c_ptr + 10)
    t0, t1, t2 = tl.load(w2c_ptr + 3), tl.load(w2c_ptr + 7), tl.load(w2c_ptr + 11)
    fx, cx, fy, cy = tl.load(k_ptr + 0), tl.load(k_ptr + 2), tl.load(k_ptr + 4), tl.load(k_ptr + 5)
    return r00, r01, r02, r10, r11, r12, r20, r21, r22, t0, t1, t2, fx, fy, cx, cy


@triton.jit
def _rotation(qw, qx, qy, qz):
    """Unit quaternion (w, x, y, z) → rotation matrix entries, row-major."""
    return (1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy),
            2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx),
            2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy))


@triton.jit
def _sandwich(r00, r01, r02, r10, r11, r12, r20, r21, r22, s00, s01, s02, s11, s12, s22):
    """R·S·Rᵀ for a symmetric S (its six entries) → the six entries of the symmetric result."""
    # T = R·S
    t00 = r00 * s00 + r01 * s01 + r02 * s02
    t01 = r00 * s01 + r01 * s11 + r02 * s12
    t02 = r00 * s02 + r01 * s12 + r02 * s22
    t10 = r10 * s00 + r11 * s01 + r12 * s02
    t11 = r10 * s01 + r11 * s11 + r12 * s12
    t12 = r10 * s02 + r11 * s12 + r12 * s22
    t20 = r20 * s00 + r21 * s01 + r22 * s02
    t21 = r20 * s01 + r21 * s11 + r22 * s12
    t22 = r20 * s02 + r21 * s12 + r22 * s22
    return (t00 * r00 + t01 * r01 + t02 * r02, t00 * r10 + t01 * r11 + t02 * r12, t00 * r20 + t01 * r21 + t02 * r22,
            t10 * r10 + t11 * r11 + t12 * r12, t10 * r20 + t11 * r21 + t12 * r22, t20 * r20 + t21 * r21 + t22 * r22)


@triton.jit
def _geometry(means_ptr, quats_ptr, scales_ptr, w2c_ptr, k_ptr, idx, valid, W, H, near):
    """Everything both directions need about BLOCK Gaussians, recomputed rather than stored."""
    r00, r01, r02, r10, r11, r12, r20, r21, r22, t0, t1, t2, fx, fy, cx, cy = _camera(w2c_ptr, k_ptr)
    x = tl.load(means_ptr + 3 * idx + 0, mask=valid, other=0.0)
    y = tl.load(means_ptr + 3 * idx + 1, mask=valid, other=0.0)
    z = tl.load(means_ptr + 3 * idx + 2, mask=valid, other=1.0)
    qw = tl.load(quats_ptr + 4 * idx + 0, mask=valid, other=1.0)
    qx = tl.load(quats_ptr + 4 * idx + 1, mask=valid, other=0.0)
    qy = tl.load(quats_ptr + 4 * idx + 2, mask=valid, other=0.0)
    qz = tl.load(quats_ptr + 4 * idx + 3, mask=valid, other=0.0)
    sx = tl.load(scales_ptr + 3 * idx + 0, mask=valid, other=1.0)
    sy = tl.load(scales_ptr + 3 * idx + 1, mask=valid, other=1.0)
    sz = tl.load(scales_ptr + 3 * idx + 2, mask=valid, other=1.0)

    px = r00 * x + r01 * y + r02 * z + t0
    py = r10 * x + r11 * y + r12 * z + t1
    pz = r20 * x + r21 * y + r22 * z + t2
    in_front = pz > near
    zs = tl.where(in_front, pz, near + 0.0 * pz)
    # The Jacobian at x/z, y/z clamped a little beyond the image (project_gaussians' limits).
    tan_x, tan_y = 0.5 * W / fx, 0.5 * H / fy
    lim_x_pos, lim_x_neg = (W - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_y_pos, lim_y_neg = (H - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    rx, ry = px / zs, py / zs
    rx_c = tl.minimum(tl.maximum(rx, -lim_x_neg), lim_x_pos)
    ry_c = tl.minimum(tl.maximum(ry, -lim_y_neg), lim_y_pos)
    tx, ty = zs * rx_c, zs * ry_c
    j00, j11 = fx / zs, fy / zs
    j02, j12 = -fx * tx / (zs * zs), -fy * ty / (zs * zs)

    norm = tl.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
    qw, qx, qy, qz = qw / norm, qx / norm, qy / norm, qz / norm
    q00, q01, q02, q10, q11, q12, q20, q21, q22 = _rotation(qw, qx, qy, qz)
    # M = Rq·diag(s); Σ = M·Mᵀ; Σc = R·Σ·Rᵀ.
    m00, m01, m02 = q00 * sx, q01 * sy, q02 * sz
    m10, m11, m12 = q10 * sx, q11 * sy, q12 * sz
    m20, m21, m22 = q20 * sx, q21 * sy, q22 * sz
    w00 = m00 * m00 + m01 * m01 + m02 * m02
    w01 = m00 * m10 + m01 * m11 + m02 * m12
    w02 = m00 * m20 + m01 * m21 + m02 * m22
    w11 = m10 * m10 + m11 * m11 + m12 * m12
    w12 = m10 * m20 + m11 * m21 + m12 * m22
    w22 = m20 * m20 + m21 * m21 + m22 * m22
    c00, c01, c02, c11, c12, c22 = _sandwich(r00, r01, r02, r10, r11, r12, r20, r21, r22, w00, w01, w02, w11, w12, w22)
    # cov2d = J·Σc·Jᵀ + dilation, J = [[j00, 0, j02], [0, j11, j12]].
    a = j00 * j00 * c00 + 2 * j00 * j02 * c02 + j02 * j02 * c22 + DILATION_PX2
    b = j00 * (c01 * j11 + c02 * j12) + j02 * (c12 * j11 + c22 * j12)
    c = j11 * j11 * c11 + 2 * j11 * j12 * c12 + j12 * j12 * c22 + DILATION_PX2
    return (r00, r01, r02, r10, r11, r12, r20, r21, r22, fx, fy, cx, cy, px, py, pz, in_front, zs,
            rx, ry, rx_c, ry_c, tx, ty, j00, j02, j11, j12, qw, qx, qy, qz, norm,
            q00, q01, q02, q10, q11, q12, q20, q21, q22, sx, sy, sz, m00, m01, m02, m10, m11, m12, m20, m21, m22,
            c00, c01, c02, c11, c12, c22, a, b, c)


@triton.jit
def _undilated_det(a, b, c):
    """det of a dilated cov2d (a, b; b, c) with the 0.3 px² dilation taken out."""
    return (a - DILATION_PX2) * (c - DILATION_PX2) - b * b


@triton.jit
def _project_forward(means_ptr, quats_ptr, scales_ptr, opacities_ptr, w2c_ptr, k_ptr, means2d_ptr, rest_ptr,
                     extent_ptr, key_ptr, radii_ptr, N, W, H, near, BLOCK_SIZE: tl.constexpr,
                     ANTIALIASED: tl.constexpr):
    idx = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    valid = idx < N
    (r00, r01, r02, r10, r11, r12, r20, r21, r22, fx, fy, cx, cy, px, py, pz, in_front, zs,
     rx, ry, rx_c, ry_c, tx, ty, j00, j02, j11, j12, qw, qx, qy, qz, norm,
     q00, q01, q02, q10, q11, q12, q20, q21, q22, sx, sy, sz, m00, m01, m02, m10, m11, m12, m20, m21, m22,
     c00, c01, c02, c11, c12, c22, a, b, c) = _geometry(means_ptr, quats_ptr, scales_ptr, w2c_ptr, k_ptr, idx, valid,
                                                          W, H, near)
    opacity = tl.load(opacities_ptr + idx, mask=valid, other=0.0)
    u = fx * px / zs + cx
    v = fy * py / zs + cy
    det = a * c - b * b
    if ANTIALIASED:  # antialiased_opacities: × sqrt(det Σ / det(Σ + 0.3 I)), floored as there
        opacity = opacity * tl.sqrt(tl.maximum(_undilated_det(a, b, c) / tl.maximum(det, 1e-12), 1e-12))
    tl.store(means2d_ptr + 2 * idx, u, mask=valid)
    tl.store(means2d_ptr + 2 * idx + 1, v, mask=valid)
    row = rest_ptr + ROW * idx.to(tl.int64)
    tl.store(row + 0, c / det, mask=valid)
    tl.store(row + 1, -b / det, mask=valid)
    tl.store(row + 2, a / det, mask=valid)
    tl.store(row + 3, opacity, mask=valid)
    tl.store(row + 4, pz, mask=valid)
    # rasterize_gaussians' drawing test: the α ≥ 1/255 ellipse, q ≤ 2·ln(255·o), inside the image.
    level = 2 * tl.log(tl.maximum(opacity * 255.0, 1e-12))
    extent_x = tl.sqrt(tl.maximum(level * a, 0.0))
    extent_y = tl.sqrt(tl.maximum(level * c, 0.0))
    drawn = in_front & (det > 0) & (level > 0)
    drawn = drawn & (u + extent_x > 0) & (u - extent_x < W) & (v + extent_y > 0) & (v - extent_y < H)
    lam_max = 0.5 * (a + c) + tl.sqrt(tl.maximum(0.25 * (a - c) * (a - c) + b * b, 0.0))
    tl.store(extent_ptr + idx, extent_x, mask=valid)
    tl.store(extent_ptr + N + idx, extent_y, mask=valid)
    tl.store(key_ptr + idx, tl.where(drawn, pz, float("inf")), mask=valid)
    tl.store(radii_ptr + idx, tl.where(drawn, tl.ceil(3 * tl.sqrt(lam_max)), 0.0).to(tl.int64), mask=valid)


@triton.jit
def _project_backward(means_ptr, quats_ptr, scales_ptr, opacities_ptr, w2c_ptr, k_ptr, grad_means2d_ptr,
                      grad_rest_ptr, grad_means_ptr, grad_quats_ptr, grad_scales_ptr, grad_opacities_ptr, N, W, H,
                      near, BLOCK_SIZE: tl.constexpr, ANTIALIASED: tl.constexpr):
    idx = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    valid = idx < N
    (r00, r01, r02, r10, r11, r12, r20, r21, r22, fx, fy, cx, cy, px, py, pz, in_front, zs,
     rx, ry, rx_c, ry_c, tx, ty, j00, j02, j11, j12, qw, qx, qy, qz, norm,
     q00, q01, q02, q10, q11, q12, q20, q21, q22, sx, sy, sz, m00, m01, m02, m10, m11, m12, m20, m21, m22,
     c00, c01, c02, c11, c12, c22, a, b, c) = _geometry(means_ptr, quats_ptr, scales_ptr, w2c_ptr, k_ptr, idx, valid,
                                                          W, H, near)
    v_u = tl.load(grad_means2d_ptr + 2 * idx, mask=valid, other=0.0)
    v_v = tl.load(grad_means2d_ptr + 2 * idx + 1, mask=valid, other=0.0)
    row = grad_rest_ptr + ROW * idx.to(tl.int64)
    v_ca = tl.load(row + 0, mask=valid, other=0.0)
    v_cb = tl.load(row + 1, mask=valid, other=0.0)
    v_cc = tl.load(row + 2, mask=valid, other=0.0)
    v_opacity = tl.load(row + 3, mask=valid, other=0.0)
    v_depth = tl.load(row + 4, mask=valid, other=0.0)

    # conic (c, −b, a)/det → cov2d entries a, b, c. A Gaussian with det ≤ 0 is never drawn, so
    # nothing reads its conic: no gradient (rather than 0 × ∞).
    det = a * c - b * b
    inv_det2 = tl.where(det > 0, 1.0 / (det * det), 0.0)
    v_a = (-c * c * v_ca + b * c * v_cb - b * b * v_cc) * inv_det2
    v_b = (2 * b * c * v_ca - (a * c + b * b) * v_cb + 2 * a * b * v_cc) * inv_det2
    v_c = (-b * b * v_ca + a * b * v_cb - a * a * v_cc) * inv_det2
    if ANTIALIASED:
        # The drawn opacity o·f, f = sqrt(ratio), ratio = u/det (u: det of cov2d less the
        # dilation), each floor passing no gradient, as torch's clamp_min below it.
        opacity = tl.load(opacities_ptr + idx, mask=valid, other=0.0)
        undilated = _undilated_det(a, b, c)
        det_floored = tl.maximum(det, 1e-12)
        ratio = undilated / det_floored
        factor = tl.sqrt(tl.maximum(ratio, 1e-12))
        v_ratio = tl.where(ratio > 1e-12, v_opacity * opacity * 0.5 / factor, 0.0)
        v_undilated = v_ratio / det_floored
        v_det = tl.where(det > 1e-12, -v_ratio * ratio / det_floored, 0.0)
        v_a += v_undilated * (c - DILATION_PX2) + v_det * c
        v_b += -2 * b * (v_undilated + v_det)
        v_c += v_undilated * (a - DILATION_PX2) + v_det * a
        v_opacity = v_opacity * factor
    # cov2d = J·Σc·Jᵀ → Σc, as a symmetric G = va·J0J0ᵀ + vb/2·(J0J1ᵀ + J1J0ᵀ) + vc·J1J1ᵀ.
    g00 = v_a * j00 * j00
    g01 = 0.5 * v_b * j00 * j11
    g02 = v_a * j00 * j02 + 0.5 * v_b * j00 * j12
    g11 = v_c * j11 * j11
    g12 = 0.5 * v_b * j02 * j11 + v_c * j11 * j12
    g22 = v_a * j02 * j02 + v_b * j02 * j12 + v_c * j12 * j12
    # → J: dJ0 = 2·va·Σc·J0 + vb·Σc·J1, dJ1 = vb·Σc·J0 + 2·vc·Σc·J1 (only the four entries J has).
    s0_0, s0_1, s0_2 = c00 * j00 + c02 * j02, c01 * j00 + c12 * j02, c02 * j00 + c22 * j02
    s1_0, s1_1, s1_2 = c01 * j11 + c02 * j12, c11 * j11 + c12 * j12, c12 * j11 + c22 * j12
    v_j00 = 2 * v_a * s0_0 + v_b * s1_0
    v_j02 = 2 * v_a * s0_2 + v_b * s1_2
    v_j11 = v_b * s0_1 + 2 * v_c * s1_1
    v_j12 = v_b * s0_2 + 2 * v_c * s1_2
    # → zs, tx, ty (J00 = fx/zs, J02 = −fx·tx/zs², J11, J12 likewise).
    zs2 = zs * zs
    v_tx = -fx / zs2 * v_j02
    v_ty = -fy / zs2 * v_j12
    v_zs = (-fx / zs2 * v_j00 + 2 * fx * tx / (zs2 * zs) * v_j02 - fy / zs2 * v_j11
            + 2 * fy * ty / (zs2 * zs) * v_j12)
    # tx = zs·clamp(x/z): px itself where unclamped, zs times the limit where clamped.
    clamped_x = (rx < rx_c) | (rx > rx_c)
    clamped_y = (ry < ry_c) | (ry > ry_c)
    v_px = tl.where(clamped_x, 0.0, v_tx) + fx / zs * v_u
    v_py = tl.where(clamped_y, 0.0, v_ty) + fy / zs * v_v
    v_zs += tl.where(clamped_x, rx_c * v_tx, 0.0) + tl.where(clamped_y, ry_c * v_ty, 0.0)
    v_zs += -fx * px / zs2 * v_u - fy * py / zs2 * v_v
    v_pz = v_depth + tl.where(in_front, v_zs, 0.0)
    # p = R·m + t → m = Rᵀ·v_p.
    out = grad_means_ptr + 3 * idx
    tl.store(out + 0, r00 * v_px + r10 * v_py + r20 * v_pz, mask=valid)
    tl.store(out + 1, r01 * v_px + r11 * v_py + r21 * v_pz, mask=valid)
    tl.store(out + 2, r02 * v_px + r12 * v_py + r22 * v_pz, mask=valid)

    # Σc = R·Σ·Rᵀ → Σ: Rᵀ·G·R.
    h00, h01, h02, h11, h12, h22 = _sandwich(r00, r10, r20, r01, r11, r21, r02, r12, r22, g00, g01, g02, g11, g12, g22)
    # Σ = M·Mᵀ → M: 2·H·M.
    v_m00 = 2 * (h00 * m00 + h01 * m10 + h02 * m20)
    v_m01 = 2 * (h00 * m01 + h01 * m11 + h02 * m21)
    v_m02 = 2 * (h00 * m02 + h01 * m12 + h02 * m22)
    v_m10 = 2 * (h01 * m00 + h11 * m10 + h12 * m20)
    v_m11 = 2 * (h01 * m01 + h11 * m11 + h12 * m21)
    v_m12 = 2 * (h01 * m02 + h11 * m12 + h12 * m22)
    v_m20 = 2 * (h02 * m00 + h12 * m10 + h22 * m20)
    v_m21 = 2 * (h02 * m01 + h12 * m11 + h22 * m21)
    v_m22 = 2 * (h02 * m02 + h12 * m12 + h22 * m22)
    # M = Rq·diag(s) → s and Rq.
    out = grad_scales_ptr + 3 * idx
    tl.store(out + 0, v_m00 * q00 + v_m10 * q10 + v_m20 * q20, mask=valid)
    tl.store(out + 1, v_m01 * q01 + v_m11 * q11 + v_m21 * q21, mask=valid)
    tl.store(out + 2, v_m02 * q02 + v_m12 * q12 + v_m22 * q22, mask=valid)
    g_00, g_01, g_02 = v_m00 * sx, v_m01 * sy, v_m02 * sz
    g_10, g_11, g_12 = v_m10 * sx, v_m11 * sy, v_m12 * sz
    g_20, g_21, g_22 = v_m20 * sx, v_m21 * sy, v_m22 * sz
    # Rq(unit q) → unit q.
    v_w = 2 * (-qz * g_01 + qy * g_02 + qz * g_10 - qx * g_12 - qy * g_20 + qx * g_21)
    v_x = 2 * (qy * g_01 + qz * g_02 + qy * g_10 - 2 * qx * g_11 - qw * g_12 + qz * g_20 + qw * g_21 - 2 * qx * g_22)
    v_y = 2 * (-2 * qy * g_00 + qx * g_01 + qw * g_02 + qx * g_10 + qz * g_12 - qw * g_20 + qz * g_21 - 2 * qy * g_22)
    v_z = 2 * (-2 * qz * g_00 - qw * g_01 + qx * g_02 + qw * g_10 - 2 * qz * g_11 + qy * g_12 + qx * g_20 + qy * g_21)
    # q / |q| → q.
    along = qw * v_w + qx * v_x + qy * v_y + qz * v_z
    out = grad_quats_ptr + 4 * idx
    tl.store(out + 0, (v_w - qw * along) / norm, mask=valid)
    tl.store(out + 1, (v_x - qx * along) / norm, mask=valid)
    tl.store(out + 2, (v_y - qy * along) / norm, mask=valid)
    tl.store(out + 3, (v_z - qz * along) / norm, mask=valid)
    tl.store(grad_opacities_ptr + idx, v_opacity, mask=valid)


class FusedProjection(torch.autograd.Function):
    """means [N, 3], quats [N, 4], scales [N, 3], opacities [N] (one dtype), the camera's
    world_to_camera [4, 4] and intrinsics [3, 3] → differentiable means2d [N, 2] pixels and rest
    [N, 5] (conic A, B, C per pixel², opacity, camera z metres), and, not differentiable, the
    α ≥ 1/255 half-extents [2, N] pixels, the depth-sort key [N] (∞ = not drawn) and radii [N]
    pixels. Two differentiable outputs rather than one: the mean's gradient is what
    densification reads, and a slice of one output would cost kernels of its own backward."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, world_to_camera, intrinsics, W, H, near, antialiased):
        N = means.shape[0]
        inputs = [t.detach().contiguous() for t in (means, quats, scales, opacities)]
        camera = [t.detach().to(means.dtype).contiguous() for t in (world_to_camera, intrinsics)]
        means2d = means.new_empty(N, 2)
        rest = means.new_empty(N, REST_COLUMNS)
        extents = means.new_empty(2, N)
        key = means.new_empty(N)
        radii = torch.empty(N, dtype=torch.int64, device=means.device)
        if N:
            _project_forward[(triton.cdiv(N, BLOCK),)](*inputs, *camera, means2d, rest, extents, key, radii, N, W, H,
                                                       near, BLOCK_SIZE=BLOCK, ANTIALIASED=antialiased)
        ctx.mark_non_differentiable(extents, key, radii)
        ctx.save_for_backward(*inputs, *camera)
        ctx.size = (W, H, near)
        ctx.antialiased = antialiased
        return means2d, rest, extents, key, radii

    @staticmethod
    def backward(ctx, grad_means2d, grad_rest, _grad_extents, _grad_key, _grad_radii):
        means, quats, scales, opacities, world_to_camera, intrinsics = ctx.saved_tensors
        W, H, near = ctx.size
        N = means.shape[0]
        grad_means2d = means.new_zeros(N, 2) if grad_means2d is None else grad_means2d.to(means.dtype).contiguous()
        grad_rest = means.new_zeros(N, REST_COLUMNS) if grad_rest is None else grad_rest.to(means.dtype).contiguous()
        grads = [torch.empty_like(means), torch.empty_like(quats), torch.empty_like(scales), means.new_empty(N)]
        if N:
            _project_backward[(triton.cdiv(N, BLOCK),)](means, quats, scales, opacities, world_to_camera, intrinsics,
                                                        grad_means2d, grad_rest, *grads, N, W, H, near,
                                                        BLOCK_SIZE=BLOCK, ANTIALIASED=ctx.antialiased)
        return (*grads, None, None, None, None, None, None)


def project(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, camera: Camera,
            near_plane_m: float, antialiased: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fused projection (see :class:`FusedProjection`) of Gaussians into ``camera``:
    means2d [N, 2], rest [N, 5], half-extents x and y [N] pixels, sort key [N] and radii [N].
    ``antialiased``: the opacity in ``rest`` (and the drawing test) scaled as
    :func:`mega.render.gaussians.antialiased_opacities` scales it, in the same kernel."""
    means2d, rest, extents, key, radii = FusedProjection.apply(
        means, quats, scales, opacities, camera.world_to_camera, camera.intrinsics, float(camera.width),
        float(camera.height), float(near_plane_m), bool(antialiased))
    return means2d, rest, extents[0], extents[1], key, radii
