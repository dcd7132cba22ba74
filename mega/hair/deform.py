"""The hair's non-rigid deformation (paper eq. 6) and the posed hair of a frame.

M_d(PE(x_c), ψ) → (δx, δr, δs, δo, δc): an MLP on the positional encoding of each canonical
position with the frame's expression. The final hair of a frame (§3.2) is
``{R·x_c + t + δx, q_R ⊗ q_c + δr, s_c + δs, o_c + δo, sh_c + δc}`` with offsets added to the
raw parameters (log-scale, opacity logit, the degree-0 coefficient), as the authors do.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mega.geometry import matrix_to_quaternion, quaternion_multiply
from mega.hair.model import GaussianHair

OFFSET_SIZES = {"means": 3, "quats": 4, "scales": 3, "opacities": 1, "sh0": 3}
"""What the MLP moves, and how many numbers each takes (14 in all)."""

DEFORM_PRECISIONS = ("float32", "bfloat16", "auto")
"""float32: the authors'; bfloat16: the matrix products and activations under bfloat16 autocast
(weights, inputs and outputs stay float32); auto: bfloat16 on CPUs with bfloat16 arithmetic
units (AVX-512 BF16, AMX), float32 elsewhere (on CUDA the float32 step was the faster one,
docs/benchmarks.md)."""


@lru_cache(maxsize=None)
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (Linux's cpuinfo flags avx512_bf16 or
    amx_bf16); without them bfloat16 matrix products are emulated and slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def deformation_autocast(precision: str, device: torch.device) -> bool:
    """Whether the deformation field runs under bfloat16 autocast on ``device`` (see
    :data:`DEFORM_PRECISIONS`)."""
    if precision == "auto":
        return device.type == "cpu" and cpu_has_native_bfloat16()
    return precision == "bfloat16"


def positional_encoding(x: Tensor, frequencies: int) -> Tensor:
    """[..., 3] → [..., 3 + 6·frequencies]: x, then sin and cos of 2^k·x for k < frequencies
    (NeRF's encoding with the input kept)."""
    scales = 2.0 ** torch.arange(frequencies, dtype=x.dtype, device=x.device)
    angles = (x[..., None, :] * scales[:, None]).flatten(-2)
    return torch.cat([x, torch.sin(angles), torch.cos(angles)], -1)


class _SoftplusWithTorchBackward(torch.autograd.Function):
    """A softplus whose forward a subclass computes its own way; the backward is torch's
    ``softplus_backward`` (β 1, threshold 20) on the saved input."""

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.softplus_backward(grad, x, 1.0, 20.0)


class _CpuSoftplus(_SoftplusWithTorchBackward):
    """``F.softplus`` (β 1, threshold 20) of a CPU float32 tensor through numpy's vectorised exp
    and log1p: 4× faster than torch's CPU kernel, whose log1p is not vectorised (the softplus of
    the [B·N, 256] hidden layers was a third of a CPU joint step). The same values to float32
    rounding (above the threshold log1p(e^-|x|) < 2e-9, below half an ulp of x)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        values = x.detach().numpy()
        out = np.abs(values)
        np.negative(out, out=out)
        np.exp(out, out=out)
        np.log1p(out, out=out)
        out += np.maximum(values, 0)
        return torch.from_numpy(out)


@lru_cache(maxsize=None)
def _bfloat16_softplus_table() -> Tensor:
    """[65536] bfloat16: torch's softplus of every bfloat16 value, indexed by its 16 bits."""
    codes = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    return F.softplus(codes.float()).to(torch.bfloat16)


class _CpuBfloat16Softplus(_SoftplusWithTorchBackward):
    """``F.softplus`` of a CPU bfloat16 tensor by table look-up: a bfloat16 has 65,536 values, so
    the softplus of each is tabulated once and gathered (the same values as torch's bfloat16
    kernel, which runs a scalar log1p per element and took a quarter of a bfloat16 joint step;
    3× faster)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        codes = x.view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF)
        return torch.index_select(_bfloat16_softplus_table(), 0, codes.reshape(-1)).view(x.shape)


def softplus(x: Tensor) -> Tensor:
    """``F.softplus(x)``, faster on the CPU: float32 through numpy (:class:`_CpuSoftplus`),
    bfloat16 by table look-up (:class:`_CpuBfloat16Softplus`)."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return _CpuSoftplus.apply(x.contiguous())
    if x.device.type == "cpu" and x.dtype == torch.bfloat16:
        return _CpuBfloat16Softplus.apply(x)
    return F.softplus(x)


class DeformationField(nn.Module):
    """forward(canonical means [N, 3], expression [B, E]) → offsets by name, each [B, N, n]
    (see :data:`OFFSET_SIZES`), already × ``scale``, in the dtype of the means. Softplus hidden
    layers; the last layer is zero-initialised, so the field starts as the identity.
    ``precision`` (:data:`DEFORM_PRECISIONS`): the arithmetic of its layers; the parameters stay
    float32 whatever it is, so a checkpoint loads under any precision."""

    def __init__(self, expression_size: int = 100, layers: tuple[int, ...] = (256, 256), frequencies: int = 6,
                 scale: float = 1e-3, precision: str = "float32"):
        super().__init__()
        if precision not in DEFORM_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(DEFORM_PRECISIONS)}, got {precision!r}")
        self.frequencies, self.scale, self.expression_size = frequencies, scale, expression_size
        self.precision = precision
        self.activation = softplus
        """The hidden layers' softplus (the numpy one on the CPU; ``F.softplus`` gives the same values)."""
        position_size = 3 + 6 * frequencies
        # The first layer is split into its position and expression parts: the position part is
        # computed once per Gaussian and the expression part once per frame, instead of once per
        # (frame, Gaussian) pair on a concatenated input. Same function, far fewer operations.
        self.first_position = nn.Linear(position_size, layers[0])
        self.first_expression = nn.Linear(expression_size, layers[0], bias=False)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(layers[:-1], layers[1:]))
        self.last = nn.Linear(layers[-1], sum(OFFSET_SIZES.values()))
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, canonical_means: Tensor, expression: Tensor) -> dict[str, Tensor]:
        expression = _fit_width(expression, self.expression_size)
        device = canonical_means.device
        # Under bfloat16 autocast the [B·N, 256] products and softplus, which are most of a CPU
        # joint step, run at half the memory traffic and on the CPU's bfloat16 units.
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=deformation_autocast(self.precision, device)):
            h = self.first_position(positional_encoding(canonical_means, self.frequencies))[None]
            h = self.activation(h + self.first_expression(expression)[:, None])
            for layer in self.hidden:
                h = self.activation(layer(h))
            out = self.last(h)
        out = out.to(canonical_means.dtype) * self.scale
        return dict(zip(OFFSET_SIZES, out.split(list(OFFSET_SIZES.values()), dim=-1)))


