"""Convolutional decoders of the face: view texture, dynamic texture, UV displacement map.

All three grow an 8 × 8 seed to the output size with :class:`ConvUpBlock`s (the authors'
architecture: conv 3×3 with an untied per-texel bias, batch norm, conv 1×1 to 4× channels,
LeakyReLU, pixel shuffle). A 1024² texture takes seven blocks, a 128² one four.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Hidden widths of the authors' texture decoders, from the 8² seed upwards; the last block
# outputs the texture's channels.
TEXTURE_WIDTHS = (64, 32, 32, 16, 16, 8)
DISPLACEMENT_WIDTHS = (64, 32, 32, 16)
DRIVING_SIZE = 115
"""expression 100 + rotation 3 + neck 3 + jaw 3 + eyes 6."""


class ConvUpBlock(nn.Module):
    """[B, c_in, s, s] → [B, c_out, 2s, 2s]."""

    def __init__(self, c_in: int, c_out: int, size: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bias = nn.Parameter(torch.zeros(c_out, size, size))  # untied: one bias per texel
        self.norm = nn.BatchNorm2d(c_out)
        self.expand = nn.Conv2d(c_out, 4 * c_out, 1)
        self.act = nn.LeakyReLU(0.2)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(self.act(self.expand(self.norm(self.conv(x) + self.bias))))


def up_blocks(c_in: int, c_out: int, out_size: int, widths: tuple[int, ...]) -> nn.Sequential:
    """Blocks from an 8² input to ``out_size``² (8 · 2^k); hidden widths from ``widths``.

    The last block's 1×1 convolution starts at zero, so each decoder starts as a no-op: the
    displacement map from the tracked FLAME mesh, the view and dynamic textures from the
    diffuse one. Random starts add noise of the size of the diffuse texture itself to every
    pixel, which the 307-parameter decoder then spends thousands of steps averaging away.
    """
    n = int(round(math.log2(out_size / 8)))
    if n < 1 or 8 * 2**n != out_size:
        raise ValueError(f"decoder output size must be 8 · 2^k with k ≥ 1, got {out_size}")
    hidden = [widths[min(i, len(widths) - 1)] for i in range(n - 1)]
    channels = [c_in] + hidden + [c_out]
    blocks = nn.Sequential(*(ConvUpBlock(channels[i], channels[i + 1], 8 * 2**i) for i in range(n)))
    nn.init.zeros_(blocks[-1].expand.weight)
    nn.init.zeros_(blocks[-1].expand.bias)
    return blocks


class ViewDecoder(nn.Module):
    """Unit view direction [B, 3] → view texture [B, C, T, T]."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.blocks = up_blocks(3, channels, size, TEXTURE_WIDTHS)

    def forward(self, view_dir: Tensor) -> Tensor:
        return self.blocks(view_dir[:, :, None, None].expand(-1, -1, 8, 8))


class DrivenDecoder(nn.Module):
    """Driving signal [B, 115] → Linear 256 → [B, 4, 8, 8] → up blocks → [B, C, S, S]."""

    def __init__(self, channels: int, size: int, widths: tuple[int, ...]):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(DRIVING_SIZE, 256), nn.LeakyReLU(0.2))
        self.blocks = up_blocks(4, channels, size, widths)

    def forward(self, driving: Tensor) -> Tensor:
        return self.blocks(self.fc(driving).view(-1, 4, 8, 8))


class DynamicDecoder(DrivenDecoder):
    """Expression and pose → dynamic texture [B, C, T, T]."""

    def __init__(self, channels: int, size: int):
        super().__init__(channels, size, TEXTURE_WIDTHS)


class DisplacementDecoder(DrivenDecoder):
    """Expression and pose → UV displacement map [B, 3, S, S] in metres (decoder output × scale)."""

    def __init__(self, size: int, scale_m: float):
        super().__init__(3, size, DISPLACEMENT_WIDTHS)
        self.scale_m = scale_m

    def forward(self, driving: Tensor) -> Tensor:
        return super().forward(driving) * self.scale_m
