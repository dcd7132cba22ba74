"""Settings of the Gaussian hair, the blending and the canonical-hair and joint stages.

Defaults are the authors' for real data (their 306 configuration; see docs/hair.md for the
sources). The synthetic default subject overrides the sizes in the workflow config
(``synthetic.hair``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mega.errors import ConfigError
from mega.render.backends import GAUSSIAN_BACKENDS, RASTERIZE_MODES
from mega.settings import Settings, check_at_least, check_one_of

INIT_COLOURS = ("random", "views")
HAIR_FRAMES = ("canonical", "all")
"""canonical: the canonical-hair stage trains on the one-frame split (the paper's); all: on every
training frame, each frame's hair placed by its rigid transform alone (a departure, docs/hair.md)."""

DEFORM_PRECISIONS = ("float32", "bfloat16", "auto")
"""float32: the authors'; bfloat16: the matrix products and activations under bfloat16 autocast
(weights, inputs and outputs stay float32); auto: bfloat16 on CPUs with bfloat16 arithmetic
units (AVX-512 BF16, AMX), float32 elsewhere (on CUDA the float32 step was the faster one,
docs/benchmarks.md)."""
COMPOSITINGS = ("authors", "over")
"""How eq. 7 lays the hair over the face (:func:`mega.blend.blend`)."""
JOINT_HAIR_TERMS = ("hair_rgb", "hair_ssim", "silhouette")
"""The canonical-hair stage's terms (eq. 12, 13) the joint stage may keep (``joint_hair_terms``)."""


@dataclass(frozen=True)
class HairConfig(Settings):
    kind = "hair settings"

    # ---- initialisation (paper §3.2; the authors sample 50k on + 100k off the scalp)
    init_on_scalp: int = 50_000
    """Points sampled uniformly on the scalp triangles of the canonical mesh."""
    init_off_scalp: int = 100_000
    """Points pushed off the scalp along the normal, by up to ``init_offset_m`` per axis."""
    init_offset_m: float = 0.02
    init_in_hull: int = 0
    """Points drawn in the visual hull of the canonical views' hair masks (0: the authors' scalp
    sampling alone; a departure, docs/hair.md)."""
    init_hull_margin_m: float = 0.1
    """The box the hull points are drawn in: the canonical mesh's bounding box grown by this."""
    init_hull_connected: bool = True
    """Keep only the hull points joined to the scalp through the hull (hair grows from the scalp;
    with few views the hull has ghosts off the head, which become floaters in novel views)."""
    init_colour: str = "random"
    """random (the authors') or views: each point the mean colour of the hair pixels it projects
    to in the canonical views (3DGS's practice; a departure, docs/hair.md)."""
    init_opacity: float = 0.1
    hairless_below: float = 0.01
    """A subject whose canonical views' parsing calls less than this share of the object's pixels
    (head and hair) hair is hairless: the canonical-hair stage keeps no Gaussian and trains nothing,
    and the avatar is its face (the authors' bald subject 218 has no hair stage). 0: always train
    the hair."""
    sh_degree: int = 3
    sh_degree_every: int = 1000
    """Steps between raising the active spherical-harmonics degree by one (3DGS)."""

    # ---- canonical-hair stage (the one-frame split; the face from stage 1 fixed)
    hair_epochs: int = 3000
    """Passes over the one-frame split's images: the authors' epochs 5000–8000 of their hair run."""
    hair_iterations: int = 0
    """A fixed number of steps instead (0: from ``hair_epochs``)."""
    hair_frames: str = "canonical"
    """The frames the stage's images come from: canonical (the one-frame split, the paper's) or
    all (the training split: every training camera at every training timestep, the hair moved
    rigidly with the head; for hair that does not move on the head; a departure, docs/hair.md).
    The number of steps is counted on the one-frame split either way."""
    hair_batch_size: int = 8
    lr_position: float = 1.6e-4
    """× the scene extent (3DGS's ``spatial_lr_scale``), decaying to ``lr_position_final``."""
    lr_position_final: float = 1.6e-6
    lr_position_steps: int = 30_000
    """3DGS's decay horizon; a shorter stage stops part way along the same curve."""
    lr_sh: float = 2.5e-3
    """Degree-0 coefficients; the higher degrees use a twentieth of it."""
    lr_opacity: float = 0.05
    lr_scaling: float = 5e-3
    lr_rotation: float = 1e-3
    # Densification, in training images as the authors count them (converted to steps).
    densify_from_images: int = 500
    densify_every_images: int = 200
    densify_until_images: int = 100_000_000
    opacity_reset_every_images: int = 3000
    densify_grad_threshold: float = 2e-4
    """Mean screen-space gradient, in normalised device coordinates (3DGS's units)."""
    percent_dense: float = 0.002
    """Gaussians smaller than this × the scene extent are cloned, larger ones split."""
    prune_opacity: float = 0.005
    prune_scale: float = 0.1
    """Gaussians larger than this × the scene extent are pruned, from ``prune_large_from_images``."""
    prune_large_from_images: int = 0
    """When the pruning of large Gaussians starts, in training images (0: after the first opacity
    reset interval, as 3DGS and gsplat tie it to the reset)."""
    w_hair_rgb: float = 1.0
    w_hair_ssim: float = 0.2
    w_silhouette: float = 0.2
    w_solid: float = 0.1
    erode_px: int = 5
    """Side of the square that erodes the hair mask for the solid-hair loss."""

    # ---- joint stage (eq. 15)
    joint_epochs: int = 31
    """Passes over all training images: the authors' epochs 50–80."""
    joint_iterations: int = 0
    joint_batch_size: int = 16
    deform_layers: tuple[int, ...] = (256, 256)
    deform_frequencies: int = 6
    deform_scale: float = 1e-3
    """The deformation MLP's outputs × this."""
    deform_precision: str = "float32"
    """The deformation field's arithmetic: float32 (the authors'), bfloat16, or auto (bfloat16 on
    CPUs with bfloat16 units; docs/hair.md)."""
    lr_deform: float = 1e-3
    joint_face_lr_final_ratio: float = 1.0
    """The face's rates in the joint stage decay exponentially to this fraction of themselves at
    its last step (1 = constant, the authors'); the deformation field's stays constant."""
    joint_hair_appearance_lr_ratio: float = 0.0
    """The canonical hair's colour (SH) and opacity train in the joint stage at this fraction of
    the canonical-hair stage's rates (0 = frozen, the authors'; a departure, docs/hair.md)."""
    joint_hair_geometry_lr_ratio: float = 0.0
    """The canonical hair's positions, orientations and sizes train in the joint stage at this
    fraction of the canonical-hair stage's starting rates (0 = frozen, the authors'; a departure)."""
    aiap_neighbours: int = 8
    w_rgb: float = 1.0
    w_ssim: float = 0.2
    w_diffuse_rgb: float = 3.0
    """× w_rgb: the diffuse-only face render against the ground truth without hair."""
    w_offsets: float = 10.0
    """Each of the rotation, scale, opacity and colour offsets."""
    joint_face_on_hair: bool = True
    """Whether the blended image's terms reach the face on the ground truth's hair pixels (eq. 15:
    yes; where the hair does not cover them, the face's textures then learn hair colour)."""
    joint_hair_terms: tuple[str, ...] = ()
    """The canonical-hair stage's terms the joint stage keeps, at their weights: any of hair_rgb,
    hair_ssim, silhouette (the authors' code keeps all three; eq. 15, followed by default, lists
    none; docs/hair.md)."""
    w_aiap_xyz: float = 1000.0
    w_aiap_cov: float = 1e5

    # ---- blending (paper §3.3)
    near_z_alpha: float = 0.05
    early_stop_gap_mm: float = 100.0
    occlusion_depth: str = "near_z"
    """The hair depth of the occlusion test: near_z (the method) or alpha_depth (``gsdepth``)."""
    blur_kernel: int = 5
    blur_sigma: float = 1.5
    """G(M_o): a ``blur_kernel``² Gaussian of ``blur_sigma`` pixels (the authors', at 550 × 802)."""
    occlusion_open_px: int = 3
    occlusion_close_px: int = 5
    """At evaluation M_o is opened then closed by squares of these sides, in pixels (the authors',
    at 550 × 802; 1 leaves the step out)."""
    hair_compositing: str = "authors"
    """How eq. 7 lays the hair over the face: authors (Â_hair · Î_hair + (1 − Â_hair) · Î_head, the
    hair over white, as eq. 7) or over (the hair's premultiplied colour over the face, a departure:
    the authors' lets white through translucent hair; :func:`mega.blend.blend`, docs/hair.md)."""
    hair_supersample: int = 1
    """The hair is drawn at this factor of the image size and box-filtered down, in training and
    evaluation (1: at the image size, as the authors; a departure, docs/hair.md)."""
    hair_rasterize_mode: str = "classic"
    """How the hair's Gaussians cover pixels: classic (3DGS: each dilated by 0.3 px² at its full
    opacity, the authors') or antialiased (the dilation keeps each Gaussian's mass, gsplat's mode of
    that name; a departure, docs/hair.md), in training and evaluation."""
    gaussian_backend: str = "auto"
    """The Gaussian rasterizer: torch, triton (the tiled kernels; CUDA), numba (compiled CPU loops),
    or auto (numba on the CPU, triton on CUDA)."""

    # ---- bookkeeping
    seed: int = 42
    checkpoint_every: int = 500
    val_views: int = 4
    cache_mb: int = 2048
    data_workers: int = 4

    def check(self, where: str) -> None:
        check_at_least(self, where, 1, "hair_epochs", "hair_batch_size", "joint_epochs", "joint_batch_size",
                       "sh_degree_every", "densify_every_images", "opacity_reset_every_images", "checkpoint_every",
                       "deform_frequencies", "aiap_neighbours", "erode_px", "lr_position_steps",
                       "hair_supersample")
        check_at_least(self, where, 0, "init_on_scalp", "init_off_scalp", "init_in_hull", "hair_iterations",
                       "prune_large_from_images",
                       "joint_iterations", "data_workers", "cache_mb", "val_views")
        if self.init_on_scalp + self.init_off_scalp + self.init_in_hull < 1:
            raise ConfigError(f"{where}: 'init_on_scalp' + 'init_off_scalp' + 'init_in_hull' must be at least 1")
        check_one_of(self, where, "init_colour", INIT_COLOURS)
        check_one_of(self, where, "hair_frames", HAIR_FRAMES)
        if self.init_hull_margin_m < 0:
            raise ConfigError(f"{where}: 'init_hull_margin_m' must be at least 0, got {self.init_hull_margin_m}")
        if not 0 <= self.sh_degree <= 3:
            raise ConfigError(f"{where}: 'sh_degree' must be 0..3, got {self.sh_degree}")
        if not 0 <= self.hairless_below <= 1:
            raise ConfigError(f"{where}: 'hairless_below' must be a share in [0, 1], got {self.hairless_below}")
        if not 0 < self.init_opacity < 1:
            raise ConfigError(f"{where}: 'init_opacity' must be in (0, 1), got {self.init_opacity}")
        if self.occlusion_depth not in ("near_z", "alpha_depth"):
            raise ConfigError(f"{where}: 'occlusion_depth' must be near_z or alpha_depth, got {self.occlusion_depth!r}")
        check_one_of(self, where, "hair_rasterize_mode", RASTERIZE_MODES)
        check_one_of(self, where, "hair_compositing", COMPOSITINGS)
        check_one_of(self, where, "gaussian_backend", GAUSSIAN_BACKENDS)
        if not self.blur_sigma > 0:
            raise ConfigError(f"{where}: 'blur_sigma' must be positive (pixels), got {self.blur_sigma}")
        for name in ("blur_kernel", "occlusion_open_px", "occlusion_close_px"):
            if getattr(self, name) < 1 or getattr(self, name) % 2 == 0:
                raise ConfigError(f"{where}: '{name}' must be an odd number of pixels (1, 3, 5, ...), "
                                  f"got {getattr(self, name)}")
        check_one_of(self, where, "deform_precision", DEFORM_PRECISIONS)
        for name in ("joint_hair_appearance_lr_ratio", "joint_hair_geometry_lr_ratio"):
            if not 0 <= getattr(self, name) <= 10:
                raise ConfigError(f"{where}: '{name}' must be in [0, 10], got {getattr(self, name)}")
        if not 0 < self.joint_face_lr_final_ratio <= 1:
            raise ConfigError(f"{where}: 'joint_face_lr_final_ratio' must be in (0, 1], "
                              f"got {self.joint_face_lr_final_ratio}")
        unknown = [name for name in self.joint_hair_terms if name not in JOINT_HAIR_TERMS]
        if unknown or len(set(self.joint_hair_terms)) < len(self.joint_hair_terms):
            raise ConfigError(f"{where}: 'joint_hair_terms' must list distinct names among "
                              f"{', '.join(JOINT_HAIR_TERMS)}, got {list(self.joint_hair_terms)}")
        if not self.deform_layers or min(self.deform_layers) < 1:
            raise ConfigError(f"{where}: 'deform_layers' must list at least one positive width")

    # ---- derived
    def hair_steps_for(self, n_images: int) -> int:
        """Steps of the canonical-hair stage: as many images as the authors' epochs show."""
        if self.hair_iterations:
            return self.hair_iterations
        return max(math.ceil(self.hair_epochs * n_images / min(self.hair_batch_size, n_images)), 1)

    def joint_steps_for(self, n_images: int) -> int:
        if self.joint_iterations:
            return self.joint_iterations
        return self.joint_epochs * max(n_images // min(self.joint_batch_size, n_images), 1)

    def canonical_hair_rates(self, scene_extent_m: float) -> dict[str, float]:
        """The canonical Gaussians' starting learning rates by parameter (3DGS's: the position rate
        in units of the scene extent, the higher SH coefficients at a twentieth of the DC's)."""
        return {"means": self.lr_position * scene_extent_m, "quats": self.lr_rotation, "scales": self.lr_scaling,
                "opacities": self.lr_opacity, "sh0": self.lr_sh, "shN": self.lr_sh / 20}

    def images_to_steps(self, images: int, batch_size: int) -> int:
        """The authors count densification in images; our schedule counts steps."""
        return max(round(images / batch_size), 1)

    @property
    def early_stop_gap_m(self) -> float:
        return self.early_stop_gap_mm / 1000.0
