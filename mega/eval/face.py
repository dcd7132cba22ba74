"""Evaluation of a trained face on a split (val: the novel view; test: the held-out sequence)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from mega.data.gaussian_avatars import collate_samples, to_device
from mega.data.parsing import batch_regions
from mega.eval.face_metrics import (as_8bit, depth_mae_mm, erode_mask, psnr_frame, psnr_masked, summarize,
                                    unknown_fraction)
from mega.face.frames import FrameParameters
from mega.face.model import NeuralFace
from mega.report.face_renders import write_comparison


def driving_parameters(frames: FrameParameters, batch: dict, refined: bool) -> dict[str, Tensor]:
    """FLAME parameters to render a batch with: the refined shape with the tracked expression
    and pose (the authors' protocol), or every parameter as refined in training."""
    if refined:
        return frames(batch["timestep_index"])
    tracked = {k: v.to(frames.shape.dtype) for k, v in batch["flame"].items()}
    tracked["shape"] = frames.shape.expand(len(batch["timestep_index"]), -1)
    return tracked


@torch.no_grad()
def evaluate_face(model: NeuralFace, frames: FrameParameters, dataset, device: torch.device,
                  render_dir: Path | None = None, n_renders: int = 4, batch_size: int = 4,
                  refined: bool = False) -> dict:
    """Means over the split of per-image metrics, renders read as 8-bit images as the authors'
    are:

    psnr_head            PSNR of the squared error over head pixels (parsing, no hair) the mesh covers
    psnr_head_interior   the same without the region's 1-pixel rim
    psnr_frame           the paper's: render and ground truth × that mask, error over the whole frame
    depth_mae_face_mm    depth error on the face region the mesh covers, where the ground truth is known
    depth_unknown_face   share of those pixels without ground-truth depth (left out of the MAE)
    """
    was_training = model.training
    model.eval()
    per_image: dict[str, list[float]] = {"psnr_head": [], "psnr_head_interior": [], "psnr_frame": [],
                                         "depth_mae_face_mm": [], "depth_unknown_face": []}
    render_every = max(1, len(dataset) // max(n_renders, 1))
    for first in range(0, len(dataset), batch_size):
        indices = list(range(first, min(first + batch_size, len(dataset))))
        batch = to_device(collate_samples([dataset[i] for i in indices]), device)
        out = model(driving_parameters(frames, batch, refined), batch["camera"])
        rgb = as_8bit(out["rgb"])
        _, head, face = batch_regions(batch)
        for b, index in enumerate(indices):
            region = (head & out["mask"])[b, 0]
            per_image["psnr_head"].append(psnr_masked(rgb[b], batch["image"][b], region))
            per_image["psnr_head_interior"].append(psnr_masked(rgb[b], batch["image"][b], erode_mask(region)))
            per_image["psnr_frame"].append(psnr_frame(rgb[b], batch["image"][b], region))
            if "depth" in batch:
                face_region = (face & out["mask"])[b, 0]
                per_image["depth_mae_face_mm"].append(
                    depth_mae_mm(out["depth"][b, 0], batch["depth"][b, 0], face_region))
                per_image["depth_unknown_face"].append(unknown_fraction(batch["depth"][b, 0], face_region))
            if render_dir is not None and index % render_every == 0 and index // render_every < n_renders:
                write_comparison(render_dir / f"{index:04d}.png", batch["image"][b], rgb[b],
                                 as_8bit(out["rgb_diffuse"][b]), region, out["depth"][b],
                                 batch["depth"][b] if "depth" in batch else None)
    model.train(was_training)
    summary = {k: round(summarize(v), 4 if k == "depth_unknown_face" else 3) for k, v in per_image.items() if v}
    summary["n_images"] = len(dataset)
    summary["parameters"] = "refined" if refined else "tracked expression and pose, refined shape"
    return summary
