"""Export of a trained avatar to standard files: the face as a textured mesh (OBJ + MTL + PNG,
:mod:`mega.face.export`) and the hair as 3D Gaussian Splatting PLYs (:mod:`mega.hair.ply`) that
3DGS viewers open: the canonical hair, and the hair of any frame (rigidly aligned and deformed).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mega.avatar import RigidTable
from mega.train.joint import load_avatar
from mega.face.export import export_face_mesh
from mega.flame.head_model import HeadModel
from mega.hair.ply import write_gaussian_ply

log = logging.getLogger(__name__)

CANONICAL_PLY = "hair_canonical.ply"


def _write_raw_hair(path: Path, means, quats, log_scales, opacity_logits, sh) -> Path:
    return write_gaussian_ply(path, means.detach(), quats.detach(), log_scales.detach(), opacity_logits.detach(),
                              sh.detach())


@torch.no_grad()
def export_avatar(run_dir: str | Path, head: HeadModel, out_dir: str | Path, rigid_path: str | Path | None = None,
                  timestep_index: int | None = None, device: str | torch.device = "cpu") -> dict[str, Path]:
    """Write ``face.obj``/``face.mtl``/``face_diffuse.png`` (the face of ``joint.pt``; the frame's
    mesh when ``timestep_index`` is given, else the canonical head) and ``hair_canonical.ply``
    (world coordinates of the canonical frame); with ``timestep_index`` also
    ``hair_t<timestep>.ply``, the hair of that frame (needs ``rigid_path``)."""
    out_dir = Path(out_dir)
    avatar, frames, _ = load_avatar(run_dir, head, device)
    paths = export_face_mesh(avatar.face, frames, timestep_index, out_dir)
    p = avatar.hair.params
    paths["hair_canonical"] = _write_raw_hair(out_dir / CANONICAL_PLY, p["means"], p["quats"], p["scales"],
                                              p["opacities"], torch.cat([p["sh0"], p["shN"]], 1))
    if timestep_index is not None:
        if rigid_path is None:
            raise ValueError("the hair of a frame needs the subject's hair_rigid.npz")
        timestep = torch.tensor([timestep_index], device=device)
        rotation, translation = RigidTable.from_file(rigid_path).to(device)(timestep)
        posed, _ = avatar.hair_of(frames(timestep), rotation, translation)
        # The PLY stores raw parameters: log scales and opacity logits.
        paths["hair_frame"] = _write_raw_hair(
            out_dir / f"hair_t{timestep_index:05d}.ply", posed["means"][0], posed["quats"][0],
            torch.log(posed["scales"][0]), torch.logit(posed["opacities"][0].clamp(1e-6, 1 - 1e-6)), posed["sh"][0])
    for name, path in paths.items():
        log.info("%s: %s", name, path)
    return paths


@torch.no_grad()
def export_gaussianavatars(run_dir: str | Path, head: HeadModel, out_dir: str | Path, timestep_index: int | None = None,
                           device: str | torch.device = "cpu") -> dict[str, Path]:
    """The GaussianAvatars baseline's Gaussians in world coordinates as a 3DGS PLY: posed on the
    mesh of frame ``timestep_index`` with its fine-tuned FLAME parameters (``gaussians_t<T>.ply``),
    or on the neutral head (the subject's shape, zero expression and pose: ``gaussians_neutral.ply``)."""
    from mega.train.gaussianavatars import load_gaussianavatars

    model, frames = load_gaussianavatars(run_dir, head, device)
    if timestep_index is None:
        flame = {"shape": frames.shape}
        name = "gaussians_neutral.ply"
    else:
        flame = frames(torch.tensor([timestep_index], device=device))
        name = f"gaussians_t{timestep_index:05d}.ply"
    world = model.gaussians.world(model.mesh(**flame), model.mesh.faces)
    raw = model.gaussians.params
    # The PLY stores raw parameters: log scales and opacity logits.
    path = _write_raw_hair(Path(out_dir) / name, world["means"][0], world["quats"][0], torch.log(world["scales"][0]),
                           raw["opacities"], world["sh"][0])
    log.info("gaussians: %s (%d)", path, model.gaussians.n)
    return {"gaussians": path}
