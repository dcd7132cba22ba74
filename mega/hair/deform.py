"""The hair's non-rigid deformation (paper eq. 6) and the posed hair of a frame.

M_d(PE(x_c), ψ) → (δx, δr, δs, δo, δc): an MLP on the positional encoding of each canonical
position with the frame's expression. The final hair of a frame (§3.2) is
``{R·x_c + t + δx, q_R ⊗ q_c + δr, s_c + δs, o_c + δo, sh_c + δc}`` with offsets added to the
raw parameters (log-scale, opacity logit, the degree-0 coefficient), as the authors do.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mega.geometry import matrix_to_quaternion, quaternion_multiply
from mega.hair.config import DEFORM_PRECISIONS
from mega.hair.model import GaussianHair
from mega.hair.softplus import softplus

OFFSET_SIZES = {"means": 3, "quats": 4, "scales": 3, "opacities": 1, "sh0": 3}
"""What the MLP moves, and how many numbers each takes (14 in all)."""

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
        """The hidden layers' softplus (:mod:`mega.hair.softplus`: ``F.softplus``'s values, faster)."""
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
               offsets: dict[str, Tensor] | None = None, sh_coefficients: int | None = None) -> dict[str, Tensor]:
    """The hair of B frames, activated: means [B, N, 3], quats [B, N, 4] unit, scales [B, N, 3],
    opacities [B, N], sh [B, N, K, 3].

    rotation [B, 3, 3] and translation [B, 3] map the canonical frame to each frame (eq. 5);
    positions and orientations both turn with the head. ``offsets`` from
    :class:`DeformationField` (None = rigid only). ``sh_coefficients``: keep only the first K
    (those of the active degree, all a render reads); None = all of the hair's.
    """
    p = hair.params
    B = rotation.shape[0]
    shN = p["shN"] if sh_coefficients is None else p["shN"][:, : max(sh_coefficients - 1, 0)]
    means = torch.einsum("bij,nj->bni", rotation, p["means"]) + translation[:, None]
    quats = quaternion_multiply(matrix_to_quaternion(rotation)[:, None], p["quats"][None])
    scales, opacities = p["scales"][None].expand(B, -1, -1), p["opacities"][None].expand(B, -1)
    sh0, shN = p["sh0"][None].expand(B, -1, -1, -1), shN[None].expand(B, -1, -1, -1)
    if offsets is not None:
        means = means + offsets["means"]
        quats = quats + offsets["quats"]
        scales = scales + offsets["scales"]
        opacities = opacities + offsets["opacities"][..., 0]
        sh0 = sh0 + offsets["sh0"][:, :, None]
    return {"means": means, "quats": F.normalize(quats, dim=-1), "scales": torch.exp(scales),
            "opacities": torch.sigmoid(opacities),
            "sh": torch.cat([sh0, shN], 2) if shN.shape[2] else sh0}
