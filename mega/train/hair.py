"""Stage 2: the canonical Gaussian hair (paper §4, "Optimizing Canonical Gaussian Hair", eq. 14).

On the one-frame split (``transforms_onef.json``: every training camera at one timestep, the
canonical frame; with ``hair_frames: all``, on the training split, each frame's hair moved
rigidly with the head) the hair is initialised around the scalp of the stage-1 mesh and optimised
with densification, while the face from stage 1 stays fixed: it is rendered (without gradients) only
for the occlusion test the silhouette loss needs.

A hairless subject (its canonical views' parsing calls less than ``hairless_below`` of the object
hair) trains nothing here: its canonical hair has no Gaussian, and the avatar is its face.

Outputs in the run folder:
    hair.pt     the canonical hair (any number of Gaussians, none for a hairless subject), the
                settings, the canonical timestep
    hair/       checkpoint.pt, loss.csv, loss.png (the loop's), metrics.json, views.png; for a
                hairless subject only loss.png (a figure that says so) and metrics.json
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from mega import losses
from mega.atomic import write_json
from mega.avatar import Avatar, RigidTable
from mega.data.cache import nbytes
from mega.data.camera import Camera
from mega.data.gaussian_avatars import SubjectDataset, subject_extras
from mega.data.parsing import batch_regions, hair_mask, object_mask
from mega.errors import DataError
from mega.eval.avatar import hair_iou
from mega.face.frames import FrameParameters
from mega.face.model import NeuralFace
from mega.hair.config import HairConfig
from mega.hair.densify import Densifier, DensifyState
from mega.hair.model import GaussianHair, sample_scalp_points
from mega.hair.render import camera_at
from mega.hair.views_init import CanonicalViews, connected_to_scalp
from mega.train.checkpoint import checkpoint_identity, save_checkpoint
from mega.train.loop import LoopSettings, OnSettingsChange, ParameterGroup, pick_device, train

log = logging.getLogger(__name__)

REFERENCE_HEIGHT_PX = 802
"""Height of the images the authors' weights were chosen for (NeRSemble at half resolution)."""
LOSS_TERMS = ("hair_rgb", "hair_ssim", "silhouette", "solid")
RESUMABLE = {"hair_epochs", "hair_iterations", "checkpoint_every", "val_views", "cache_mb", "data_workers",
             "joint_epochs", "joint_iterations", "joint_batch_size", "lr_deform", "w_rgb", "w_ssim", "w_diffuse_rgb",
             "w_offsets", "w_aiap_xyz", "w_aiap_cov", "deform_layers", "deform_frequencies", "deform_scale",
             "aiap_neighbours", "gaussian_backend", "joint_face_on_hair", "hairless_below"}
"""Settings the canonical hair does not depend on (the joint stage's, and the hairless threshold,
which only decides whether the stage trains) or that may change on resume."""
FIXED_FACE_OUTPUTS = ("rgb", "mask", "depth")
"""The face outputs the blend of the canonical-hair stage reads."""


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


def silhouette_weights(hair_mask: Tensor) -> Tensor:
    """Δ of eq. 13 [B, 1, H, W] in pixels² of the authors' 802-pixel-high images, so that λ_sil
    weighs the same at any image size."""
    return losses.hair_distance_weights(hair_mask) * (REFERENCE_HEIGHT_PX / hair_mask.shape[-2]) ** 2


