"""``mega evaluate``: a trained avatar on one split under the paper's protocol (§6, Tables 1–2).

Splits: ``val`` is the novel view (camera 8 of the training sequences), ``test`` the novel
expression (the held-out sequence, every camera). Per image:

    psnr, ssim, lpips   render and ground truth × (object mask ∩ rendered full mask), over the
                        whole frame (see :mod:`mega.eval.protocol`)
    depth_mae_mm        face depth error on the face region the mesh covers, where the ground
                        truth is known (subjects with depth maps; see face_metrics.depth_mae_mm)
    depth_unknown       share of that region without ground-truth depth
    hair_iou            the blend's hair (Â_hair > 0.5) against the parsing's hair
    psnr_hair, psnr_face  PSNR of the blended render over the parsing's hair pixels and over its
                        face region (skin, brows, eyes, nose, lips): where each method wins
    psnr_object         as psnr, under the object mask alone: the paper's PSNR counts only what
                        the method draws (its own full mask), so hair or face it leaves out
                        costs nothing there; here it does

A MeGA avatar is driven as the authors evaluate it: the refined shape with the tracked expression
and pose, the 2nd near-z and the cleaned occlusion mask (:func:`mega_renderer`); the
GaussianAvatars baseline by the same tracked parameters, its alpha as the rendered full mask,
without hair IoU or depth of its own (:func:`gaussianavatars_renderer`). Images are read one
batch at a time, so memory does not grow with the split.

Outputs in ``out_dir``: ``metrics.csv`` (one row per image), ``metrics.json`` (the means and how
they were taken) and ``renders/<timestep>_<camera>.png`` (the blended renders, 8-bit).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from mega.atomic import atomic_path, write_json, write_text
from mega.avatar import Avatar, RigidTable
from mega.data.gaussian_avatars import SubjectDataset, collate_samples, to_device
from mega.data.parsing import batch_regions, object_mask
from mega.errors import DataError
from mega.eval.avatar import full_mask, hair_iou
from mega.eval.face import driving_parameters
from mega.eval.face_metrics import as_8bit, depth_mae_mm, psnr_frame, psnr_masked, unknown_fraction
from mega.eval.protocol import PaperMetrics
from mega.face.frames import FrameParameters

SPLITS = {"val": "novel view (camera 8 of the training sequences)",
          "test": "novel expression (the held-out sequence, all cameras)"}
COLUMNS = ("psnr", "ssim", "lpips", "depth_mae_mm", "depth_unknown", "hair_iou", "psnr_hair", "psnr_face",
           "psnr_object")
PROTOCOL = ("render and ground truth x (object mask from the parsing, hat and cloth excluded, x the rendered "
            "full mask), metrics over the whole frame; renders rounded to 8 bits; LPIPS AlexNet v0.1; depth "
            "MAE on the face region the mesh covers where the ground truth is known")


def object_region(batch: dict) -> torch.Tensor:
    """[B, 1, H, W] bool: the object mask of the parsing (head and hair without hat and cloth);
    the foreground mask without parsing."""
    return object_mask(batch["parsing"])[:, None] if "parsing" in batch else batch["fg_mask"] > 0.5


def evaluation_mask(batch: dict, out: dict) -> torch.Tensor:
    """[B, 1, H, W] in [0, 1]: the object mask × the rendered full mask (a renderer's
    ``full_mask``), as the authors multiply."""
    weight = out["full_mask"]
    return object_region(batch).to(weight.dtype) * weight


Renderer = Callable[[dict], dict]
"""What evaluation renders a batch with: batch → rgb [B, 3, H, W] over white, full_mask [B, 1, H, W]
in [0, 1], and where the method has them hair_weight (the visible hair's Â_hair), face_mask and
face_depth [B, 1, H, W] (the mesh face's coverage and depth, metres); None where it has not."""


def mega_renderer(avatar: Avatar, frames: FrameParameters, rigid: RigidTable) -> Renderer:
    """The hybrid as the authors evaluate it: the refined shape with the tracked expression and
    pose, the 2nd near-z and the cleaned occlusion mask."""
    def render(batch: dict) -> dict:
        rotation, translation = rigid(batch["timestep_index"])
        out = avatar(driving_parameters(frames, batch, refined=False), batch["camera"], rotation, translation,
                     evaluation=True)
        return {"rgb": out["rgb"], "full_mask": full_mask(out), "hair_weight": out["hair_weight"],
                "face_mask": out["face"]["mask"], "face_depth": out["face"]["depth"]}
    avatar.eval()
    return render


def gaussianavatars_renderer(model, frames: FrameParameters) -> Renderer:
    """The GaussianAvatars baseline under the same protocol: the tracked expression and pose (its
    shape is the tracked one), its alpha as the rendered full mask; no hair of its own (no hair
    IoU) and no mesh face (no depth error)."""
    def render(batch: dict) -> dict:
        out = model(driving_parameters(frames, batch, refined=False), batch["camera"])
        return {"rgb": out["rgb"], "full_mask": out["alpha"].clamp(0, 1), "hair_weight": None, "face_mask": None,
                "face_depth": None}
    model.eval()
    return render


def write_render(path: Path, image: torch.Tensor) -> None:
    """image [3, H, W] in [0, 1] as an 8-bit PNG, atomically."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


@torch.no_grad()
def evaluate_split(render: Renderer, union_dir: str | Path, split: str, out_dir: str | Path,
                   metrics: PaperMetrics, device: torch.device, batch_size: int = 4, save_renders: bool = True,
                   limit: int | None = None, progress: bool = True, about: dict | None = None,
                   blending: str | None = None,
                   parameters: str = "tracked expression and pose, refined shape") -> dict:
    """Evaluate what ``render`` draws (:func:`mega_renderer`, :func:`gaussianavatars_renderer`) on
    ``split``; writes the outputs above and returns metrics.json's content. ``about`` (subject,
    variant, method ...) is copied into metrics.json, and ``blending`` (the blend in words,
    :meth:`mega.avatar.Avatar.evaluation_blend`; None for a method without one)."""
    if split not in SPLITS:
        raise DataError(f"split '{split}': expected one of {', '.join(SPLITS)}")
    dataset = SubjectDataset(union_dir, split)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise DataError(f"{union_dir}: the {split} split has no images")
    out_dir = Path(out_dir)
    (out_dir / "renders").mkdir(parents=True, exist_ok=True)
    rows = []
    for first in tqdm(range(0, n, batch_size), desc=f"evaluate {split}", unit="batch", disable=not progress):
        indices = list(range(first, min(first + batch_size, n)))
        batch = to_device(collate_samples([dataset[i] for i in indices]), device)
        out = render(batch)
        mask = evaluation_mask(batch, out)
        values = {k: v.tolist() for k, v in metrics(out["rgb"], batch["image"], mask).items()}
        hair, _, face = batch_regions(batch)
        values["hair_iou"] = (hair_iou(out["hair_weight"], hair).tolist()
                              if "parsing" in batch and out["hair_weight"] is not None else [math.nan] * len(indices))
        rgb_8bit = as_8bit(out["rgb"])
        for key, region in (("psnr_hair", hair), ("psnr_face", face)):
            values[key] = ([psnr_masked(rgb_8bit[b], batch["image"][b], region[b, 0]) for b in range(len(indices))]
                           if "parsing" in batch else [math.nan] * len(indices))
        # The paper's PSNR counts only what the method draws (× its own full mask): hair or face
        # it leaves out costs nothing. The same PSNR under the object mask alone counts it.
        obj = object_region(batch)
        values["psnr_object"] = [psnr_frame(rgb_8bit[b], batch["image"][b], obj[b, 0]) for b in range(len(indices))]
        for b, index in enumerate(indices):
            timestep, camera = int(batch["timestep_index"][b]), int(batch["camera_index"][b])
            name = f"{timestep:05d}_{camera:02d}.png"
            row = {"index": index, "timestep_index": timestep, "camera_index": camera, "render": f"renders/{name}",
                   **{k: per_image[b] for k, per_image in values.items()}}
            if "depth" in batch and out["face_depth"] is not None:
                region = (face & out["face_mask"])[b, 0]
                row["depth_mae_mm"] = depth_mae_mm(out["face_depth"][b, 0], batch["depth"][b, 0], region)
                row["depth_unknown"] = unknown_fraction(batch["depth"][b, 0], region)
            else:
                row["depth_mae_mm"] = row["depth_unknown"] = math.nan
            rows.append(row)
            if save_renders:
                write_render(out_dir / "renders" / name, out["rgb"][b])
    table = pd.DataFrame(rows, columns=["index", "timestep_index", "camera_index", "render", *COLUMNS])
    write_text(out_dir / "metrics.csv", table.to_csv(index=False, float_format="%.6g"))
    means = {k: _mean(table[k]) for k in COLUMNS}
    summary = {**(about or {}), "split": split, "split_is": SPLITS[split], "n_images": n, **means,
               "protocol": PROTOCOL, "parameters": parameters}
    if blending:
        summary["blending"] = blending
    write_json(out_dir / "metrics.json", summary)
    return summary


def _mean(column: pd.Series) -> float | None:
    """The mean of the finite values, rounded; None (null in JSON) when there are none."""
    values = column.to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    return round(float(values.mean()), 5) if values.size else None
