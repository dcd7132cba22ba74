"""A MeGA avatar you can render: the neural mesh face, the canonical Gaussian hair with its rigid
alignment and deformation field, and the occlusion-aware blend.

:class:`Avatar` is what the joint stage trains, what evaluation and videos render and what
editing changes; :func:`mega.train.joint.load_avatar` builds one from a run folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mega.blend import blend_renders, evaluation_blend_text
from mega.data.camera import Camera
from mega.errors import DataError
from mega.face.model import NeuralFace
from mega.hair.config import HairConfig
from mega.hair.deform import posed_hair
from mega.hair.model import GaussianHair
from mega.hair.render import render_hair
from mega.render.sh import num_sh_coefficients


class RigidTable(nn.Module):
    """Per-timestep rigid transforms of the hair (eq. 5): rotation [T, 3, 3], translation [T, 3],
    looked up by timestep index like :class:`FrameParameters`."""

    def __init__(self, timestep: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
                 source: str = "the hair_rigid.npz"):
        super().__init__()
        self.source = source  # the file the table came from, for errors
        n = int(np.max(timestep)) + 1
        R = torch.eye(3).repeat(n, 1, 1)
        t = torch.zeros(n, 3)
        R[torch.as_tensor(timestep)] = torch.as_tensor(rotation, dtype=torch.float32)
        t[torch.as_tensor(timestep)] = torch.as_tensor(translation, dtype=torch.float32)
        known = torch.zeros(n, dtype=torch.bool)
        known[torch.as_tensor(timestep)] = True
        self.register_buffer("rotation", R, persistent=False)
        self.register_buffer("translation", t, persistent=False)
        self.register_buffer("known", known, persistent=False)

    @classmethod
    def from_file(cls, path: str | Path) -> "RigidTable":
        from mega.hair.rigid import read_hair_rigid

        rigid = read_hair_rigid(path)
        return cls(rigid["timestep"], rigid["rotation"], rigid["translation"], source=str(path))

    def forward(self, timestep: Tensor) -> tuple[Tensor, Tensor]:
        timestep = timestep.to(self.known.device)
        if timestep.max() >= self.known.shape[0] or not bool(self.known[timestep].all()):
            missing = sorted({int(t) for t in timestep.tolist()
                              if t >= self.known.shape[0] or not bool(self.known[t])})
            raise DataError(f"{self.source}: no rigid hair transform for timesteps {missing} (it has "
                            f"{int(self.known.sum())} timesteps): it was made for another subject or split; "
                            f"make it again (mega hair-rigid)")
        return self.rotation[timestep], self.translation[timestep]


class Avatar(nn.Module):
    """forward(flame, cameras, rotation, translation) → every image of the hybrid for a batch:

        face       the face's outputs (rgb, rgb_diffuse, mask, depth, vertices, ...) [B, ...]
        hair       the hair's outputs (rgb over white, alpha, depth, near_z [B, 3, H, W], ...)
        rgb        [B, 3, H, W] the blended image (eq. 7)
        hair_weight [B, 1, H, W] Â_hair;  occlusion [B, 1, H, W] M_o before the blur
        offsets    the deformation field's outputs (None without one)
        gaussians  the posed, activated hair [B, N, ...]

    ``config.occlusion_depth`` is near-z (the method) or the alpha-weighted depth (``gsdepth``);
    ``config.early_stop_gap_mm`` = inf renders without early stopping (``allgs``). ``evaluation``
    uses the 2nd near-z (``evaluation_near_z`` = 1; a swapped hairstyle uses the 1st) and cleans
    the mask, as the authors evaluate.
    """

    def __init__(self, face: NeuralFace, hair: GaussianHair, deformation: nn.Module | None,
                 config: HairConfig, evaluation_near_z: int = 1):
        super().__init__()
        self.face, self.hair, self.deformation = face, hair, deformation
        self.config = config
        self.evaluation_near_z = evaluation_near_z

    def evaluation_blend(self) -> str:
        """How :meth:`forward` blends with ``evaluation`` set, in words (for the metrics files)."""
        c = self.config
        return evaluation_blend_text(self.evaluation_near_z, c.occlusion_open_px, c.occlusion_close_px, c.blur_kernel,
                                     c.blur_sigma)

    def hair_of(self, flame: dict[str, Tensor], rotation: Tensor, translation: Tensor,
                sh_coefficients: int | None = None) -> tuple[dict, dict | None]:
        """The posed hair of B frames (:func:`posed_hair`) and the field's offsets (None without
        a field); ``sh_coefficients``: keep only the first K (None = all, as exports want)."""
        offsets = None
        if self.deformation is not None:
            offsets = self.deformation(self.hair.params["means"], flame["expr"])
        return posed_hair(self.hair, rotation, translation, offsets, sh_coefficients), offsets

    def forward(self, flame: dict[str, Tensor], cameras: Camera, rotation: Tensor, translation: Tensor,
                evaluation: bool = False, face: dict | None = None, face_geometry: dict | None = None) -> dict:
        """``face`` reuses a face render of the same batch (the canonical-hair stage renders the
        fixed face once); ``face_geometry`` the geometry's part of one
        (:meth:`NeuralFace.render_geometry`: the joint stage, whose face geometry is frozen)."""
        c = self.config
        face = self.face(flame, cameras, face_geometry) if face is None else face
        # Hair that is not trained here (joint stage, evaluation) carries only the coefficients the
        # render reads: B copies of the higher ones, and the zero-filled gradients of each image's
        # slice of them, were among a joint step's largest costs (docs/benchmarks.md). While they
        # train, all stay, so that their optimiser state is 3DGS's.
        trained = torch.is_grad_enabled() and self.hair.params["shN"].requires_grad
        k = None if trained else num_sh_coefficients(int(self.hair.active_degree))
        gaussians, offsets = self.hair_of(flame, rotation, translation, k)
        hair = render_hair(gaussians, cameras, int(self.hair.active_degree), c.early_stop_gap_m, c.near_z_alpha,
                           c.gaussian_backend, c.hair_supersample, c.hair_rasterize_mode)
        blended = blend_renders(face, hair, c.occlusion_depth, evaluation, c.blur_kernel, c.blur_sigma,
                                self.evaluation_near_z, c.occlusion_open_px, c.occlusion_close_px, c.hair_compositing)
        return {"face": face, "hair": hair, **blended, "offsets": offsets, "gaussians": gaussians}
