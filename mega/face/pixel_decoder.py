"""Per-pixel texture decoding: a learned UV encoding and the 307-parameter SIREN.

The decoder sees only the UV encoding (4 numbers) and the neural texture features (12), never
xyz, which is what lets it generalise to unseen expressions (paper §3.1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

UV_CODE_SIZE = 4
PIXEL_DECODER_PARAMETERS = 307
"""16 → 8 → 8 → 8 → 3: 136 + 72 + 72 + 27."""


class LearnedUVEncoding(nn.Module):
    """Two learned 1-D tables (the authors' LPE): u → 2 numbers, v → 2 numbers, linearly
    interpolated. uv [..., 2] in [0, 1] → code [..., 4]."""

    def __init__(self, size: int):
        super().__init__()
        self.table_u = nn.Parameter(torch.empty(size, 2).uniform_(-1, 1))
        self.table_v = nn.Parameter(torch.empty(size, 2).uniform_(-1, 1))

    @staticmethod
    def _lookup(table: Tensor, t: Tensor) -> Tensor:
        position = t.clamp(0, 1) * (table.shape[0] - 1)
        lower = position.detach().floor().clamp(max=table.shape[0] - 2).long()
        w = (position - lower)[..., None]
        return table[lower] * (1 - w) + table[lower + 1] * w

    def forward(self, uv: Tensor) -> Tensor:
        return torch.cat([self._lookup(self.table_u, uv[..., 0]), self._lookup(self.table_v, uv[..., 1])], dim=-1)


class SineLayer(nn.Module):
    """sin(ω0 · (W x + b)) with SIREN's initialisation."""

    def __init__(self, n_in: int, n_out: int, first: bool, omega_0: float = 30.0):
        super().__init__()
        self.omega_0 = omega_0
        self.linear = nn.Linear(n_in, n_out)
        bound = 1 / n_in if first else math.sqrt(6 / n_in) / omega_0
        nn.init.uniform_(self.linear.weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.omega_0 * self.linear(x))


class PixelDecoder(nn.Module):
    """[N, 4 + C] (UV code, texture features) → RGB [N, 3] in (0, 1).

    SIREN with two hidden layers of 8 and a linear, sigmoid-squashed output: 307 parameters
    for C = 12.
    """

    def __init__(self, n_in: int = UV_CODE_SIZE + 12, hidden: int = 8, omega_0: float = 30.0):
        super().__init__()
        self.layers = nn.Sequential(SineLayer(n_in, hidden, True, omega_0), SineLayer(hidden, hidden, False, omega_0),
                                    SineLayer(hidden, hidden, False, omega_0))
        self.out = nn.Linear(hidden, 3)
        bound = math.sqrt(6 / hidden) / omega_0
        nn.init.uniform_(self.out.weight, -bound, bound)
        if n_in == UV_CODE_SIZE + 12 and hidden == 8:
            count = sum(p.numel() for p in self.parameters())
            assert count == PIXEL_DECODER_PARAMETERS, f"pixel decoder has {count} parameters, expected 307"

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.out(self.layers(x)))
