"""Settings of the GaussianAvatars baseline (Qian et al., CVPR 2024).

Defaults are the authors' for real data, from their code (``ShenhanQian/GaussianAvatars``,
``arguments/__init__.py`` and ``train.py``; file and line for each in docs/baselines.md). Their
schedule counts iterations of one image each; ours counts steps of ``batch_size`` images, and
converts every image count with :meth:`GaussianAvatarsConfig.images_to_steps`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mega.errors import ConfigError
from mega.render.backends import GAUSSIAN_BACKENDS
from mega.settings import Settings, check_at_least, check_one_of


@dataclass(frozen=True)
class GaussianAvatarsConfig(Settings):
    kind = "GaussianAvatars settings"

    # ---- the mesh and the initial Gaussians (one per triangle, at its centroid)
    teeth: bool = True
    """FLAME with the teeth of the enhanced mesh (the authors add teeth and do not subdivide)."""
    sh_degree: int = 3
    sh_degree_every_images: int = 1000
    init_opacity: float = 0.1

    # ---- schedule, in training images (the authors: one image an iteration)
    iterations_images: int = 600_000
    batch_size: int = 1
    densify_from_images: int = 10_000
    densify_every_images: int = 2_000
    densify_until_images: int = 600_000
    opacity_reset_every_images: int = 60_000
    densify_grad_threshold: float = 2e-4
    """Mean screen-space gradient, in normalised device coordinates (3DGS's units)."""
    percent_dense: float = 0.01
    """Gaussians whose world size is at most this × the scene extent are cloned, larger ones split."""
    prune_opacity: float = 0.005
    prune_scale: float = 0.1
    """After the first opacity reset, Gaussians larger than this × the scene extent are pruned."""

    # ---- learning rates (Adam, ε 1e-15); positions × the scene extent, decaying log-linearly
    lr_position: float = 5e-3
    lr_position_final: float = 5e-5
    lr_sh: float = 2.5e-3
    """Degree-0 coefficients; the higher degrees use a twentieth of it."""
    lr_opacity: float = 0.05
    lr_scaling: float = 0.017
    lr_rotation: float = 1e-3
    lr_flame_expr: float = 1e-3
    lr_flame_pose: float = 1e-5
    """Global rotation, neck, jaw and eyes of each frame."""
    lr_flame_translation: float = 1e-6
    finetune_flame: bool = True

    # ---- losses
    w_dssim: float = 0.2
    """(1 − w)·L1 + w·D-SSIM."""
    w_position: float = 1e-2
    position_threshold: float = 1.0
    """Local positions farther than this (units of the triangle's size) from the centroid are penalised."""
    w_scale: float = 1.0
    scale_threshold: float = 0.6
    """Local scales (units of the triangle's size) above this are penalised."""

    # ---- bookkeeping
    gaussian_backend: str = "auto"
    seed: int = 42
    checkpoint_every: int = 2000
    cache_mb: int = 2048
    data_workers: int = 4

    def check(self, where: str) -> None:
        check_at_least(self, where, 1, "iterations_images", "batch_size", "sh_degree_every_images",
                       "densify_every_images", "opacity_reset_every_images", "checkpoint_every")
        check_at_least(self, where, 0, "densify_from_images", "densify_until_images", "data_workers", "cache_mb",
                       "densify_grad_threshold", "percent_dense", "prune_opacity", "prune_scale", "w_dssim",
                       "w_position", "position_threshold", "w_scale", "scale_threshold")
        if not 0 <= self.sh_degree <= 3:
            raise ConfigError(f"{where}: 'sh_degree' must be 0..3, got {self.sh_degree}")
        if not 0 < self.init_opacity < 1:
            raise ConfigError(f"{where}: 'init_opacity' must be in (0, 1), got {self.init_opacity}")
        if self.w_dssim > 1:
            raise ConfigError(f"{where}: 'w_dssim' must be in [0, 1], got {self.w_dssim}")
        check_one_of(self, where, "gaussian_backend", GAUSSIAN_BACKENDS)

    def images_to_steps(self, images: int) -> int:
        """An image count of the authors' schedule as steps of ``batch_size`` images."""
        return max(round(images / self.batch_size), 1)

    @property
    def steps(self) -> int:
        return self.images_to_steps(self.iterations_images)
