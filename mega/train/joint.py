"""Stage 3: joint optimisation of the hybrid on all training frames (paper §4, eq. 15).

Trained: the hair's deformation field and the face's appearance (diffuse texture, view and
dynamic decoders, UV encoding, pixel decoder); for a hairless subject, whose canonical hair has
no Gaussian, the face's alone. Fixed: the canonical Gaussians, the displacement
decoder and the per-frame FLAME parameters, as the paper and the authors' code do; the canonical
Gaussians' colours and opacities (``joint_hair_appearance_lr_ratio``, the synthetic settings) and
their geometry (``joint_hair_geometry_lr_ratio``) can train too, a departure (docs/hair.md).

    L = λp·L_pho(blend) + 3λp·L_di·pho(face) + λss·L_ssim(blend) + λsol·L_sol
        + λn·(‖δr‖ + ‖δs‖ + ‖δo‖ + ‖δc‖) + λa·L_aiap                                 (eq. 15)

(+ those of eq. 14's hair L2, SSIM and silhouette terms named in ``joint_hair_terms``; the
authors' code keeps all three.)

Outputs in the run folder:
    joint.pt    the face as this stage leaves it, its frames, the deformation field, the settings;
                the canonical hair too where this stage trained it (hair.pt stays stage 2's)
    joint/      checkpoint.pt, loss.csv, loss.png, metrics.json (val, test; the face alone beside
                the hybrid), val.png (ground truth | face | hair | blended | occlusion)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from mega import losses
from mega.atomic import write_json
from mega.avatar import Avatar, RigidTable
from mega.blend import blend
from mega.errors import DataError
from mega.face.config import FaceConfig
from mega.data.camera import Camera
from mega.face.model import GEOMETRY_OUTPUTS, NeuralFace
from mega.flame.head_model import HeadModel
from mega.data.parsing import batch_regions
from mega.eval.avatar import evaluate_avatar, hair_iou
from mega.face.frames import FrameParameters
from mega.hair.config import JOINT_HAIR_TERMS, HairConfig
from mega.hair.deform import DeformationField
from mega.hair.model import GaussianHair
from mega.hair.render import camera_at
from mega.render.gaussians import quaternion_to_matrix
from mega.train.checkpoint import checkpoint_identity, load_checkpoint, save_checkpoint
from mega.train.face import FaceStage, face_targets, model_weights
from mega.train.hair import hair_loss_weights, hair_losses, open_hair_split
from mega.train.loop import LoopSettings, OnSettingsChange, ParameterGroup, pick_device, train

log = logging.getLogger(__name__)

LOSS_TERMS = ("rgb", "ssim", "diffuse_rgb", "solid", "offset_quats", "offset_scales", "offset_opacities",
              "offset_sh0", "aiap_xyz", "aiap_cov")
RESUMABLE = {"joint_epochs", "joint_iterations", "checkpoint_every", "val_views", "cache_mb", "data_workers",
             "gaussian_backend", "hairless_below", "hair_epochs", "hair_iterations"}
"""Settings that may change on resume: this stage's length and bookkeeping, and the canonical-hair
stage's length, which reaches this stage only through hair.pt (whose tensors the fingerprint holds)."""
FROZEN_FACE_GROUPS = ("displacement", "flame_shape", "flame_expr", "flame_rotation", "flame_neck_pose",
                      "flame_jaw_pose", "flame_eyes_pose", "flame_translation")


def blended_for_loss(out: dict, hair_mask: Tensor, face_on_hair: bool, compositing: str = "authors") -> Tensor:
    """The blended image [B, 3, H, W] the photometric terms compare; without ``face_on_hair`` the
    same values, but the face gets no gradient from the ground truth's hair pixels (``hair_mask``
    [B, 1, H, W]); ``compositing`` the avatar's (:func:`mega.blend.blend`)."""
    if face_on_hair:
        return out["rgb"]
    face_rgb = out["face"]["rgb"]
    # Eq. 7 again with the same occlusion, the face detached on hair.
    return blend(torch.where(hair_mask, face_rgb.detach(), face_rgb), out["hair"]["rgb"], out["hair"]["alpha"],
                 out["soft_occlusion"], compositing)[0]


