"""Render posed hair for a batch of cameras: the Gaussian rasterizer's images of the batch (on
the CPU composited side by side on torch's threads), outputs stacked as images, and what
densification needs kept aside."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mega.data.camera import Camera
from mega.render.gaussians import rasterize_gaussians_batch

BACKGROUND = 1.0  # the data's white background


def camera_at(cameras: Camera, i: int | Tensor) -> Camera:
    """Image ``i`` of batched cameras, or the sub-batch an index tensor picks."""
    return Camera(cameras.intrinsics[i], cameras.world_to_camera[i], cameras.width, cameras.height)


def render_hair(gaussians: dict[str, Tensor], cameras: Camera, sh_degree: int, early_stop_gap_m: float | None = 0.1,
                near_z_alpha: float = 0.05, backend: str = "auto", supersample: int = 1,
                rasterize_mode: str = "classic") -> dict:
    """gaussians: activated hair of B frames (means [B, N, 3], quats [B, N, 4], scales [B, N, 3],
    opacities [B, N], sh [B, N, K, 3]); cameras batched [B].

    Returns rgb [B, 3, H, W] over the white background, alpha [B, 1, H, W] (early-stopped),
    depth [B, 1, H, W] (alpha-weighted, metres), near_z [B, 3, H, W] (``inf`` = none), and for
    densification ``means2d`` (a list of B [N, 2] tensors whose ``.grad`` is the screen-space
    gradient after backward) and ``radii`` [B, N] pixels. An infinite early-stop gap (the
    ``allgs`` variant) turns early stopping off. ``backend``: the Gaussian rasterizer's.

    ``supersample`` s > 1 draws the hair at s × the cameras' size and box-filters the images
    down (rgb, alpha and depth averaged over each s × s block, near-z its nearest), as a camera
    integrates its pixels; ``means2d`` and ``radii`` stay in the drawn image's pixels, whose
    size ``render_size`` (width, height) gives.

    ``rasterize_mode``: ``classic`` draws every Gaussian dilated by 0.3 px² at its full opacity
    (3DGS, the authors'); ``antialiased`` scales each image's opacities so the dilation keeps the
    Gaussian's screen-space mass (gsplat's mode of that name, Mip-Splatting's 2D filter): a
    Gaussian thinner than a pixel covers the pixel partly, as a thin strand does, in whichever
    camera and at whatever distance it is seen.
    """
    if supersample > 1:
        drawn = render_hair(gaussians, cameras.resized(cameras.width * supersample, cameras.height * supersample),
                            sh_degree, early_stop_gap_m, near_z_alpha, backend, rasterize_mode=rasterize_mode)
        pooled = {k: F.avg_pool2d(drawn[k], supersample) for k in ("rgb", "alpha", "depth")}
        # The nearest significant Gaussian of the block (inf where none): what the occlusion test
        # of a pixel that any of its sub-pixels sees hair in front of the face should read.
        pooled["near_z"] = -F.max_pool2d(-drawn["near_z"], supersample)
        return {**drawn, **pooled}
    gap = None if early_stop_gap_m is None or early_stop_gap_m == float("inf") else early_stop_gap_m
    cameras = cameras.to(device=gaussians["means"].device, dtype=gaussians["means"].dtype)
    per_image = [camera_at(cameras, i) for i in range(gaussians["means"].shape[0])]
    outs = rasterize_gaussians_batch(gaussians["means"], gaussians["quats"], gaussians["scales"],
                                     gaussians["opacities"], per_image, sh=gaussians["sh"], sh_degree=sh_degree,
                                     near_z_alpha=near_z_alpha, early_stop_gap_m=gap, backend=backend,
                                     rasterize_mode=rasterize_mode)
    alpha = torch.stack([o["alpha"] for o in outs])[:, None]
    color = torch.stack([o["color"] for o in outs]).permute(0, 3, 1, 2)
    return {
        "rgb": color + (1 - alpha) * BACKGROUND,
        "alpha": alpha,
        "depth": torch.stack([o["depth"] for o in outs])[:, None],
        "near_z": torch.stack([o["near_z"] for o in outs]),
        "means2d": [o["means2d"] for o in outs],
        "radii": torch.stack([o["radii"] for o in outs]),
        "render_size": (cameras.width, cameras.height),
    }
