"""A figure of the hybrid for a few views: ground truth | face | hair | blended | occlusion mask,
one row per view (written by the hair and joint stages)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from mega.atomic import atomic_path

COLUMNS = ("ground truth", "face", "hair", "blended", "occlusion")


def avatar_rows(batch: dict, out: dict) -> list[torch.Tensor]:
    """One [3, H, W] strip of the five panels per image of a batch rendered by the avatar."""
    rows = []
    for b in range(batch["image"].shape[0]):
        occlusion = out["occlusion"][b].expand(3, -1, -1)
        panels = [batch["image"][b], out["face"]["rgb"][b], out["hair"]["rgb"][b], out["rgb"][b], occlusion]
        rows.append(torch.cat([p.detach().float().clamp(0, 1).cpu() for p in panels], dim=2))
    return rows


def write_avatar_figure(path: Path, shown: list[tuple[dict, dict]], n_views: int = 4) -> None:
    """``shown``: (batch, avatar output) pairs; the first ``n_views`` images become rows."""
    rows = [row for batch, out in shown for row in avatar_rows(batch, out)][:n_views]
    if not rows:
        return
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    image = Image.fromarray((grid * 255 + 0.5).clip(0, 255).astype(np.uint8))
    header = Image.new("RGB", (image.width, 14), "white")
    draw = ImageDraw.Draw(header)
    width = image.width // len(COLUMNS)
    for i, name in enumerate(COLUMNS):
        draw.text((i * width + 2, 1), name, fill="black")
    figure = Image.new("RGB", (image.width, image.height + header.height), "white")
    figure.paste(header, (0, 0))
    figure.paste(image, (0, header.height))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.save(tmp, format="PNG")
