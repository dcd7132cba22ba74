"""Occlusion-aware blending of the face and hair images (paper §3.3, eq. 7).

The occlusion mask M_o marks pixels where the hair's near-z (depth of the first Gaussian with
α > 0.05) lies in front of the mesh; pixels with no mesh count as infinitely far, pixels with
no significant Gaussian as never in front. A Gaussian blur (5 × 5, σ = 1.5) softens it, and

    Â_hair = A_g · G(M_o),   Î = Â_hair · Î_hair + (1 − Â_hair) · Î_head          (eq. 7)

with A_g the early-stopped hair alpha, Î_hair the hair rendered over the white background and
Î_head the face rendered over it. The authors write the same sum as
``head·face + hair·hair_rgb + (1 − head − hair)·white`` with ``head = clip(mesh − Â_hair, 0, 1)``;
the two agree wherever the face is white off the mesh, as ours is.

At evaluation the authors test the 2nd near-z instead of the 1st (a lone stray Gaussian in front
of the face no longer flips a pixel) and clean the mask with a morphological opening (3 × 3)
then closing (5 × 5); :func:`occlusion_mask` does both when ``evaluation`` is set. The blur and
the cleaning are in pixels of the authors' 550 × 802 images; smaller images may scale them
(the hair settings' ``blur_*`` and ``occlusion_*_px``).
The ``gsdepth`` variant of Table 2 (c) tests the alpha-weighted hair depth instead of near-z.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from kornia.filters import gaussian_blur2d
from kornia.morphology import closing, opening
from torch import Tensor

OcclusionDepth = Literal["near_z", "alpha_depth"]


def _far_where_missing(depth: Tensor, valid: Tensor) -> Tensor:
    return torch.where(valid, depth, torch.full_like(depth, math.inf))


def occlusion_mask(hair_depth: Tensor, face_depth: Tensor, face_mask: Tensor, evaluation: bool = False,
                   open_px: int = 3, close_px: int = 5) -> Tensor:
    """M_o [B, 1, H, W] float in {0, 1}: the hair is in front of the face.

    hair_depth [B, 1, H, W] metres (near-z: ``inf`` where no significant Gaussian; alpha-depth:
    0 where nothing); face_depth [B, 1, H, W] metres; face_mask [B, 1, H, W] bool (mesh covers).
    ``evaluation`` cleans it: an opening then a closing by squares of ``open_px`` and ``close_px``
    pixels (1: that step left out)."""
    hair = _far_where_missing(hair_depth, torch.isfinite(hair_depth) & (hair_depth > 0))
    face = _far_where_missing(face_depth, face_mask)
    mask = (hair < face).to(face_depth.dtype)
    if evaluation and open_px > 1:
        mask = opening(mask, mask.new_ones(open_px, open_px))
    if evaluation and close_px > 1:
        mask = closing(mask, mask.new_ones(close_px, close_px))
    return mask


def soften(mask: Tensor, kernel: int = 5, sigma: float = 1.5) -> Tensor:
    """G(M_o): the mask [B, 1, H, W] blurred by a ``kernel``² Gaussian of ``sigma`` pixels."""
    return gaussian_blur2d(mask, (kernel, kernel), (sigma, sigma))


def blend(face_rgb: Tensor, hair_rgb: Tensor, hair_alpha: Tensor, soft_occlusion: Tensor,
          compositing: str = "authors") -> tuple[Tensor, Tensor]:
    """Eq. 7. face_rgb and hair_rgb [B, 3, H, W] (each over the white background), hair_alpha
    and soft_occlusion [B, 1, H, W] → (blended image [B, 3, H, W], Â_hair [B, 1, H, W]).

    ``authors``: Â_hair · Î_hair + (1 − Â_hair) · Î_head, as eq. 7 and the authors' code. Î_hair
    is over white, so a hair pixel of alpha A and colour c shows A² c + A (1 − A) white +
    (1 − A) face: translucent hair counts its alpha twice and lets white through onto the face.
    ``over`` (a departure): the hair's own premultiplied colour Î_hair − (1 − A_g), then
    G(M_o) · that + (1 − Â_hair) · Î_head, which is A c + (1 − A) face where the hair is in
    front (G = 1), the hair render itself over the white background, and the face where G = 0."""
    hair_weight = hair_alpha * soft_occlusion
    if compositing == "over":
        return soft_occlusion * (hair_rgb - (1 - hair_alpha)) + (1 - hair_weight) * face_rgb, hair_weight
    return hair_weight * hair_rgb + (1 - hair_weight) * face_rgb, hair_weight


def occlusion_depth(hair: dict[str, Tensor], which: OcclusionDepth, evaluation: bool,
                    evaluation_near_z: int = 1) -> Tensor:
    """The hair depth the occlusion test reads [B, 1, H, W]: near-z (the 1st in training, the
    ``evaluation_near_z``-th, counted from 0, at evaluation: the 2nd, or the 1st for a swapped
    hairstyle, as the authors) or the alpha-weighted depth (``gsdepth``)."""
    if which == "alpha_depth":
        return hair["depth"]
    return hair["near_z"][:, evaluation_near_z if evaluation else 0][:, None]


def evaluation_blend_text(near_z: int, open_px: int, close_px: int, kernel: int, sigma: float) -> str:
    """The evaluation's blend in words, for the metrics files: which near-z (0–2, as the render keeps), the
    cleaning and the blur, and whether those are the authors' pixel sizes."""
    cleaning = [f"{what} {size} x {size}" for what, size in (("opened", open_px), ("closed", close_px)) if size > 1]
    authors = (open_px, close_px, kernel, sigma) == (3, 5, 5, 1.5)
    return (f"{('1st', '2nd', '3rd')[near_z]} near-z, occlusion mask "
            f"{' and '.join(cleaning) if cleaning else 'not cleaned'}, blurred {kernel} x {kernel} at sigma {sigma} px "
            f"(the authors' evaluation{'' if authors else ' at other pixel sizes'})")


def blend_renders(face: dict[str, Tensor], hair: dict[str, Tensor], which: OcclusionDepth = "near_z",
                  evaluation: bool = False, kernel: int = 5, sigma: float = 1.5,
                  evaluation_near_z: int = 1, open_px: int = 3, close_px: int = 5,
                  compositing: str = "authors") -> dict[str, Tensor]:
    """Everything of the blending for a batch: ``face`` from the neural face (rgb, mask, depth),
    ``hair`` from :func:`mega.hair.render.render_hair` (rgb over white, alpha, depth, near_z
    [B, 3, H, W]); ``open_px`` and ``close_px`` the evaluation's cleaning (:func:`occlusion_mask`);
    ``compositing`` as :func:`blend`. Returns rgb (blended), hair_weight (Â_hair), occlusion (M_o,
    before the blur) and soft_occlusion (G(M_o))."""
    depth = occlusion_depth(hair, which, evaluation, evaluation_near_z)
    occlusion = occlusion_mask(depth, face["depth"], face["mask"], evaluation, open_px, close_px)
    soft = soften(occlusion, kernel, sigma)
    rgb, weight = blend(face["rgb"], hair["rgb"], hair["alpha"], soft, compositing)
    return {"rgb": rgb, "hair_weight": weight, "occlusion": occlusion, "soft_occlusion": soft}
