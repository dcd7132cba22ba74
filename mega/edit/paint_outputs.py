"""What `mega paint` writes for a painted avatar (results/edits/paint/{subject}/{name}/):

    paint.pt           the painted face (joint.pt's face with its new diffuse texture and pixel
                       decoder) and the painted UV mask
    paint/             the optimisation's checkpoint, loss.csv and loss.png
    comparison.png     held-out views (novel views: val; novel expressions: test): before | after
    turntable.mp4      an orbit of novel views after painting
    summary.json       how far the painted region moved toward the paint colour in the held-out
                       views (mean ΔE, CIE 1976 in Lab) and how much the rest changed
"""

from __future__ import annotations

import copy
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from kornia.color import rgb_to_lab

from mega.atomic import write_json
from mega.data.gaussian_avatars import SubjectDataset, collate_samples, to_device
from mega.edit.paint import Painting, painted_region, pixel_uvs
from mega.eval.face import driving_parameters
from mega.report.videos import to_uint8, turntable_frames, write_mp4


def delta_e(rgb: torch.Tensor, colour_rgb: torch.Tensor) -> torch.Tensor:
    """ΔE*ab (CIE 1976) between every pixel of rgb [B, 3, H, W] and one colour [3], both sRGB in
    [0, 1] → [B, 1, H, W]."""
    lab = rgb_to_lab(rgb.clamp(0, 1))
    target = rgb_to_lab(colour_rgb.clamp(0, 1).view(1, 3, 1, 1).to(rgb))
    return (lab - target).norm(dim=1, keepdim=True)


@torch.no_grad()
def held_out_change(before, after, frames, rigid, union_dir: str | Path, uv_mask: torch.Tensor,
                    paint_colour: torch.Tensor, device: torch.device, limit: int | None = None,
                    batch_size: int = 4) -> dict:
    """Per held-out split: the mean ΔE to the paint colour inside the painted region before and
    after, and the mean absolute change (8-bit levels) outside it, over its first ``limit`` images."""
    result = {}
    for split in ("val", "test"):
        dataset = SubjectDataset(union_dir, split, parsing="off", depth="off")
        n = len(dataset) if limit is None else min(limit, len(dataset))
        sums = {"de_before": 0.0, "de_after": 0.0, "inside": 0.0, "outside_change": 0.0, "outside": 0.0}
        for first in range(0, n, batch_size):
            batch = to_device(collate_samples([dataset[i] for i in range(first, min(first + batch_size, n))]), device)
            flame = driving_parameters(frames, batch, refined=False)
            rotation, translation = rigid(batch["timestep_index"])
            old = before(flame, batch["camera"], rotation, translation, evaluation=True)
            new = after(flame, batch["camera"], rotation, translation, evaluation=True)
            rast = new["face"]["rast"]
            region = painted_region(uv_mask, pixel_uvs(after.face, rast), rast[..., 3] > 0)
            region = region * (1 - new["hair_weight"])  # paint the hair covers is not seen
            inside = region > 0.5
            sums["de_before"] += float(delta_e(old["rgb"], paint_colour)[inside].sum())
            sums["de_after"] += float(delta_e(new["rgb"], paint_colour)[inside].sum())
            sums["inside"] += float(inside.sum())
            outside = (~inside).expand_as(new["rgb"])
            sums["outside_change"] += float(((new["rgb"] - old["rgb"]).abs() * 255)[outside].sum())
            sums["outside"] += float(outside.sum())
        pixels = max(sums["inside"], 1.0)
        result[split] = {"images": n, "painted_pixels": int(sums["inside"]),
                         "delta_e_to_paint_before": round(sums["de_before"] / pixels, 3),
                         "delta_e_to_paint_after": round(sums["de_after"] / pixels, 3),
                         "mean_change_outside_8bit": round(sums["outside_change"] / max(sums["outside"], 1.0), 4)}
    return result


@torch.no_grad()
def before_after_figure(before, after, frames, rigid, union_dir: str | Path, path: str | Path,
                        device: torch.device, views: int = 2) -> Path:
    """A PNG: rows of held-out views (val, then test), columns before | after."""
    from mega.report.result_figures import save_figure  # first: it selects the Agg backend

    import matplotlib.pyplot as plt

    rows = []
    for split in ("val", "test"):
        dataset = SubjectDataset(union_dir, split, parsing="off", depth="off")
        picks = np.linspace(0, len(dataset) - 1, num=min(views, len(dataset))).round().astype(int)
        rows += [(split, dataset, int(i)) for i in picks]
    fig, axes = plt.subplots(len(rows), 2, figsize=(5, 2.6 * len(rows)), squeeze=False)
    for r, (split, dataset, index) in enumerate(rows):
        batch = to_device(collate_samples([dataset[index]]), device)
        flame = driving_parameters(frames, batch, refined=False)
        rotation, translation = rigid(batch["timestep_index"])
        for c, (avatar, title) in enumerate(((before, "before"), (after, "after"))):
            out = avatar(flame, batch["camera"], rotation, translation, evaluation=True)
            axes[r, c].imshow(to_uint8(out["rgb"][0]))
            axes[r, c].set_axis_off()
            axes[r, c].set_title(f"{split} {title}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def write_paint(before, after, frames, rigid, union_dir: str | Path, painting: Painting, uv_mask: torch.Tensor,
                joint: dict, out_dir: str | Path, device: torch.device, about: dict, turntable_frames_n: int = 90,
                degrees: float = 60.0, fps: int = 30, limit: int | None = None, progress: bool = True) -> dict:
    """Everything listed in the module's docstring but paint/; returns summary.json's content."""
    from mega.train.checkpoint import save_checkpoint
    from mega.train.face import model_weights

    out_dir = Path(out_dir)
    painted_joint = {**copy.copy(joint), "model": model_weights({"model": after.face.state_dict()}),
                     "paint_uv_mask": uv_mask.cpu(), "painting": {"camera": painting.camera,
                                                                  "timestep": painting.timestep}}
    save_checkpoint(out_dir / "paint.pt", painted_joint)
    colour = painting.image[:, painting.mask].mean(1).to(device)
    change = held_out_change(before, after, frames, rigid, union_dir, uv_mask, colour, device, limit)
    before_after_figure(before, after, frames, rigid, union_dir, out_dir / "comparison.png", device)
    images = turntable_frames(after, frames, rigid, union_dir, turntable_frames_n, degrees, device, progress)
    first = next(images)
    write_mp4(chain([first], images), out_dir / "turntable.mp4", fps, (first.shape[1], first.shape[0]))
    summary = {**about, "paint_colour_rgb": [round(float(v), 4) for v in colour],
               "painted_texels": int(uv_mask.sum()), "held_out": change}
    write_json(out_dir / "summary.json", summary)
    return summary
