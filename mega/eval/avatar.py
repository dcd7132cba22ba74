"""Evaluation of the hybrid avatar on a split, with the face alone measured the same way beside it.

Per image, renders read as 8-bit images (the authors save PNGs and reload them):

    psnr_head_paper    the paper's whole-head protocol (§1.11 of the reference): render and ground
                       truth × (object mask from the parsing × the rendered full mask), PSNR over
                       the whole frame
    psnr_hair          PSNR of the error over the ground-truth hair pixels
    psnr_face          the same over the ground-truth face pixels (the parsing's face region: skin,
                       brows, eyes, nose, lips; where long hair falls wrongly over the face, or the
                       face shows the white it learnt under the hair, this drops)
    hair_iou           IoU of the rendered hair as the blend shows it (Â_hair = α·G(M_o) > 0.5)
                       with the ground-truth hair mask (the visible hair, as the parsing sees it)
    face_only_psnr_head_paper   the same protocol for the face render alone (its mask = the mesh)

The blend is evaluated as the authors evaluate it: the 2nd near-z and the cleaned occlusion mask.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from mega.avatar import Avatar, RigidTable
from mega.data.gaussian_avatars import collate_samples, to_device
from mega.data.parsing import batch_regions, object_mask
from mega.eval.face import driving_parameters
from mega.eval.face_metrics import as_8bit, psnr_frame, psnr_masked, summarize
from mega.face.frames import FrameParameters
from mega.report.avatar_figure import write_avatar_figure


def hair_iou(alpha: Tensor, hair_mask: Tensor) -> Tensor:
    """IoU [B] of a rendered hair alpha (> 0.5) with the ground-truth hair mask (both [B, 1, H, W]).
    Callers pass the blend's Â_hair: hair hidden behind the head is not visible hair."""
    pred = alpha > 0.5
    union = (pred | hair_mask).flatten(1).sum(1)
    return (pred & hair_mask).flatten(1).sum(1) / union.clamp_min(1)


def full_mask(out: dict) -> Tensor:
    """The rendered full mask [B, 1, H, W]: clip(mesh − Â_hair, 0, 1) + Â_hair (the authors' ``fullmask``)."""
    weight = out["hair_weight"]
    return (out["face"]["mask"].to(weight.dtype) - weight).clamp(0, 1) + weight


@torch.no_grad()
def evaluate_avatar(avatar: Avatar, frames: FrameParameters, rigid: RigidTable, dataset, device: torch.device,
                    figure: Path | None = None, n_views: int = 4, batch_size: int = 4, refined: bool = False) -> dict:
    """Means over the split (see the module docstring); ``figure`` gets ground truth | face |
    hair | blended | occlusion for ``n_views`` views spread over the split."""
    was_training = avatar.training
    avatar.eval()
    per_image: dict[str, list[float]] = {k: [] for k in ("psnr_head_paper", "psnr_hair", "psnr_face", "hair_iou",
                                                         "face_only_psnr_head_paper")}
    every = max(1, len(dataset) // max(n_views, 1))
    shown = []
    for first in range(0, len(dataset), batch_size):
        indices = list(range(first, min(first + batch_size, len(dataset))))
        batch = to_device(collate_samples([dataset[i] for i in indices]), device)
        flame = driving_parameters(frames, batch, refined)
        rotation, translation = rigid(batch["timestep_index"])
        out = avatar(flame, batch["camera"], rotation, translation, evaluation=True)
        hair, _, face_region = batch_regions(batch)
        obj = object_mask(batch["parsing"])[:, None]
        rgb, face_rgb = as_8bit(out["rgb"]), as_8bit(out["face"]["rgb"])
        used, face_used = obj * full_mask(out), obj & out["face"]["mask"]
        per_image["hair_iou"] += hair_iou(out["hair_weight"], hair).tolist()
        for b, index in enumerate(indices):
            target = batch["image"][b]
            per_image["psnr_head_paper"].append(psnr_frame(rgb[b], target, used[b, 0]))
            per_image["face_only_psnr_head_paper"].append(psnr_frame(face_rgb[b], target, face_used[b, 0]))
            per_image["psnr_hair"].append(psnr_masked(rgb[b], target, hair[b, 0]))
            per_image["psnr_face"].append(psnr_masked(rgb[b], target, face_region[b, 0]))
            if figure is not None and index % every == 0 and index // every < n_views:
                shown.append(({"image": batch["image"][b:b + 1]},
                              {"face": {"rgb": out["face"]["rgb"][b:b + 1]}, "hair": {"rgb": out["hair"]["rgb"][b:b + 1]},
                               "rgb": out["rgb"][b:b + 1], "occlusion": out["occlusion"][b:b + 1]}))
    if figure is not None:
        write_avatar_figure(figure, shown, n_views)
    avatar.train(was_training)
    summary = {k: round(summarize(v), 4 if k == "hair_iou" else 3) for k, v in per_image.items()}
    summary["n_images"] = len(dataset)
    summary["parameters"] = "refined" if refined else "tracked expression and pose, refined shape"
    return summary
