"""Real spherical harmonics up to degree 3, with 3D Gaussian Splatting's constants and sign
conventions, so coefficients trained here read the same in any 3DGS viewer."""

from __future__ import annotations

from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)


def num_sh_coefficients(degree: int) -> int:
    return (degree + 1) ** 2


def eval_sh(degree: int, coefficients: Tensor, directions: Tensor) -> Tensor:
    """coefficients [..., K ≥ (degree+1)², C], unit directions [..., 3] → values [..., C].

    The colour of a Gaussian is ``eval_sh(...) + 0.5`` clamped at 0, as in 3DGS.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"spherical-harmonics degree must be 0..3, got {degree}")
    if coefficients.shape[-2] < num_sh_coefficients(degree):
        raise ValueError(f"degree {degree} needs {num_sh_coefficients(degree)} coefficients per channel, "
                         f"got {coefficients.shape[-2]}")
    sh = coefficients
    result = SH_C0 * sh[..., 0, :]
    if degree == 0:
        return result
    x, y, z = directions[..., 0:1], directions[..., 1:2], directions[..., 2:3]
    result = result - SH_C1 * y * sh[..., 1, :] + SH_C1 * z * sh[..., 2, :] - SH_C1 * x * sh[..., 3, :]
    if degree == 1:
        return result
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    result = (result + SH_C2[0] * xy * sh[..., 4, :] + SH_C2[1] * yz * sh[..., 5, :]
              + SH_C2[2] * (2 * zz - xx - yy) * sh[..., 6, :] + SH_C2[3] * xz * sh[..., 7, :]
              + SH_C2[4] * (xx - yy) * sh[..., 8, :])
    if degree == 2:
        return result
    return (result + SH_C3[0] * y * (3 * xx - yy) * sh[..., 9, :] + SH_C3[1] * xy * z * sh[..., 10, :]
            + SH_C3[2] * y * (4 * zz - xx - yy) * sh[..., 11, :]
            + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[..., 12, :]
            + SH_C3[4] * x * (4 * zz - xx - yy) * sh[..., 13, :] + SH_C3[5] * z * (xx - yy) * sh[..., 14, :]
            + SH_C3[6] * x * (xx - 3 * yy) * sh[..., 15, :])


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """The degree-0 coefficient that renders ``rgb``."""
    return (rgb - 0.5) / SH_C0
