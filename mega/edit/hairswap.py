"""Hairstyle swap (paper §5, Fig. 3a): subject A's face wearing subject B's hair.

B's canonical hair lives in B's canonical frame (B's head posed at B's canonical timestep), and
A's rigid table carries A's canonical frame onto each of A's frames (eq. 5). The swap moves B's
hair into A's canonical frame by a similarity S = (s, R_s, t_s), fitted by ICP with scaling from
B's canonical scalp vertices to A's (one head-model topology, so vertex i matches vertex i), and
then poses it with A's rigid table and drives its deformation field with A's expressions:

    x = R_A (s R_s x_B + t_s) + t_A + s · δx_B(x_B, ψ_A)

B's deformation field is queried at B's own canonical positions, where it was trained; its
position offsets grow by s, as do the Gaussians' scales (log-scale + log s); orientations turn
with R_A R_s. At evaluation the occlusion test reads the 1st near-z, not the 2nd: the authors do
so when swapping (``render_funny.py``), since the new hair was never trained against this face.

The authors compute the transform of the other subject's hair from the target head's scalp with
their affine fit; we fit a similarity (rotation, translation and one scale: no shear).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mega.avatar import Avatar, RigidTable
from mega.errors import DataError
from mega.face.frames import FrameParameters
from mega.hair.config import HairConfig
from mega.hair.deform import DeformationField
from mega.hair.model import GaussianHair
from mega.hair.rigid import read_hair_rigid, rigid_icp, scalp_vertices
from mega.train.joint import hair_parts, load_avatar, read_avatar_checkpoints

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Similarity:
    """x ↦ scale · rotation @ x + translation (metres)."""

    scale: float
    rotation: np.ndarray  # [3, 3]
    translation: np.ndarray  # [3] metres
    rmse_m: float  # scalp residual after alignment

    def apply(self, points: np.ndarray) -> np.ndarray:
        """points [N, 3] metres → [N, 3] metres."""
        return self.scale * points @ self.rotation.T + self.translation

    def to_dict(self) -> dict:
        return {"scale": self.scale, "rotation": self.rotation.tolist(), "translation_m": self.translation.tolist(),
                "scalp_rmse_mm": self.rmse_m * 1e3}


def align_scalps(scalp_b: np.ndarray, scalp_a: np.ndarray, max_distance_m: float = 0.01) -> Similarity:
    """The similarity carrying B's canonical scalp vertices [S, 3] onto A's [S, 3] (ICP with
    scaling, open3d, started from the closed-form fit of the corresponding vertices)."""
    if scalp_a.shape != scalp_b.shape:
        raise DataError(f"the two subjects' scalps have {scalp_b.shape[0]} and {scalp_a.shape[0]} vertices: "
                        f"their avatars were made with different head models, which cannot exchange hair")
    A, t, rmse_m = rigid_icp(scalp_b, scalp_a, max_distance_m, with_scaling=True)
    scale = float(np.cbrt(np.linalg.det(A)))
    return Similarity(scale, A / scale, t, rmse_m)


class ScaledDeformation(nn.Module):
    """B's deformation field for hair scaled by ``scale``: queried at the unscaled (B's own)
    canonical positions, its position offsets scaled. Same outputs as
    :class:`mega.hair.deform.DeformationField`."""

    def __init__(self, field: nn.Module, scale: float):
        super().__init__()
        self.field, self.scale = field, scale

    def forward(self, canonical_means: Tensor, expression: Tensor) -> dict[str, Tensor]:
        offsets = dict(self.field(canonical_means / self.scale, expression))
        offsets["means"] = offsets["means"] * self.scale
        return offsets


class SwappedRigid(nn.Module):
    """A's rigid table after the similarity's rotation and translation (its scale is in the hair):
    forward(timestep [B]) → rotation [B, 3, 3], translation [B, 3], like :class:`RigidTable`."""

    def __init__(self, rigid_a: RigidTable, similarity: Similarity):
        super().__init__()
        self.rigid = rigid_a
        self.register_buffer("rotation", torch.as_tensor(similarity.rotation, dtype=torch.float32), persistent=False)
        self.register_buffer("translation", torch.as_tensor(similarity.translation, dtype=torch.float32),
                             persistent=False)

    def forward(self, timestep: Tensor) -> tuple[Tensor, Tensor]:
        rotation, translation = self.rigid(timestep)
        return rotation @ self.rotation, rotation @ self.translation + translation


def scaled_hair(hair: GaussianHair, scale: float) -> GaussianHair:
    """A copy of ``hair`` scaled by ``scale`` about the origin: positions and Gaussian sizes."""
    out = copy.deepcopy(hair)
    with torch.no_grad():
        out.params["means"].mul_(scale)
        out.params["scales"].add_(math.log(scale))
    return out


def swap_hair(avatar_a: Avatar, avatar_b: Avatar, rigid_a: RigidTable, similarity: Similarity
              ) -> tuple[Avatar, SwappedRigid]:
    """A's face with B's hair: the avatar to render with A's FLAME parameters, and the rigid
    table to pose its hair with (in place of A's)."""
    deformation = None if avatar_b.deformation is None else ScaledDeformation(avatar_b.deformation, similarity.scale)
    swapped = Avatar(avatar_a.face, scaled_hair(avatar_b.hair, similarity.scale), deformation, avatar_b.config,
                     evaluation_near_z=0)
    return swapped.eval(), SwappedRigid(rigid_a, similarity).to(rigid_a.rotation.device)


def load_hair_of(run_dir: str | Path, head, device: torch.device) -> tuple[GaussianHair, DeformationField, HairConfig,
                                                                          int]:
    """B's side of a swap from its run folder: the canonical hair (hair.pt), the deformation field
    and hair settings (joint.pt), and its canonical timestep. B's face is not loaded."""
    joint, hair_state, joint_path = read_avatar_checkpoints(run_dir, head, device)
    hair, deformation, config = hair_parts(joint, hair_state, joint_path, device)
    return hair, deformation, config, int(hair_state["canonical_timestep"])


@dataclass
class SwappedAvatar:
    """What rendering a swap needs: A's own avatar, A wearing B's hair (posed by ``rigid``), A's
    per-frame FLAME parameters and A's rigid table, and the fitted similarity."""

    original: Avatar
    swapped: Avatar
    frames: FrameParameters
    rigid_a: RigidTable
    rigid: SwappedRigid
    similarity: Similarity


def load_swap(face_run: str | Path, face_union: str | Path, face_rigid: str | Path, hair_run: str | Path,
              hair_union: str | Path, head, device: torch.device) -> SwappedAvatar:
    """A (face_*: its run folder, UNION folder and hair_rigid.npz) wearing B's hair (hair_*: its
    run folder and UNION folder), under the base ``head`` model both were trained with."""
    avatar_a, frames, _ = load_avatar(face_run, head, device)
    # A's rigid table and the canonical frame it maps from, read once.
    table = read_hair_rigid(face_rigid)
    rigid_a = RigidTable(table["timestep"], table["rotation"], table["translation"]).to(device)
    canonical_a = table["canonical_timestep"]
    hair_b, deformation_b, config_b, canonical_b = load_hair_of(hair_run, head, device)
    _, scalp_a, _ = scalp_vertices(face_union, head, timesteps=[], canonical_timestep=canonical_a)
    _, scalp_b, _ = scalp_vertices(hair_union, head, timesteps=[], canonical_timestep=canonical_b)
    similarity = align_scalps(scalp_b, scalp_a)
    log.info("hair swap: B's scalp onto A's by scale %.4f, scalp RMSE %.3f mm", similarity.scale,
             similarity.rmse_m * 1e3)
    swapped, rigid = swap_hair(avatar_a, Avatar(avatar_a.face, hair_b, deformation_b, config_b), rigid_a, similarity)
    return SwappedAvatar(avatar_a, swapped, frames, rigid_a, rigid, similarity)
