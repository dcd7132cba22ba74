"""Keep decoded samples in memory up to a byte budget; the rest is read from disk each time."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


def nbytes(obj) -> int:
    """Bytes a tensor, or a dict of them, holds (64 for anything else)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    return 64


class MemoryCachedDataset(Dataset):
    """Wraps a dataset; the first ``budget_bytes`` worth of samples stay decoded in memory.

    A small subject (the synthetic default: 405 images, ~90 MB) is decoded once; a real one
    (~30k images) keeps the budget's worth and streams the rest.
    """

    def __init__(self, dataset: Dataset, budget_bytes: int):
        self.dataset = dataset
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        if i in self._cache:
            return self._cache[i]
        sample = self.dataset[i]
        size = nbytes(sample)
        if self.used_bytes + size <= self.budget_bytes:
            self._cache[i] = sample
            self.used_bytes += size
        return sample
