"""The paper's image metrics (§6; the authors' ``metrics.py``, reference §1.11), for a batch.

Render and ground truth are both multiplied by the evaluation mask (the object mask from the
parsing × the rendered full mask), so the background is 0 in both, and each metric is then
taken over the whole frame: PSNR = 10·log10(1 / MSE), SSIM with the authors' 11 × 11 Gaussian
window (σ = 1.5, zero padding: 3DGS's ``ssim``), LPIPS with AlexNet on [0, 1] inputs
(``normalize=True``). Renders are first rounded to 8 bits, as the authors save PNGs and read
them back.

Images [B, 3, H, W] in [0, 1]; masks [B, 1, H, W] bool or soft weights in [0, 1]; results [B].
"""

from __future__ import annotations

import logging
import math

import torch
from kornia.filters import filter2d_separable, get_gaussian_kernel1d
from torch import Tensor, nn

from mega.eval.face_metrics import as_8bit

log = logging.getLogger(__name__)

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
LPIPS_MIN_SIDE = 32
"""AlexNet's strides and poolings leave nothing of a smaller image."""
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2


def apply_mask(image: Tensor, mask: Tensor) -> Tensor:
    """The image with everything outside ``mask`` set to 0 (black)."""
    return image * mask.to(image.dtype)


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """[B] PSNR in dB (peak 1) of the mean squared error over each whole image."""
    mse = (pred - target).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """[B] mean SSIM with a Gaussian window, zero-padded at the frame's border as the authors'."""
    kernel = get_gaussian_kernel1d(SSIM_WINDOW, SSIM_SIGMA, device=pred.device, dtype=pred.dtype).reshape(1, -1)

    def blur(x: Tensor) -> Tensor:
        return filter2d_separable(x, kernel, kernel, border_type="constant")

    mu1, mu2 = blur(pred), blur(target)
    var1 = blur(pred * pred) - mu1 * mu1
    var2 = blur(target * target) - mu2 * mu2
    cov = blur(pred * target) - mu1 * mu2
    value = ((2 * mu1 * mu2 + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu1 * mu1 + mu2 * mu2 + SSIM_C1) * (var1 + var2 + SSIM_C2))
    return value.flatten(1).mean(1)


class PaperMetrics:
    """PSNR, SSIM and LPIPS of a batch under the paper's masking protocol.

    ``lpips`` is the network of :func:`mega.eval.lpips.load_lpips` (None leaves LPIPS out, NaN)."""

    def __init__(self, lpips: nn.Module | None = None):
        self.lpips = lpips

    @torch.no_grad()
    def __call__(self, render: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        pred, gt = apply_mask(as_8bit(render), mask), apply_mask(target, mask)
        out = {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
        if self.lpips is not None and min(pred.shape[-2:]) >= LPIPS_MIN_SIDE:
            out["lpips"] = self.lpips(pred, gt, normalize=True).flatten()
        else:
            if self.lpips is not None and not getattr(self, "_warned", False):
                log.warning("LPIPS left out (NaN): images of %d x %d px are smaller than AlexNet's %d px",
                            pred.shape[-1], pred.shape[-2], LPIPS_MIN_SIDE)
                self._warned = True
            out["lpips"] = torch.full_like(out["psnr"], math.nan)
        return out
