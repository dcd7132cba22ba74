"""Side-by-side images of a face render against the ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mega.atomic import atomic_path


def write_comparison(path: Path, gt: Tensor, rgb: Tensor, diffuse: Tensor, region: Tensor, depth_m: Tensor,
                     gt_depth_m: Tensor | None) -> None:
    """ground truth | render | diffuse only | |error| × 4 on the head | depth error (0–5 mm).

    Images [3, H, W] in [0, 1]; region [H, W] bool; depths [1, H, W] metres."""
    error = ((rgb - gt).abs() * 4 * region).clamp(0, 1)
    panels = [gt, rgb, diffuse, error]
    if gt_depth_m is not None:
        d = ((depth_m - gt_depth_m).abs() * 1000 / 5).clamp(0, 1) * region
        panels.append(torch.cat([d, 1 - d, 1 - d]) * region + (~region))
    strip = torch.cat(panels, dim=2).permute(1, 2, 0).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray((strip * 255 + 0.5).clip(0, 255).astype(np.uint8)).save(tmp)
