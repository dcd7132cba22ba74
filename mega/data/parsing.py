"""Face-parsing labels in CelebAMask-HQ order (MeGA's ``parsing/<ts>_<cam>_labels.png``) and the
masks MeGA derives from them."""

from __future__ import annotations

import torch
from torch import Tensor

CELEBAMASK_HQ_LABELS = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
    "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)
LABEL = {name: i for i, name in enumerate(CELEBAMASK_HQ_LABELS)}
N_LABELS = len(CELEBAMASK_HQ_LABELS)


def object_mask(labels: Tensor) -> Tensor:
    """Head and hair without hat or cloth: MeGA's ``obj`` mask, [..., H, W] bool."""
    return (labels > 0) & (labels < LABEL["cloth"]) & (labels != LABEL["hat"])


def hair_mask(labels: Tensor) -> Tensor:
    """Hair, and earrings as MeGA counts them with hair."""
    return (labels == LABEL["hair"]) | (labels == LABEL["ear_r"])


def head_mask(labels: Tensor) -> Tensor:
    """The object without hair: the pixels the mesh face is fitted to."""
    return object_mask(labels) & (labels != LABEL["hair"])


def face_mask(labels: Tensor) -> Tensor:
    """The facial area MeGA measures depth error on: labels 1–15 without hair, hat, ears and
    mouth interior. Earrings (15) stay in, as in the authors' evaluation."""
    excluded = torch.tensor([LABEL[n] for n in ("hair", "hat", "l_ear", "r_ear", "mouth")], device=labels.device)
    return (labels > 0) & (labels <= LABEL["ear_r"]) & ~torch.isin(labels, excluded)


def batch_regions(batch: dict) -> tuple[Tensor, Tensor, Tensor]:
    """(hair, head, face) [B, 1, H, W] bool of a collated batch, from its parsing labels; without
    parsing (a subject trained with ``require_parsing: false``) the foreground is head and face,
    and nothing is hair."""
    if "parsing" in batch:
        labels = batch["parsing"]
        return hair_mask(labels)[:, None], head_mask(labels)[:, None], face_mask(labels)[:, None]
    fg = batch["fg_mask"] > 0.5
    return torch.zeros_like(fg), fg, fg