def joint_losses(out: dict, batch: dict, config: HairConfig, neighbours: Tensor, canonical: dict,
                 rotation: Tensor, face: NeuralFace) -> dict[str, Tensor]:
    """Eq. 15's terms, unweighted (see docs/hair.md for the reductions). ``canonical``: the
    canonical means [N, 3] and covariances [N, 3, 3]; ``rotation`` [B, 3, 3] the frames' rigid
    head rotations; ``face`` the avatar's face, whose ``hair_target`` sets the diffuse term's
    target under the hair as in the face stage; then the canonical-hair stage's terms named in
    ``config.joint_hair_terms``."""
    hair_mask, _, _ = batch_regions(batch)
    image = batch["image"]
    _, diffuse_target = face_targets(face, out["face"], image, hair_mask, face.config.hair_target)
    blended = blended_for_loss(out, hair_mask, config.joint_face_on_hair, config.hair_compositing)
    offsets = losses.offset_regulariser(out["offsets"])
    posed = out["gaussians"]
    aiap_xyz, aiap_cov = losses.aiap_losses(
        canonical["means"], posed["means"], canonical["covariances"],
        losses.covariances(quaternion_to_matrix(posed["quats"]), posed["scales"]), neighbours, rotation)
    return {
        "rgb": losses.photometric_l2(blended, image),
        "ssim": losses.dssim(blended, image),
        "diffuse_rgb": losses.photometric_l2(out["face"]["rgb_diffuse"], diffuse_target),
        "solid": losses.solid_hair_loss(out["hair"]["alpha"], hair_mask, config.erode_px),
        **{f"offset_{name}": offsets[name] for name in ("quats", "scales", "opacities", "sh0")},
        "aiap_xyz": aiap_xyz, "aiap_cov": aiap_cov,
        # The authors' joint stage keeps the whole hair loss: the posed hair against the hair's pixels.
        **hair_losses(out, batch, config, names=config.joint_hair_terms),
    }


def joint_loss_terms(config: HairConfig) -> tuple[str, ...]:
    """The names of :func:`joint_losses`' terms under ``config`` (loss.csv's columns)."""
    return LOSS_TERMS + tuple(name for name in JOINT_HAIR_TERMS if name in config.joint_hair_terms)


def joint_loss_weights(config: HairConfig) -> dict[str, float]:
    hair = {name: w for name, w in hair_loss_weights(config).items() if name in config.joint_hair_terms}
    return {"rgb": config.w_rgb, "ssim": config.w_ssim, "diffuse_rgb": config.w_diffuse_rgb * config.w_rgb,
            "solid": config.w_solid, **{f"offset_{n}": config.w_offsets for n in ("quats", "scales", "opacities", "sh0")},
            "aiap_xyz": config.w_aiap_xyz, "aiap_cov": config.w_aiap_cov,
            **hair}