def hair_losses(out: dict, batch: dict, config: HairConfig, distance_weights: Tensor | None = None,
                names: tuple[str, ...] = LOSS_TERMS) -> dict[str, Tensor]:
    """Eq. 14's terms, unweighted, as the authors compute them (docs/hair.md); only those in
    ``names``, in :data:`LOSS_TERMS`' order. ``distance_weights``: the batch's
    :func:`silhouette_weights` where the caller keeps them (they depend on the mask alone)."""
    hair_mask, _, _ = batch_regions(batch)
    hair = out["hair"]
    terms = {}
    if "hair_rgb" in names or "hair_ssim" in names:
        hair_rgb, hair_ssim = losses.hair_photometric(hair["rgb"], batch["image"], hair_mask)
        terms.update({"hair_rgb": hair_rgb, "hair_ssim": hair_ssim})
    if "silhouette" in names:
        if distance_weights is None:
            distance_weights = silhouette_weights(hair_mask)
        terms["silhouette"] = losses.silhouette_loss(hair["alpha"] * out["occlusion"], hair_mask, distance_weights)
    if "solid" in names:
        terms["solid"] = losses.solid_hair_loss(hair["alpha"], hair_mask, config.erode_px)
    return {name: term for name, term in terms.items() if name in names}


def hair_loss_weights(config: HairConfig) -> dict[str, float]:
    return {"hair_rgb": config.w_hair_rgb, "hair_ssim": config.w_hair_ssim, "silhouette": config.w_silhouette,
            "solid": config.w_solid}


