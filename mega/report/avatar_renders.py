"""Render a trained avatar on the cameras and FLAME parameters of a split, to image files.

Per image ``<index>_<timestep>_<camera>``: ``.blend.png`` (eq. 7), ``.face.png``, ``.hair.png``
(over white), ``.hair_alpha.png``, ``.hair_weight.png`` (Â_hair), ``.occlusion.png`` (M_o) and
``.depth.npz`` (face and hair depths, metres, 0 / inf where nothing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mega.atomic import atomic_path
from mega.avatar import RigidTable
from mega.train.joint import load_avatar
from mega.data.gaussian_avatars import SubjectDataset, collate_samples, to_device
from mega.eval.face import driving_parameters


def _write_png(path: Path, image: torch.Tensor) -> None:
    """image [C, H, W] in [0, 1], C = 1 or 3."""
    array = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(tmp, format="PNG")


@torch.no_grad()
def render_split(run_dir: str | Path, head, union_dir: str | Path, split: str, rigid_path: str | Path,
                 out_dir: str | Path, device: torch.device, limit: int | None = None, batch_size: int = 4) -> list[Path]:
    """Render every image of ``split`` (the first ``limit``) with the tracked expression and pose
    and the refined shape; returns the blended images' paths."""
    avatar, frames, _ = load_avatar(run_dir, head, device)
    rigid = RigidTable.from_file(rigid_path).to(device)
    return render_avatar_split(avatar, frames, rigid, union_dir, split, out_dir, device, limit, batch_size)


@torch.no_grad()
def render_avatar_split(avatar, frames, rigid, union_dir: str | Path, split: str, out_dir: str | Path,
                        device: torch.device, limit: int | None = None, batch_size: int = 4,
                        progress: bool = True) -> list[Path]:
    """:func:`render_split` of an avatar in memory (an edited one), posed by ``rigid`` (a
    :class:`RigidTable` or anything that maps timesteps to rotations and translations)."""
    dataset = SubjectDataset(union_dir, split, parsing="off", depth="off")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for first in tqdm(range(0, n, batch_size), desc=f"render {split}", unit="batch", disable=not progress):
        indices = list(range(first, min(first + batch_size, n)))
        batch = to_device(collate_samples([dataset[i] for i in indices]), device)
        rotation, translation = rigid(batch["timestep_index"])
        out = avatar(driving_parameters(frames, batch, refined=False), batch["camera"], rotation, translation,
                     evaluation=True)
        for b, index in enumerate(indices):
            stem = out_dir / f"{index:05d}_{int(batch['timestep_index'][b]):05d}_{int(batch['camera_index'][b]):02d}"
            images = {"blend": out["rgb"][b], "face": out["face"]["rgb"][b], "hair": out["hair"]["rgb"][b],
                      "hair_alpha": out["hair"]["alpha"][b], "hair_weight": out["hair_weight"][b],
                      "occlusion": out["occlusion"][b]}
            for name, image in images.items():
                _write_png(Path(f"{stem}.{name}.png"), image)
            with atomic_path(Path(f"{stem}.depth.npz")) as tmp:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, face_m=out["face"]["depth"][b, 0].cpu().numpy(),
                                        hair_near_z_m=out["hair"]["near_z"][b].cpu().numpy(),
                                        hair_alpha_depth_m=out["hair"]["depth"][b, 0].cpu().numpy())
            written.append(Path(f"{stem}.blend.png"))
    return written