class JointStage:
    name = "joint"
    extra_columns = ("psnr_train", "hair_iou")

    def __init__(self, avatar: Avatar, frames: FrameParameters, rigid: RigidTable, config: HairConfig,
                 scene_extent_m: float = 1.0, n_images: int | None = None):
        """``scene_extent_m``: the canonical-hair stage's scene extent (its position rate's unit);
        ``n_images``: the training split's size (None: unknown, and the face's geometry is made
        at every step, see :meth:`face_geometry`)."""
        self.avatar, self.frames, self.rigid, self.config = avatar, frames, rigid, config
        self.loss_terms = joint_loss_terms(config)
        self.scene_extent_m = scene_extent_m
        self.face_stage = FaceStage(avatar.face, frames, avatar.face.config, frozen=FROZEN_FACE_GROUPS)
        self.canonical = self.canonical_geometry()
        # The authors' K = 8 neighbours count each Gaussian as its own first one.
        self.neighbours = losses.knn_indices(self.canonical["means"], config.aiap_neighbours - 1)
        # What moves the face's geometry: frozen here (FROZEN_FACE_GROUPS), so each image's is made
        # once where they fit (:meth:`face_geometry`): about a tenth of a synthetic-size step.
        face = avatar.face
        self._geometry_parameters = list(frames.parameters()) + (
            list(face.displacement_decoder.parameters()) if face.displacement_decoder is not None else [])
        self.n_images = n_images
        self._vertices: dict[int, tuple[Tensor, Tensor]] = {}
        self._rast: dict[int, Tensor] = {}
        self._geometry_budget = config.cache_mb * 2**20
        self._geometry_fits: bool | None = None

    @torch.no_grad()
    def canonical_geometry(self) -> dict[str, Tensor]:
        """The canonical means [N, 3] and covariances [N, 3, 3] the AIAP term compares the posed hair with."""
        canonical = self.avatar.hair.activated()
        return {"means": canonical["means"].detach(),
                "covariances": losses.covariances(quaternion_to_matrix(canonical["quats"]), canonical["scales"])}

    def modules(self) -> dict[str, nn.Module]:
        modules = {"face": self.avatar.face, "frames": self.frames, "deformation": self.avatar.deformation}
        if self.trains_hair():
            modules["hair"] = self.avatar.hair
        return modules

    def parameter_groups(self) -> list[ParameterGroup]:
        groups = self.face_stage.parameter_groups()
        for group in groups:
            group.lr_final_ratio = self.config.joint_face_lr_final_ratio
        groups.append(ParameterGroup("deformation", list(self.avatar.deformation.parameters()), self.config.lr_deform))
        # A departure where either ratio is above 0: the frames' head poses show the hair from
        # directions the canonical frame's views do not, and frozen Gaussians cannot follow them.
        c, params = self.config, self.avatar.hair.params
        ratios = {}
        if c.joint_hair_appearance_lr_ratio > 0:
            # The higher SH coefficients train only where the canonical stage ended above degree 0
            # (the degree does not rise here): frozen, the posed hair carries only those it renders.
            colour = ("sh0", "shN") if int(self.avatar.hair.active_degree) > 0 else ("sh0",)
            ratios.update(dict.fromkeys((*colour, "opacities"), c.joint_hair_appearance_lr_ratio))
        if c.joint_hair_geometry_lr_ratio > 0:
            ratios.update(dict.fromkeys(("means", "quats", "scales"), c.joint_hair_geometry_lr_ratio))
        rates = {name: lr * ratios[name] for name, lr in c.canonical_hair_rates(self.scene_extent_m).items()
                 if name in ratios}
        groups += [ParameterGroup(f"canonical_hair_{name}", [params[name]], lr) for name, lr in rates.items()]
        groups.append(ParameterGroup("canonical_hair", [p for name, p in params.items() if name not in rates], 0.0,
                                     trainable=False))
        return groups

    def trains_hair(self) -> bool:
        """Whether this stage trains the canonical Gaussians (then its checkpoints keep them)."""
        return self.config.joint_hair_appearance_lr_ratio > 0 or self.config.joint_hair_geometry_lr_ratio > 0

    def begin_step(self, step: int) -> None:
        # The fixed displacement decoder keeps its batch-norm statistics: in training mode they
        # would drift with the joint batches and change the geometry evaluation renders.
        if self.avatar.face.displacement_decoder is not None:
            self.avatar.face.displacement_decoder.eval()
        if self.config.joint_hair_geometry_lr_ratio > 0:
            # AIAP keeps the deformation near-isometric to the canonical hair as it is now.
            self.canonical = self.canonical_geometry()

    @torch.no_grad()
    def face_geometry(self, flame: dict[str, Tensor], batch: dict) -> dict[str, Tensor] | None:
        """The face's geometry for a batch's images (:meth:`NeuralFace.render_geometry`), or None
        while anything that moves it trains (then the face makes it, with its gradient).

        It is the same at every step, so its costly parts are made once and kept: the vertices
        per timestep, the G-buffer per image (0.44 MB at the synthetic 138 × 200, 7 MB at the
        authors' 550 × 802). They are kept only where every training image's fit in ``cache_mb`` (a
        budget of their own, beside the image loader's): with random batches, a part of the
        split kept would save that part of the steps' time for all of the budget's memory."""
        if any(p.requires_grad for p in self._geometry_parameters):
            return None
        face, cameras = self.avatar.face, batch["camera"]
        timesteps, images = batch["timestep_index"].tolist(), batch["frame_index"].tolist()
        if not self._keeps_geometry(cameras):
            return face.render_geometry(flame, cameras)
        new_times = sorted({t for t in timesteps if t not in self._vertices})
        if new_times:
            pick = torch.tensor([timesteps.index(t) for t in new_times], device=batch["timestep_index"].device)
            vertices, vertices_flame = face.geometry({k: v[pick] for k, v in flame.items()})
            # Cloned: a view would keep the whole batch's tensor alive.
            self._vertices.update({t: (vertices[j].clone(), vertices_flame[j].clone())
                                   for j, t in enumerate(new_times)})
        vertices = torch.stack([self._vertices[t][0] for t in timesteps])
        vertices_flame = torch.stack([self._vertices[t][1] for t in timesteps])
        missing = [i for i, f in enumerate(images) if f not in self._rast]
        if missing:
            pick = torch.tensor(missing, device=batch["timestep_index"].device)
            subset = camera_at(cameras, pick)
            rast = face.rasterize(vertices[pick], subset)
            self._rast.update({images[i]: rast[j].clone() for j, i in enumerate(missing)})
        return face.geometry_from(vertices, vertices_flame, torch.stack([self._rast[f] for f in images]), cameras)

    def _keeps_geometry(self, cameras: Camera) -> bool:
        """Whether every training image's geometry fits the budget (decided at the first batch)."""
        if self._geometry_fits is None:
            vertices = 2 * self.avatar.face.mesh.n_vertices * 3 * 4  # per image at worst (one timestep each)
            per_image = cameras.height * cameras.width * 4 * 4 + vertices
            self._geometry_fits = self.n_images is not None and per_image * self.n_images <= self._geometry_budget
        return self._geometry_fits

    def step(self, batch: dict) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        flame = self.frames(batch["timestep_index"])
        rotation, translation = self.rigid(batch["timestep_index"])
        out = self.avatar(flame, batch["camera"], rotation, translation,
                          face_geometry=self.face_geometry(flame, batch))
        terms = joint_losses(out, batch, self.config, self.neighbours, self.canonical, rotation, self.avatar.face)
        weights = joint_loss_weights(self.config)
        total = sum(weights[k] * v for k, v in terms.items())
        with torch.no_grad():
            hair_mask, _, _ = batch_regions(batch)
            mse = ((out["rgb"] - batch["image"]) ** 2).mean()
            extras = {"psnr_train": -10 * torch.log10(mse.clamp_min(1e-12)),
                      "hair_iou": hair_iou(out["hair_weight"], hair_mask).mean()}
        return total, terms, extras


