"""Stage 2: the canonical Gaussian hair (paper §4, "Optimizing Canonical Gaussian Hair", eq. 14).

On the one-frame split (``transforms_onef.json``: every training camera at one timestep, the
canonical frame) the hair is initialised around the scalp of the stage-1 mesh and optimised with
densification, while the face from stage 1 stays fixed: it is rendered (without gradients) only
for the occlusion test the silhouette loss needs.

Outputs in the run folder:
    hair.pt     the canonical hair (any number of Gaussians), the settings, the canonical timestep
    hair/       checkpoint.pt, loss.csv, loss.png (the loop's), metrics.json, views.png
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from mega import losses
from mega.atomic import write_json
from mega.avatar import Avatar, RigidTable
from mega.data.gaussian_avatars import SubjectDataset, subject_extras
from mega.data.parsing import batch_regions
from mega.errors import DataError
from mega.eval.avatar import hair_iou
from mega.face.frames import FrameParameters
from mega.face.model import NeuralFace
from mega.hair.config import HairConfig
from mega.hair.densify import Densifier, DensifyState
from mega.hair.model import GaussianHair, sample_scalp_points
from mega.train.checkpoint import save_checkpoint
from mega.train.loop import LoopSettings, OnSettingsChange, ParameterGroup, pick_device, train

log = logging.getLogger(__name__)

REFERENCE_HEIGHT_PX = 802
"""Height of the images the authors' weights were chosen for (NeRSemble at half resolution)."""
LOSS_TERMS = ("hair_rgb", "hair_ssim", "silhouette", "solid")
RESUMABLE = {"hair_epochs", "hair_iterations", "checkpoint_every", "val_views", "cache_mb", "data_workers",
             "joint_epochs", "joint_iterations", "joint_batch_size", "lr_deform", "w_rgb", "w_ssim", "w_diffuse_rgb",
             "w_offsets", "w_aiap_xyz", "w_aiap_cov", "deform_layers", "deform_frequencies", "deform_scale",
             "aiap_neighbours", "gaussian_backend"}
"""Settings the canonical hair does not depend on (the joint stage's) or that may change on resume."""


def open_hair_split(union_dir: Path, split: str) -> SubjectDataset:
    """A split with its parsing: the hair stages learn the hair from the parsing's hair mask."""
    if not subject_extras(union_dir)["parsing"]:
        raise DataError(f"{union_dir}: the subject has no face parsing; the hair stages need its hair mask. Make "
                        f"the parsing of this subject first")
    if split == "onef" and not (union_dir / "transforms_onef.json").is_file():
        raise DataError(f"{union_dir / 'transforms_onef.json'}: not found; the canonical-hair stage trains on the "
                        f"one-frame split (every camera at one timestep), which the subject's export must provide")
    return SubjectDataset(union_dir, split, parsing="require", depth="off")


def scene_extent_m(dataset: SubjectDataset) -> float:
    """3DGS's ``spatial_lr_scale``: 1.1 × the largest distance of a camera from the cameras' mean."""
    centres = torch.stack([dataset.camera(i).center for i in range(len(dataset))])
    return 1.1 * float((centres - centres.mean(0)).norm(dim=1).max())


def hair_losses(out: dict, batch: dict, config: HairConfig) -> dict[str, Tensor]:
    """Eq. 14's terms, unweighted, as the authors compute them (docs/hair.md)."""
    hair_mask, _, _ = batch_regions(batch)
    hair = out["hair"]
    rendered_mask = hair["alpha"] * out["occlusion"]
    # Δ in pixels² of the authors' 802-pixel-high images, so that λ_sil weighs the same at any size.
    to_reference_px2 = (REFERENCE_HEIGHT_PX / hair_mask.shape[-2]) ** 2
    hair_rgb, hair_ssim = losses.hair_photometric(hair["rgb"], batch["image"], hair_mask)
    return {
        "hair_rgb": hair_rgb, "hair_ssim": hair_ssim,
        "silhouette": losses.silhouette_loss(rendered_mask, hair_mask,
                                             losses.hair_distance_weights(hair_mask) * to_reference_px2),
        "solid": losses.solid_hair_loss(hair["alpha"], hair_mask, config.erode_px),
    }


def hair_loss_weights(config: HairConfig) -> dict[str, float]:
    return {"hair_rgb": config.w_hair_rgb, "hair_ssim": config.w_hair_ssim, "silhouette": config.w_silhouette,
            "solid": config.w_solid}


