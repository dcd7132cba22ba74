"""Metrics of the face branch on one image (the authors' protocol, restricted to the head).

Images [3, H, W] in [0, 1], masks [H, W] bool, depths [H, W] metres (0 = unknown).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def as_8bit(image: Tensor) -> Tensor:
    """The image as an 8-bit PNG would hold it (rounded to 1/255): the authors save renders as
    PNG and read them back before measuring."""
    return (image.clamp(0, 1) * 255).round() / 255


def psnr_masked(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """PSNR (dB, peak 1) of the mean squared error over the pixels of ``mask`` only."""
    n = int(mask.sum())
    if n == 0:
        return math.nan
    mse = float(((pred - target) ** 2)[:, mask].mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def psnr_frame(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """The paper's PSNR: render and ground truth multiplied by the mask, error over the full frame."""
    m = mask.to(pred.dtype)[None]
    mse = float(((pred * m - target * m) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def depth_mae_mm(pred_m: Tensor, target_m: Tensor, mask: Tensor) -> float:
    """Mean absolute depth error in mm over ``mask`` where both depths are known.

    The authors average over the whole mask, so a pixel without ground truth adds its full
    depth (about 1000 mm) to the sum; such pixels are left out here and counted by
    :func:`unknown_fraction` instead."""
    valid = mask & (pred_m > 0) & (target_m > 0)
    if not bool(valid.any()):
        return math.nan
    return float((pred_m - target_m).abs()[valid].mean()) * 1000.0


def unknown_fraction(target_m: Tensor, mask: Tensor) -> float:
    """Share of the pixels of ``mask`` whose ground-truth depth is unknown (0)."""
    n = int(mask.sum())
    return math.nan if n == 0 else float((mask & (target_m <= 0)).sum()) / n


def erode_mask(mask: Tensor) -> Tensor:
    """[H, W] bool: the pixels whose 3 × 3 neighbourhood lies inside ``mask``. Drops the rim,
    where the ground truth blends the head with hair or background and no face render can match."""
    return ~torch.nn.functional.max_pool2d((~mask)[None, None].float(), 3, 1, 1)[0, 0].bool()


def summarize(values: list[float]) -> float:
    """Mean of the values that are not NaN (an image with an empty mask gives NaN)."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan
