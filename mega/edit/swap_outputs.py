"""What `mega swap-hair` writes for A wearing B's hair (results/edits/hairswap/{a}_with_{b}/):

    val/, test/        A's val and test views rendered with B's hair (the images of
                       :func:`mega.report.avatar_renders.render_avatar_split`, ``*.blend.png`` first)
    comparison.png     a few val views: A as trained | A with B's hair
    turntable.mp4      an orbit of novel views at one expression
    summary.json       the similarity fitted between the scalps, the image counts, the blending used
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import numpy as np
import torch

from mega.atomic import write_json
from mega.data.gaussian_avatars import SubjectDataset, collate_samples, to_device
from mega.edit.hairswap import SwappedAvatar
from mega.eval.face import driving_parameters
from mega.report.avatar_renders import render_avatar_split
from mega.report.videos import to_uint8, turntable_frames, write_mp4


@torch.no_grad()
def comparison_figure(swap: SwappedAvatar, union_dir: str | Path, path: str | Path, device: torch.device,
                      views: int = 3) -> Path:
    """A PNG of ``views`` val images of A: as trained (left) and with B's hair (right)."""
    from mega.report.result_figures import save_figure  # first: it selects the Agg backend

    import matplotlib.pyplot as plt

    dataset = SubjectDataset(union_dir, "val", parsing="off", depth="off")
    picks = np.linspace(0, len(dataset) - 1, num=min(views, len(dataset))).round().astype(int)
    fig, axes = plt.subplots(len(picks), 2, figsize=(5, 2.6 * len(picks)), squeeze=False)
    for row, index in enumerate(picks):
        batch = to_device(collate_samples([dataset[int(index)]]), device)
        flame = driving_parameters(swap.frames, batch, refined=False)
        for col, (avatar, rigid, title) in enumerate(((swap.original, swap.rigid_a, "as trained"),
                                                      (swap.swapped, swap.rigid, "with the other hair"))):
            rotation, translation = rigid(batch["timestep_index"])
            out = avatar(flame, batch["camera"], rotation, translation, evaluation=True)
            axes[row, col].imshow(to_uint8(out["rgb"][0]))
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def write_swap(swap: SwappedAvatar, union_dir: str | Path, out_dir: str | Path, device: torch.device,
               about: dict, turntable_frames_n: int = 90, degrees: float = 60.0, fps: int = 30,
               limit: int | None = None, progress: bool = True) -> dict:
    """Everything listed in the module's docstring; returns summary.json's content. ``about``
    (the two subjects) is copied into it; ``limit`` caps the images per split."""
    out_dir = Path(out_dir)
    counts = {}
    for split in ("val", "test"):
        paths = render_avatar_split(swap.swapped, swap.frames, swap.rigid, union_dir, split, out_dir / split, device,
                                    limit=limit, progress=progress)
        counts[split] = len(paths)
    comparison_figure(swap, union_dir, out_dir / "comparison.png", device)
    images = turntable_frames(swap.swapped, swap.frames, swap.rigid, union_dir, turntable_frames_n, degrees, device,
                              progress)
    first = next(images)
    height, width = first.shape[:2]
    write_mp4(chain([first], images), out_dir / "turntable.mp4", fps, (width, height))
    summary = {**about, "scalp_alignment": swap.similarity.to_dict(), "n_images": counts,
               "turntable_frames": turntable_frames_n,
               "blending": f"{swap.swapped.evaluation_blend()}, of a swap"}
    write_json(out_dir / "summary.json", summary)
    return summary