def train_joint(union_dir: str | Path, face_path: str | Path, hair_path: str | Path, rigid_path: str | Path,
                run_dir: str | Path, head, config: HairConfig, variant: str = "mega", device: str = "auto",
                progress: bool = True, restart: bool = False, on_settings_change: OnSettingsChange = "fail",
                stop_after: int | None = None) -> dict:
    """Train (or resume) the joint stage of ``run_dir``; returns joint/metrics.json's content."""
    from mega.train.face import load_face

    union_dir, run_dir = Path(union_dir).resolve(), Path(run_dir)
    work_dir = run_dir / "joint"
    device = pick_device(device)
    torch.manual_seed(config.seed)

    dataset = open_hair_split(union_dir, "train")
    face, frames = load_face(face_path, head, device)
    hair_state = load_checkpoint(hair_path, device, "hair")
    hair = GaussianHair(0, config.sh_degree).to(device)
    hair.load_state_dict(hair_state["hair"])
    rigid = RigidTable.from_file(rigid_path).to(device)
    deformation = deformation_field_of(config).to(device)
    avatar = Avatar(face, hair, deformation, config)
    stage = JointStage(avatar, frames, rigid, config, float(hair_state.get("scene_extent_m", 1.0)),
                       n_images=len(dataset))
    steps = config.joint_steps_for(len(dataset))
    settings = LoopSettings(steps=steps, batch_size=config.joint_batch_size, seed=config.seed,
                            checkpoint_every=config.checkpoint_every, data_workers=config.data_workers,
                            cache_mb=config.cache_mb)
    log.info("joint stage: %d training images, %d Gaussians, batch %d, %d steps", len(dataset), hair.n,
             config.joint_batch_size, steps)
    fingerprint = {**config.to_dict(), "variant": variant, "face": checkpoint_identity(face_path),
                   "hair": checkpoint_identity(hair_path, hair_state)}
    result = train(stage, dataset, work_dir, settings, fingerprint=fingerprint, device=device, resumable=RESUMABLE,
                   progress=progress, restart=restart, on_settings_change=on_settings_change, stop_after=stop_after,
                   fingerprint_defaults=HairConfig.defaults())
    if not result.finished:
        return {"stopped_at": result.steps_done}

    save_checkpoint(run_dir / "joint.pt", {"model": model_weights({"model": face.state_dict()}),
                                           "frames": frames.state_dict(), "face_config": face.config.to_dict(),
                                           "deformation": deformation.state_dict(), "hair_config": config.to_dict(),
                                           "variant": variant, "iterations": steps,
                                           "head_model": head.fingerprint(),
                                           # The canonical hair as this stage left it, where it trained.
                                           **({"hair": hair.state_dict()} if stage.trains_hair() else {})})
    metrics = {"variant": variant, "iterations": steps, "device": str(device), "n_gaussians": hair.n,
               "train_seconds": round(result.seconds, 1),
               "seconds_per_iteration": round(result.seconds_this_run / max(steps - result.started_at, 1), 4)}
    for split in ("val", "test"):
        if not (union_dir / f"transforms_{split}.json").is_file():
            continue
        figure = work_dir / f"{split}.png" if split == "val" else None
        metrics[split] = evaluate_avatar(avatar, frames, rigid, open_hair_split(union_dir, split), device, figure,
                                         config.val_views)
    write_json(work_dir / "metrics.json", metrics)
    return metrics