class HairStage:
    """The canonical hair as the loop trains it: only the Gaussians learn."""

    name = "hair"
    loss_terms = LOSS_TERMS
    extra_columns = ("hair_iou", "n_gaussians")

    def __init__(self, avatar: Avatar, frames: FrameParameters, rigid: RigidTable, config: HairConfig,
                 densifier: Densifier, extent_m: float, total_steps: int):
        self.avatar, self.frames, self.rigid, self.config = avatar, frames, rigid, config
        self.densifier, self.extent_m, self.total_steps = densifier, extent_m, total_steps
        self._hair_out: dict | None = None

    @property
    def hair(self) -> GaussianHair:
        return self.avatar.hair

    def modules(self) -> dict[str, nn.Module]:
        return {"hair": self.hair, "densify": self.densifier.state}

    def parameter_groups(self) -> list[ParameterGroup]:
        c, p = self.config, self.hair.params
        # The position rate follows 3DGS's exponential decay over lr_position_steps; a shorter
        # stage stops part way along the same curve.
        span = min(self.total_steps, c.lr_position_steps) / c.lr_position_steps
        position_ratio = (c.lr_position_final / c.lr_position) ** span
        groups = [ParameterGroup("means", [p["means"]], c.lr_position * self.extent_m, lr_final_ratio=position_ratio),
                  ParameterGroup("quats", [p["quats"]], c.lr_rotation),
                  ParameterGroup("scales", [p["scales"]], c.lr_scaling),
                  ParameterGroup("opacities", [p["opacities"]], c.lr_opacity),
                  ParameterGroup("sh0", [p["sh0"]], c.lr_sh),
                  ParameterGroup("shN", [p["shN"]], c.lr_sh / 20)]
        face = self.avatar.face
        groups.append(ParameterGroup("face", list(face.parameters()) + list(self.frames.parameters()), 0.0,
                                     trainable=False))
        return groups

    def begin_step(self, step: int) -> None:
        self.hair.raise_degree(step, self.config.sh_degree_every)

    def step(self, batch: dict) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        flame = self.frames(batch["timestep_index"])
        with torch.no_grad():
            face = self.avatar.face(flame, batch["camera"])
        rotation, translation = self.rigid(batch["timestep_index"])
        out = self.avatar(flame, batch["camera"], rotation, translation, face=face)
        self._hair_out = out["hair"]
        terms = hair_losses(out, batch, self.config)
        weights = hair_loss_weights(self.config)
        total = sum(weights[k] * v for k, v in terms.items())
        with torch.no_grad():
            hair_mask, _, _ = batch_regions(batch)
            iou = hair_iou(out["hair_weight"], hair_mask).mean()
        return total, terms, {"hair_iou": iou, "n_gaussians": iou.new_tensor(float(self.hair.n))}

    def after_backward(self, step: int, optimizer: torch.optim.Optimizer) -> bool:
        out, self._hair_out = self._hair_out, None
        H, W = out["alpha"].shape[-2:]
        return self.densifier.after_backward(step, self.hair, optimizer, out["means2d"], out["radii"], W, H)


def initial_hair(face: NeuralFace, frames: FrameParameters, timestep: int, config: HairConfig) -> GaussianHair:
    """Gaussians sampled around the scalp of the stage-1 mesh at the canonical timestep, with random
    colours (the authors' initialisation)."""
    generator = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():
        device = frames.shape.device
        vertices, _ = face.geometry(frames(torch.tensor([timestep], device=device)))
        points = sample_scalp_points(vertices[0].cpu(), face.mesh.faces.cpu(), face.mesh.scalp.cpu(),
                                     config.init_on_scalp, config.init_off_scalp, config.init_offset_m, generator)
        colors = torch.rand(points.shape[0], 3, generator=generator)
    return GaussianHair.from_points(points.to(device), colors.to(device), config.init_opacity, config.sh_degree)


def canonical_timestep(dataset: SubjectDataset, rigid_canonical: int, where: Path) -> int:
    timesteps = {int(t) for t in dataset.frames.timestep}
    if timesteps != {rigid_canonical}:
        raise DataError(f"{where}: the one-frame split shows timesteps {sorted(timesteps)} but the rigid transforms "
                        f"are relative to timestep {rigid_canonical}; make hair_rigid.npz again for this subject")
    return rigid_canonical


