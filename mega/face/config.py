"""Settings of the neural mesh face and its training stage (Table 2's variants override them: config/ablations.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from mega.errors import ConfigError
from mega.settings import Settings, check_one_of


DECODER_PRECISIONS = ("float32", "bfloat16", "float16")
HAIR_TARGETS = ("white", "white_on_scalp")


@dataclass(frozen=True)
class FaceConfig(Settings):
    """Defaults are the authors' for real data (550 × 802 images, 1024² textures).

    The synthetic default subject overrides the sizes in the workflow config (``synthetic.face``).
    """

    kind = "face settings"

    # Geometry
    subdivision: bool = True
    """Four-way subdivision of the head model (off in the ``nosubdiv`` variant)."""
    teeth: bool = True
    displacement: bool = True
    """UV displacement map (off in the ``nodisp`` variant)."""
    disp_size: int = 256
    """Side of the displacement map, texels (8 · 2^k)."""
    disp_scale_m: float = 0.001
    """Decoder output × this = offset in metres."""
    # Appearance
    tex_size: int = 1024
    """Side of the neural textures, texels (8 · 2^k)."""
    tex_channels: int = 12
    view_texture: bool = True
    """View-conditioned texture T_v (off in the ``noview`` variant)."""
    dynamic_texture: bool = True
    """Expression-conditioned texture T_dy (off in the ``nodyn`` variant)."""
    uv_encoding_size: int = 10000
    """Entries of each learned 1-D UV encoding (the authors' LPE)."""
    pixel_decoder_omega: float = 30.0
    """ω0 of the SIREN pixel decoder's sine layers (SIREN's and the authors' 30)."""
    # Optimisation
    epochs: int = 49
    """Passes over the training images: the authors' stage boundary at epoch 50 leaves 49 epochs
    to stage 1 (the steps follow from the subject's size: epochs × ⌊images / batch⌋)."""
    iterations: int = 0
    """A fixed number of steps instead (0: from ``epochs``)."""
    batch_size: int = 16
    learning_rate: float = 1e-3
    """Textures, decoders and the UV encoding."""
    lr_pixel_decoder: float = 1e-3
    """The SIREN pixel decoder (its sine layers do not tolerate the larger rates textures do)."""
    lr_final_ratio: float = 1.0
    """Every rate decays exponentially to this fraction of itself at the last step (1 = constant,
    as the authors train)."""
    lr_shape: float = 1e-5
    lr_expr: float = 1e-3
    lr_pose: float = 1e-5
    lr_translation: float = 1e-6
    optimize_flame: bool = True
    seed: int = 42
    require_parsing: bool = True
    """Without face parsing the hair cannot be told from the head, and the mesh is fitted to the
    hair's silhouette. False trains such a subject anyway, with a warning."""
    hair_target: str = "white"
    """What the photometric terms ask of the mesh where the parsing says hair: ``white`` (the
    authors': the hair's pixels white in the target, so everything under the hair learns white)
    or ``white_on_scalp`` (white over scalp triangles and off the mesh; no target over the other
    triangles, where long hair hides the forehead, cheeks and neck: the face there learns only
    from the views that see it, instead of white from the views that do not)."""
    # Loss weights (eq. 11) and the depth gate
    w_rgb: float = 1.0
    w_ssim: float = 0.2
    w_diffuse_rgb: float = 3.0
    w_depth: float = 1.0
    w_normal: float = 2.0
    w_laplacian: float = 150.0
    w_normal_consistency: float = 0.1
    w_edges: float = 300.0
    w_scalp_shrink: float = 1.0
    depth_gate_mm: float = 5.0
    # Bookkeeping
    checkpoint_every: int = 500
    val_views: int = 4
    """Validation views saved as images at the end."""
    cache_mb: int = 2048
    """Without data workers, decoded training samples kept in memory up to this size; the rest
    is read from disk."""
    data_workers: int = 4
    """DataLoader processes decoding images ahead of the step (0: decode in the training process)."""
    backend: str = "auto"
    """Mesh rasterizer: auto | torch | cuda."""
    decoder_precision: str = "float32"
    """The view and dynamic texture decoders' arithmetic: float32, or bfloat16 / float16 under
    autocast (their outputs return to float32; the displacement decoder, the pixel decoder's
    sines and all rendering stay in float32)."""

    def check(self, where: str = "face settings") -> None:
        for name in ("tex_size", "disp_size"):
            size = getattr(self, name)
            if size < 16 or size % 8 or (size // 8) & (size // 8 - 1):
                raise ConfigError(f"{where}: '{name}' = {size} must be 8 · 2^k with k ≥ 1 (16, 32, ..., 1024)")
        for name in ("epochs", "batch_size", "checkpoint_every", "uv_encoding_size", "tex_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}: '{name}' must be at least 1, got {getattr(self, name)}")
        for name in ("iterations", "data_workers", "cache_mb"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}: '{name}' must be 0 or more, got {getattr(self, name)}")
        if self.backend not in ("auto", "torch", "cuda"):
            raise ConfigError(f"{where}: 'backend' must be auto, torch or cuda, got {self.backend!r}")
        check_one_of(self, where, "hair_target", HAIR_TARGETS)
        check_one_of(self, where, "decoder_precision", DECODER_PRECISIONS)

    def steps_for(self, n_images: int) -> int:
        """Training steps for a subject of ``n_images`` training images."""
        if self.iterations:
            return self.iterations
        return self.epochs * max(n_images // min(self.batch_size, n_images), 1)