def load_avatar(run_dir: str | Path, head: HeadModel, device: str | torch.device = "cpu"
                ) -> tuple[Avatar, FrameParameters, dict]:
    """The trained avatar of a run folder: ``joint.pt`` (the face as the joint stage left it, its
    per-frame FLAME parameters, the deformation field; the canonical hair where the stage trained
    its colours) and ``hair.pt`` (the canonical hair).
    Returns (avatar, per-frame FLAME parameters, the joint file's contents)."""
    joint, hair_state, joint_path = read_avatar_checkpoints(run_dir, head, device)
    face = NeuralFace(head, FaceConfig.from_dict(joint["face_config"], where=f"{joint_path} face_config")).to(device)
    face.load_state_dict(model_weights(joint))
    frames = FrameParameters.from_state_dict(joint["frames"]).to(device)
    hair, deformation, config = hair_parts(joint, hair_state, joint_path, device)
    avatar = Avatar(face, hair, deformation, config).to(device)
    avatar.eval()
    return avatar, frames, joint


def read_avatar_checkpoints(run_dir: str | Path, head: HeadModel, device: str | torch.device = "cpu"
                            ) -> tuple[dict, dict, Path]:
    """The contents of a run folder's ``joint.pt`` and ``hair.pt``, and joint.pt's path; both must
    exist, and joint.pt must have been trained with ``head`` (when it records its head model:
    runs of earlier versions do not, and are taken on trust)."""
    run_dir = Path(run_dir)
    joint_path, hair_path = run_dir / "joint.pt", run_dir / "hair.pt"
    from mega.train.gaussianavatars import is_gaussianavatars_run

    if is_gaussianavatars_run(run_dir):
        raise DataError(f"{run_dir}: a GaussianAvatars run (gaussianavatars.pt), not a MeGA avatar (joint.pt and "
                        f"hair.pt); this command reads MeGA avatars (mega evaluate reads both)")
    for path in (joint_path, hair_path):
        if not path.is_file():
            raise DataError(f"{path}: not found; train the avatar first (rules train_hair, train_joint)")
    joint = load_checkpoint(joint_path, device, "joint")
    recorded = joint.get("head_model")
    if recorded is not None and recorded != head.fingerprint():
        raise DataError(f"{joint_path}: trained with head model {recorded}, but the head model given is "
                        f"{head.fingerprint()}; an avatar renders, and exchanges parts, only under its own head "
                        f"model")
    return joint, load_checkpoint(hair_path, device, "hair"), joint_path


def deformation_field_of(config: HairConfig) -> DeformationField:
    """A fresh deformation field of the hair settings' shape, scale and precision."""
    return DeformationField(layers=config.deform_layers, frequencies=config.deform_frequencies,
                            scale=config.deform_scale, precision=config.deform_precision)


def hair_parts(joint: dict, hair_state: dict, joint_path: str | Path, device: str | torch.device
               ) -> tuple[GaussianHair, DeformationField, HairConfig]:
    """The canonical hair (joint.pt's where the joint stage trained its colours, hair.pt's
    otherwise), the deformation field and the hair settings (joint.pt's) of a trained avatar."""
    config = HairConfig.from_dict(joint["hair_config"], where=f"{joint_path} hair_config")
    hair = GaussianHair(0, config.sh_degree).to(device)
    hair.load_state_dict(joint["hair"] if "hair" in joint else hair_state["hair"])
    deformation = deformation_field_of(config).to(device)
    deformation.load_state_dict(joint["deformation"])
    return hair, deformation.eval(), config