def train_hair(union_dir: str | Path, face_path: str | Path, rigid_path: str | Path, run_dir: str | Path,
               head, config: HairConfig, variant: str = "mega", device: str = "auto", progress: bool = True,
               restart: bool = False, on_settings_change: OnSettingsChange = "fail",
               stop_after: int | None = None) -> dict:
    """Train (or resume) the canonical hair of ``run_dir``; returns hair/metrics.json's content."""
    from mega.hair.rigid import read_hair_rigid
    from mega.train.face import load_face

    union_dir, run_dir = Path(union_dir).resolve(), Path(run_dir)
    work_dir = run_dir / "hair"
    device = pick_device(device)
    torch.manual_seed(config.seed)

    dataset = open_hair_split(union_dir, "onef")
    rigid_file = read_hair_rigid(rigid_path)
    timestep = canonical_timestep(dataset, int(rigid_file["canonical_timestep"]), Path(rigid_path))
    face, frames = load_face(face_path, head, device)
    rigid = RigidTable(rigid_file["timestep"], rigid_file["rotation"], rigid_file["translation"]).to(device)
    hair = initial_hair(face, frames, timestep, config)
    avatar = Avatar(face, hair, None, config)
    extent = scene_extent_m(dataset)
    steps = config.hair_steps_for(len(dataset))
    densifier = Densifier(config, config.hair_batch_size, extent, DensifyState(hair.n).to(device), steps)
    stage = HairStage(avatar, frames, rigid, config, densifier, extent, steps)
    settings = LoopSettings(steps=steps, batch_size=config.hair_batch_size, seed=config.seed,
                            checkpoint_every=config.checkpoint_every, data_workers=config.data_workers,
                            cache_mb=config.cache_mb)
    log.info("hair stage: %d images of timestep %d, %d initial Gaussians, batch %d, %d steps, scene extent %.3f m",
             len(dataset), timestep, hair.n, config.hair_batch_size, steps, extent)
    fingerprint = {**{k: v for k, v in config.to_dict().items() if k not in RESUMABLE}, "variant": variant,
                   "face": str(Path(face_path).resolve())}
    result = train(stage, dataset, work_dir, settings, fingerprint=fingerprint, device=device, resumable=RESUMABLE,
                   progress=progress, restart=restart, on_settings_change=on_settings_change, stop_after=stop_after)
    if not result.finished:
        return {"stopped_at": result.steps_done}

    save_checkpoint(run_dir / "hair.pt", {"hair": hair.state_dict(), "hair_config": config.to_dict(),
                                          "canonical_timestep": timestep, "scene_extent_m": extent,
                                          "variant": variant, "iterations": steps})
    metrics = {"variant": variant, "iterations": steps, "device": str(device), "train_seconds": round(result.seconds, 1),
               "seconds_per_iteration": round(result.seconds_this_run / max(steps - result.started_at, 1), 4),
               "n_gaussians": hair.n, "canonical_timestep": timestep,
               "training_views": evaluate_canonical_hair(stage, dataset, device, work_dir / "views.png")}
    write_json(work_dir / "metrics.json", metrics)
    return metrics


@torch.no_grad()
def evaluate_canonical_hair(stage: HairStage, dataset: SubjectDataset, device: torch.device,
                            figure: Path | None) -> dict:
    """Hair IoU (α > 0.5 against the hair mask) and hair-region PSNR on the one-frame split's own
    views (the stage's training images: a check of the fit, not of generalisation)."""
    from mega.data.gaussian_avatars import collate_samples, to_device
    from mega.eval.face_metrics import as_8bit, psnr_masked, summarize
    from mega.report.avatar_figure import write_avatar_figure

    ious, psnrs, shown = [], [], []
    for first in range(0, len(dataset), 4):
        batch = to_device(collate_samples([dataset[i] for i in range(first, min(first + 4, len(dataset)))]), device)
        flame = stage.frames(batch["timestep_index"])
        rotation, translation = stage.rigid(batch["timestep_index"])
        out = stage.avatar(flame, batch["camera"], rotation, translation, evaluation=True)
        hair_mask, _, _ = batch_regions(batch)
        ious += hair_iou(out["hair_weight"], hair_mask).tolist()
        rgb = as_8bit(out["rgb"])
        psnrs += [psnr_masked(rgb[b], batch["image"][b], hair_mask[b, 0]) for b in range(rgb.shape[0])]
        if len(shown) < 4:
            shown.append((batch, out))
    if figure is not None:
        write_avatar_figure(figure, shown, n_views=4)
    return {"hair_iou": round(summarize(ious), 4), "psnr_hair": round(summarize(psnrs), 3), "n_images": len(dataset)}