def _fit_width(expression: Tensor, size: int) -> Tensor:
    """The first ``size`` expression coefficients, zero-padded when the model has fewer."""
    if expression.shape[-1] >= size:
        return expression[..., :size]
    return F.pad(expression, (0, size - expression.shape[-1]))


def posed_hair(hair: GaussianHair, rotation: Tensor, translation: Tensor,
               offsets: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The hair of B frames, activated: means [B, N, 3], quats [B, N, 4] unit, scales [B, N, 3],
    opacities [B, N], sh [B, N, K, 3].

    rotation [B, 3, 3] and translation [B, 3] map the canonical frame to each frame (eq. 5);
    positions and orientations both turn with the head. ``offsets`` from
    :class:`DeformationField` (None = rigid only).
    """
    p = hair.params
    B = rotation.shape[0]
    means = torch.einsum("bij,nj->bni", rotation, p["means"]) + translation[:, None]
    quats = quaternion_multiply(matrix_to_quaternion(rotation)[:, None], p["quats"][None])
    scales, opacities = p["scales"][None].expand(B, -1, -1), p["opacities"][None].expand(B, -1)
    sh0, shN = p["sh0"][None].expand(B, -1, -1, -1), p["shN"][None].expand(B, -1, -1, -1)
    if offsets is not None:
        means = means + offsets["means"]
        quats = quats + offsets["quats"]
        scales = scales + offsets["scales"]
        opacities = opacities + offsets["opacities"][..., 0]
        sh0 = sh0 + offsets["sh0"][:, :, None]
    return {"means": means, "quats": F.normalize(quats, dim=-1), "scales": torch.exp(scales),
            "opacities": torch.sigmoid(opacities), "sh": torch.cat([sh0, shN], 2)}