class HairStage:
    """The canonical hair as the loop trains it: only the Gaussians learn."""

    name = "hair"
    loss_terms = LOSS_TERMS
    extra_columns = ("hair_iou", "n_gaussians")

    def __init__(self, avatar: Avatar, frames: FrameParameters, rigid: RigidTable, config: HairConfig,
                 densifier: Densifier, extent_m: float, total_steps: int, cache_mb: float = 2048):
        self.avatar, self.frames, self.rigid, self.config = avatar, frames, rigid, config
        self.densifier, self.extent_m, self.total_steps = densifier, extent_m, total_steps
        self._hair_out: dict | None = None
        self._fixed: dict[int, dict[str, Tensor]] = {}
        self._fixed_bytes_left = int(cache_mb * 2**20)

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
        groups = [ParameterGroup(name, [p[name]], lr, lr_final_ratio=position_ratio if name == "means" else None)
                  for name, lr in c.canonical_hair_rates(self.extent_m).items()]
        face = self.avatar.face
        groups.append(ParameterGroup("face", list(face.parameters()) + list(self.frames.parameters()), 0.0,
                                     trainable=False))
        return groups

    def begin_step(self, step: int) -> None:
        self.hair.raise_degree(step, self.config.sh_degree_every)

    @torch.no_grad()
    def fixed_inputs(self, flame: dict[str, Tensor], batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        """The stage-1 face of a batch (rgb, mask, depth: what the blend reads) and the silhouette
        weights of its hair masks. The face is fixed, the masks too, so each image's are made once
        and kept while they fit in ``cache_mb`` (a budget of their own, beside the image loader's;
        the one-frame split's always fit; beyond it, with ``hair_frames: all`` on large images,
        they are made again for each batch)."""
        frame_index = batch["frame_index"].tolist()
        missing = [i for i, f in enumerate(frame_index) if f not in self._fixed]
        made: dict[int, dict[str, Tensor]] = {}
        if missing:
            pick = torch.tensor(missing, device=batch["timestep_index"].device)
            cameras = batch["camera"]
            subset = camera_at(cameras, pick)
            out = self.avatar.face({k: v[pick] for k, v in flame.items()}, subset)
            hair_mask, _, _ = batch_regions(batch)
            weights = silhouette_weights(hair_mask[pick])
            for j, i in enumerate(missing):
                made[frame_index[i]] = entry = {**{k: out[k][j] for k in FIXED_FACE_OUTPUTS}, "silhouette": weights[j]}
                size = nbytes(entry)
                if size <= self._fixed_bytes_left:
                    self._fixed[frame_index[i]] = entry
                    self._fixed_bytes_left -= size
        fixed = [self._fixed.get(f) or made[f] for f in frame_index]
        face = {k: torch.stack([entry[k] for entry in fixed]) for k in FIXED_FACE_OUTPUTS}
        return face, torch.stack([entry["silhouette"] for entry in fixed])

    def step(self, batch: dict) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        flame = self.frames(batch["timestep_index"])
        face, distance_weights = self.fixed_inputs(flame, batch)
        rotation, translation = self.rigid(batch["timestep_index"])
        out = self.avatar(flame, batch["camera"], rotation, translation, face=face)
        self._hair_out = out["hair"]
        terms = hair_losses(out, batch, self.config, distance_weights)
        weights = hair_loss_weights(self.config)
        total = sum(weights[k] * v for k, v in terms.items())
        with torch.no_grad():
            hair_mask, _, _ = batch_regions(batch)
            iou = hair_iou(out["hair_weight"], hair_mask).mean()
        return total, terms, {"hair_iou": iou, "n_gaussians": iou.new_tensor(float(self.hair.n))}

    def after_backward(self, step: int, optimizer: torch.optim.Optimizer) -> bool:
        out, self._hair_out = self._hair_out, None
        W, H = out["render_size"]
        return self.densifier.after_backward(step, self.hair, optimizer, out["means2d"], out["radii"], W, H)


def initial_hair(face: NeuralFace, frames: FrameParameters, timestep: int, config: HairConfig,
                 views: CanonicalViews | None = None) -> GaussianHair:
    """Gaussians sampled around the scalp of the stage-1 mesh at the canonical timestep, with random
    colours (the authors' initialisation); with ``config.init_in_hull`` also points in the visual
    hull of the hair, and with ``config.init_colour = "views"`` colours from the images. Both need
    ``views`` (the canonical frame's, :func:`canonical_views`)."""
    if (config.init_in_hull or config.init_colour == "views") and views is None:
        raise ValueError("init_in_hull and init_colour 'views' need the canonical views")
    generator = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():
        device = frames.shape.device
        vertices, _ = face.geometry(frames(torch.tensor([timestep], device=device)))
        vertices = vertices[0].cpu()
        points = sample_scalp_points(vertices, face.mesh.faces.cpu(), face.mesh.scalp_faces.cpu(),
                                     config.init_on_scalp, config.init_off_scalp, config.init_offset_m, generator)
        colors = torch.rand(points.shape[0], 3, generator=generator)
        if config.init_in_hull:
            margin = config.init_hull_margin_m
            hull = views.hull_points(config.init_in_hull, vertices.min(0).values - margin,
                                     vertices.max(0).values + margin, generator).cpu()
            if hull.shape[0] < config.init_in_hull:
                log.warning("the hair's visual hull gave %d of the %d points asked for", hull.shape[0],
                            config.init_in_hull)
            if config.init_hull_connected:
                joined = connected_to_scalp(points, hull)
                if not bool(joined.all()):
                    log.info("the hair's visual hull: %d of %d points are not joined to the scalp (ghosts of "
                             "few views) and are left out", int((~joined).sum()), hull.shape[0])
                hull = hull[joined]
            points = torch.cat([points, hull])
            colors = torch.cat([colors, torch.rand(hull.shape[0], 3, generator=generator)])
        if config.init_colour == "views":
            colors, seen = views.colours(points)
            log.info("initial hair colours from the views: %d of %d points seen on hair", int(seen.sum()),
                     points.shape[0])
        if points.shape[0] == 0:
            raise DataError("no initial hair point: the scalp sampling asks for none and the hair's visual hull is "
                            "empty (do the canonical views show hair?)")
    return GaussianHair.from_points(points.to(device), colors.to(device).clamp(0, 1), config.init_opacity,
                                    config.sh_degree)


@torch.no_grad()
def canonical_views(face: NeuralFace, frames: FrameParameters, dataset: SubjectDataset,
                    device: torch.device, batch_size: int = 4) -> CanonicalViews:
    """The one-frame split's images, hair masks and the stage-1 mesh's depth in each of its views."""
    from mega.data.gaussian_avatars import collate_samples, to_device

    cameras, images, hair, depth = [], [], [], []
    for first in range(0, len(dataset), batch_size):
        batch = to_device(collate_samples([dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]),
                          device)
        out = face(frames(batch["timestep_index"]), batch["camera"])
        hair_mask, _, _ = batch_regions(batch)
        cameras.append(batch["camera"])
        images.append(batch["image"])
        hair.append(hair_mask[:, 0])
        depth.append(torch.where(out["mask"][:, 0], out["depth"][:, 0], torch.full_like(out["depth"][:, 0], math.inf)))
    stacked = Camera(torch.cat([c.intrinsics for c in cameras]), torch.cat([c.world_to_camera for c in cameras]),
                     cameras[0].width, cameras[0].height)
    return CanonicalViews(stacked, torch.cat(images), torch.cat(hair), torch.cat(depth))


def hair_share(dataset: SubjectDataset) -> float:
    """The share of the object's pixels (head and hair, :func:`object_mask`) that the parsing
    calls hair, over all of ``dataset``'s images; an error where no pixel is the object's (a
    failed parsing must not pass for a bald head)."""
    hair = covered = 0
    for i in range(len(dataset)):
        labels = dataset.parsing_labels(i)
        hair += int(hair_mask(labels).sum())
        covered += int(object_mask(labels).sum())
    if not covered:
        raise DataError(f"{dataset.parsing_path(0).parent}: the parsing of the one-frame split labels no pixel as "
                        f"head or hair in any of its {len(dataset)} images; make the face parsing of this subject "
                        f"again (mega parse-faces)")
    return hair / covered


def write_hairless(run_dir: Path, config: HairConfig, timestep: int, extent_m: float, variant: str,
                   share: float, device: torch.device) -> dict:
    """The outputs of the canonical-hair stage for a hairless subject: hair.pt with no Gaussian,
    metrics.json that says why, and a loss.png that says so in place of the curves."""
    from mega.report.training_figure import write_message_figure

    work_dir = run_dir / "hair"
    work_dir.mkdir(parents=True, exist_ok=True)
    # What a training of this folder left (the hair trained before under another threshold) would
    # contradict the outputs: the curves figure reads loss.csv where it exists.
    for name in ("checkpoint.pt", "loss.csv", "views.png"):
        (work_dir / name).unlink(missing_ok=True)
    hair = GaussianHair(0, config.sh_degree)
    save_checkpoint(run_dir / "hair.pt", {"hair": hair.state_dict(), "hair_config": config.to_dict(),
                                          "canonical_timestep": timestep, "scene_extent_m": extent_m,
                                          "variant": variant, "iterations": 0, "hairless": True})
    reason = (f"the parsing calls {100 * share:.2f}% of the object hair in the canonical views, under "
              f"hairless_below = {100 * config.hairless_below:.2f}%")
    write_message_figure(work_dir / "loss.png", "hair training", f"A hairless subject: no hair to train.\n{reason}.")
    metrics = {"variant": variant, "iterations": 0, "device": str(device), "train_seconds": 0.0,
               "n_gaussians": 0, "canonical_timestep": timestep, "hairless": True, "hair_share": round(share, 6),
               "hairless_below": config.hairless_below}
    write_json(work_dir / "metrics.json", metrics)
    log.info("hair stage: a hairless subject (%s); the canonical hair has no Gaussian and the avatar is its face",
             reason)
    return metrics


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

    canonical = open_hair_split(union_dir, "onef")
    rigid_file = read_hair_rigid(rigid_path)
    timestep = canonical_timestep(canonical, int(rigid_file["canonical_timestep"]), Path(rigid_path))
    face, frames = load_face(face_path, head, device)
    share = hair_share(canonical)
    if share < config.hairless_below:
        return write_hairless(run_dir, config, timestep, scene_extent_m(canonical), variant, share, device)
    rigid = RigidTable(rigid_file["timestep"], rigid_file["rotation"], rigid_file["translation"]).to(device)
    views = (canonical_views(face, frames, canonical, device)
             if config.init_in_hull or config.init_colour == "views" else None)
    hair = initial_hair(face, frames, timestep, config, views)
    del views
    avatar = Avatar(face, hair, None, config)
    # hair_frames "all": the same cameras at every training timestep, each frame's hair placed by
    # its rigid transform; the step count, the scene's extent and the figure stay the canonical
    # frame's, so that the two settings cost the same.
    dataset = canonical if config.hair_frames == "canonical" else open_hair_split(union_dir, "train")
    extent = scene_extent_m(canonical)
    steps = config.hair_steps_for(len(canonical))
    densifier = Densifier(config, config.hair_batch_size, extent, DensifyState(hair.n).to(device), steps)
    stage = HairStage(avatar, frames, rigid, config, densifier, extent, steps, cache_mb=config.cache_mb)
    settings = LoopSettings(steps=steps, batch_size=config.hair_batch_size, seed=config.seed,
                            checkpoint_every=config.checkpoint_every, data_workers=config.data_workers,
                            cache_mb=config.cache_mb)
    log.info("hair stage: %d images (%s frames; canonical timestep %d), %d initial Gaussians, batch %d, %d steps, "
             "scene extent %.3f m", len(dataset), config.hair_frames, timestep, hair.n, config.hair_batch_size,
             steps, extent)
    fingerprint = {**{k: v for k, v in config.to_dict().items() if k not in RESUMABLE}, "variant": variant,
                   "face": checkpoint_identity(face_path)}
    result = train(stage, dataset, work_dir, settings, fingerprint=fingerprint, device=device, resumable=RESUMABLE,
                   progress=progress, restart=restart, on_settings_change=on_settings_change, stop_after=stop_after,
                   fingerprint_defaults=HairConfig.defaults())
    if not result.finished:
        return {"stopped_at": result.steps_done}

    save_checkpoint(run_dir / "hair.pt", {"hair": hair.state_dict(), "hair_config": config.to_dict(),
                                          "canonical_timestep": timestep, "scene_extent_m": extent,
                                          "variant": variant, "iterations": steps})
    metrics = {"variant": variant, "iterations": steps, "device": str(device), "train_seconds": round(result.seconds, 1),
               "seconds_per_iteration": round(result.seconds_this_run / max(steps - result.started_at, 1), 4),
               "n_gaussians": hair.n, "canonical_timestep": timestep, "hair_share": round(share, 6),
               "training_views": evaluate_canonical_hair(avatar, frames, rigid, canonical, device,
                                                         work_dir / "views.png")}
    write_json(work_dir / "metrics.json", metrics)
    return metrics


@torch.no_grad()
def evaluate_canonical_hair(avatar: Avatar, frames: FrameParameters, rigid: RigidTable, dataset,
                            device: torch.device, figure: Path | None) -> dict:
    """Hair IoU (α > 0.5 against the hair mask) and hair-region PSNR of ``avatar`` (its canonical
    hair, no deformation) on ``dataset``: the one-frame split's own views are the stage's training
    images (a check of the fit, not of generalisation)."""
    from mega.data.gaussian_avatars import collate_samples, to_device
    from mega.eval.face_metrics import as_8bit, psnr_masked, summarize
    from mega.report.avatar_figure import write_avatar_figure

    ious, psnrs, shown = [], [], []
    for first in range(0, len(dataset), 4):
        batch = to_device(collate_samples([dataset[i] for i in range(first, min(first + 4, len(dataset)))]), device)
        flame = frames(batch["timestep_index"])
        rotation, translation = rigid(batch["timestep_index"])
        out = avatar(flame, batch["camera"], rotation, translation, evaluation=True)
        hair_mask, _, _ = batch_regions(batch)
        ious += hair_iou(out["hair_weight"], hair_mask).tolist()
        rgb = as_8bit(out["rgb"])
        psnrs += [psnr_masked(rgb[b], batch["image"][b], hair_mask[b, 0]) for b in range(rgb.shape[0])]
        if len(shown) < 4:
            shown.append((batch, out))
    if figure is not None:
        write_avatar_figure(figure, shown, n_views=4)
    return {"hair_iou": round(summarize(ious), 4), "psnr_hair": round(summarize(psnrs), 3), "n_images": len(dataset)}
