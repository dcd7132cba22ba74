"""Flattening variable-length ranges, the index arithmetic both rasterizers enumerate with."""

from __future__ import annotations

import torch
from torch import Tensor


def expand_ranges(counts: Tensor) -> tuple[Tensor, Tensor]:
    """counts [R] int ≥ 0 → (owner [T], offset [T]) with T = Σ counts: element t belongs to range
    ``owner[t]`` and is its ``offset[t]``-th element (0-based)."""
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    offset = torch.arange(owner.numel(), device=counts.device) - starts.index_select(0, owner)
    return owner, offset
