"""The texture-painting optimisation's settings (:mod:`mega.edit.paint`), apart from it so that the
workflow can check a config's paint settings without loading torch."""

from __future__ import annotations

from dataclasses import dataclass

from mega.errors import ConfigError
from mega.settings import Settings, check_at_least


@dataclass(frozen=True)
class PaintConfig(Settings):
    """Settings of the painting optimisation (the authors' rates; steps from config)."""

    kind = "paint settings"

    iterations: int = 2000
    batch_size: int = 2  # other views a step, beside the painted one
    lr_texture: float = 0.01
    lr_pixel_decoder: float = 1e-4
    keep_weight: float = 1.0  # λ_keep
    texel_keep_weight: float = 30.0  # λ_texel
    texel_keep_samples: int = 65536  # unpainted texels decoded per view a step (all when fewer)
    painted_texel_weight: float = 1.0  # λ_paint: the painted texels decode to the paint in other views
    seed: int = 0
    checkpoint_every: int = 200

    def check(self, where: str) -> None:
        check_at_least(self, where, 1, "iterations", "batch_size", "texel_keep_samples", "checkpoint_every")
        check_at_least(self, where, 0, "keep_weight", "texel_keep_weight", "painted_texel_weight", "seed")
        for name in ("lr_texture", "lr_pixel_decoder"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{where}: '{name}' must be positive, got {getattr(self, name)}")
