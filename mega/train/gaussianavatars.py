"""The GaussianAvatars baseline (Qian et al., CVPR 2024) trained on the shared loop.

Gaussians bound to the triangles of FLAME with teeth (no subdivision), one per triangle at the
start, posed each step on the frame's FLAME mesh; the loss is the authors' (1 − λ)·L1 + λ·D-SSIM
of the render over white against the ground truth over white, plus the position and scale
regularisers on the Gaussians the image sees; the per-frame FLAME parameters (expression; global
rotation, neck, jaw and eyes; translation) are fine-tuned at the authors' rates, the shape stays
the tracked one. Settings: :class:`~mega.gaussianavatars.config.GaussianAvatarsConfig`.

Outputs in the run folder:
    gaussianavatars.pt   the Gaussians and their binding, the fine-tuned frames, the settings
    gaussianavatars/     checkpoint.pt, loss.csv, loss.png (the loop's), metrics.json
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from mega import losses
from mega.atomic import write_json
from mega.data.gaussian_avatars import SubjectDataset
from mega.errors import DataError
from mega.face.frames import FRAME_GROUPS, FrameParameters
from mega.flame.enhance import enhance
from mega.flame.head_model import HeadModel
from mega.flame.model import FlameModel
from mega.gaussianavatars.config import GaussianAvatarsConfig
from mega.gaussianavatars.densify import BindingDensifier
from mega.gaussianavatars.model import BoundGaussians
from mega.hair.densify import DensifyState
from mega.hair.render import render_hair
from mega.train.checkpoint import save_checkpoint
from mega.train.face import frame_parameters_of
from mega.train.hair import scene_extent_m
from mega.train.loop import LoopSettings, OnSettingsChange, ParameterGroup, pick_device, train

log = logging.getLogger(__name__)

METHOD = "gaussianavatars"
LOSS_TERMS = ("l1", "dssim", "position", "scale")
RESUMABLE = {"iterations_images", "checkpoint_every", "cache_mb", "data_workers", "gaussian_backend"}
FLAME_LR = {"expr": "lr_flame_expr", "rotation": "lr_flame_pose", "neck_pose": "lr_flame_pose",
            "jaw_pose": "lr_flame_pose", "eyes_pose": "lr_flame_pose", "translation": "lr_flame_translation"}
"""The authors' rate of each per-frame FLAME table (``flame_gaussian_model.py::training_setup``)."""


def is_gaussianavatars_run(run_dir: str | Path) -> bool:
    """Whether a run folder holds the baseline (``gaussianavatars.pt``) rather than a MeGA avatar
    (``joint.pt``)."""
    run_dir = Path(run_dir)
    return (run_dir / f"{METHOD}.pt").is_file() and not (run_dir / "joint.pt").is_file()


def head_mesh(head: HeadModel, config: GaussianAvatarsConfig) -> FlameModel:
    """FLAME with the teeth of the enhanced mesh, not subdivided (the authors' ``add_teeth``)."""
    return FlameModel(enhance(head, subdivision=False, teeth=config.teeth), persistent=False)


def over_white(batch: dict) -> Tensor:
    """The ground truth composited on white by its foreground mask [B, 3, H, W], as the authors'
    loader composites it on the background they train with."""
    return batch["image"] * batch["fg_mask"] + (1.0 - batch["fg_mask"])


class GaussianAvatarsHead(nn.Module):
    """The trained baseline: bound Gaussians on a FLAME mesh, posed by per-frame parameters."""

    def __init__(self, mesh: FlameModel, gaussians: BoundGaussians, config: GaussianAvatarsConfig):
        super().__init__()
        self.mesh, self.gaussians, self.config = mesh, gaussians, config

    def forward(self, flame: dict[str, Tensor], cameras) -> dict:
        """Render B frames: flame as :class:`FrameParameters` gives it, cameras batched [B].
        Returns render_hair's outputs (rgb over white [B, 3, H, W], alpha, depth, means2d, radii)
        with the posed Gaussians' triangle sizes ``size`` [B, N]."""
        vertices = self.mesh(**flame)
        world = self.gaussians.world(vertices, self.mesh.faces)
        out = render_hair(world, cameras, int(self.gaussians.active_degree), early_stop_gap_m=None,
                          backend=self.config.gaussian_backend)
        out["size"] = world["size"]
        return out


class GaussianAvatarsStage:
    name = METHOD
    loss_terms = LOSS_TERMS
    extra_columns = ("psnr", "n_gaussians")

    def __init__(self, head: GaussianAvatarsHead, frames: FrameParameters, densifier: BindingDensifier,
                 extent_m: float, total_steps: int):
        self.head, self.frames, self.densifier = head, frames, densifier
        self.extent_m, self.total_steps = extent_m, total_steps
        self.config = head.config
        self._out: dict | None = None

    @property
    def gaussians(self) -> BoundGaussians:
        return self.head.gaussians

    def modules(self) -> dict[str, nn.Module]:
        return {"gaussians": self.gaussians, "frames": self.frames, "densify": self.densifier.state}

    def parameter_groups(self) -> list[ParameterGroup]:
        c, p = self.config, self.gaussians.params
        # The position rate decays log-linearly to lr_position_final over the whole schedule (the
        # authors' position_lr_max_steps is their iteration count), × the scene extent as theirs.
        groups = [ParameterGroup("means", [p["means"]], c.lr_position * self.extent_m,
                                 lr_final_ratio=c.lr_position_final / c.lr_position),
                  ParameterGroup("quats", [p["quats"]], c.lr_rotation),
                  ParameterGroup("scales", [p["scales"]], c.lr_scaling),
                  ParameterGroup("opacities", [p["opacities"]], c.lr_opacity),
                  ParameterGroup("sh0", [p["sh0"]], c.lr_sh),
                  ParameterGroup("shN", [p["shN"]], c.lr_sh / 20)]
        tables = self.frames.parameter_groups()
        groups += [ParameterGroup(f"flame_{name}", tables[name], getattr(c, FLAME_LR[name]),
                                  trainable=c.finetune_flame) for name in FRAME_GROUPS]
        groups.append(ParameterGroup("flame_shape", tables["shape"], 0.0, trainable=False))
        return groups

    def begin_step(self, step: int) -> None:
        self.gaussians.raise_degree(step, self.config.images_to_steps(self.config.sh_degree_every_images))

    def step(self, batch: dict) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        c = self.config
        out = self.head(self.frames(batch["timestep_index"]), batch["camera"])
        self._out = out
        target = over_white(batch)
        visible = out["radii"] > 0
        terms = {"l1": (out["rgb"] - target).abs().mean(), "dssim": losses.dssim(out["rgb"], target),
                 "position": losses.position_regulariser(self.gaussians.params["means"], visible, c.position_threshold),
                 "scale": losses.scale_regulariser(self.gaussians.params["scales"], visible, c.scale_threshold)}
        total = ((1 - c.w_dssim) * terms["l1"] + c.w_dssim * terms["dssim"] + c.w_position * terms["position"]
                 + c.w_scale * terms["scale"])
        with torch.no_grad():
            mse = (out["rgb"].clamp(0, 1) - target).square().mean()
            psnr = -10 * torch.log10(mse.clamp_min(1e-10))
        return total, terms, {"psnr": psnr, "n_gaussians": psnr.new_tensor(float(self.gaussians.n))}

    def after_backward(self, step: int, optimizer: torch.optim.Optimizer) -> bool:
        out, self._out = self._out, None
        W, H = out["render_size"]
        return self.densifier.after_backward(step, self.gaussians, optimizer, out["means2d"], out["radii"], W, H,
                                             out["size"][0])


def train_gaussianavatars(union_dir: str | Path, head: HeadModel, run_dir: str | Path, config: GaussianAvatarsConfig,
                          device: str = "auto", progress: bool = True, restart: bool = False,
                          on_settings_change: OnSettingsChange = "fail", stop_after: int | None = None) -> dict:
    """Train (or resume) the baseline in ``run_dir``; returns gaussianavatars/metrics.json's content."""
    union_dir, run_dir = Path(union_dir).resolve(), Path(run_dir)
    work_dir = run_dir / METHOD
    device = pick_device(device)
    torch.manual_seed(config.seed)

    dataset = SubjectDataset(union_dir, "train", parsing="off", depth="off")
    frames = FrameParameters(frame_parameters_of(union_dir)).to(device)
    mesh = head_mesh(head, config).to(device)
    generator = torch.Generator().manual_seed(config.seed)
    gaussians = BoundGaussians.one_per_triangle(mesh.faces.shape[0], config.sh_degree, config.init_opacity,
                                                generator).to(device)
    model = GaussianAvatarsHead(mesh, gaussians, config)
    extent = scene_extent_m(dataset)
    steps = config.steps
    densifier = BindingDensifier(config, extent, DensifyState(gaussians.n).to(device), steps)
    stage = GaussianAvatarsStage(model, frames, densifier, extent, steps)
    settings = LoopSettings(steps=steps, batch_size=config.batch_size, seed=config.seed,
                            checkpoint_every=config.checkpoint_every, data_workers=config.data_workers,
                            cache_mb=config.cache_mb)
    log.info("%s: %d training images, %d triangles, batch %d, %d steps, scene extent %.3f m", METHOD, len(dataset),
             gaussians.n, config.batch_size, steps, extent)
    fingerprint = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE}
    result = train(stage, dataset, work_dir, settings, fingerprint=fingerprint, device=device, resumable=RESUMABLE,
                   progress=progress, restart=restart, on_settings_change=on_settings_change, stop_after=stop_after,
                   fingerprint_defaults=GaussianAvatarsConfig.defaults())
    if not result.finished:
        return {"stopped_at": result.steps_done}
    save_checkpoint(run_dir / f"{METHOD}.pt", {"method": METHOD, "gaussians": gaussians.state_dict(),
                                               "frames": frames.state_dict(), "config": config.to_dict(),
                                               "n_faces": gaussians.n_faces, "iterations": steps,
                                               "head_model": head.fingerprint()})
    metrics = {"method": METHOD, "iterations": steps, "device": str(device), "train_seconds": round(result.seconds, 1),
               "seconds_per_iteration": round(result.seconds_this_run / max(steps - result.started_at, 1), 4),
               "n_gaussians": gaussians.n,
               "training_views": training_view_psnr(model, frames, dataset, device)}
    write_json(work_dir / "metrics.json", metrics)
    return metrics


def training_view_psnr(model: GaussianAvatarsHead, frames: FrameParameters, dataset, device: torch.device,
                       most: int = 40) -> dict:
    """PSNR on at most ``most`` training images spread over the split (all of a small one)."""
    from torch.utils.data import Subset

    picked = torch.linspace(0, len(dataset) - 1, min(most, len(dataset))).round().long().unique().tolist()
    return {"psnr": round(psnr_on(model, frames, Subset(dataset, picked), device), 3), "n_images": len(picked)}


@torch.no_grad()
def psnr_on(model: GaussianAvatarsHead, frames: FrameParameters, dataset, device: torch.device,
            batch_size: int = 4) -> float:
    """Mean PSNR (dB) of the 8-bit renders against the ground truth over white, over ``dataset``
    (the training images: a check of the fit, not of generalisation)."""
    from mega.data.gaussian_avatars import collate_samples, to_device
    from mega.eval.face_metrics import as_8bit, summarize

    values = []
    for first in range(0, len(dataset), batch_size):
        batch = to_device(collate_samples([dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]),
                          device)
        rgb = as_8bit(model(frames(batch["timestep_index"]), batch["camera"])["rgb"])
        mse = (rgb - over_white(batch)).square().flatten(1).mean(1)
        values += (-10 * torch.log10(mse.clamp_min(1e-10))).tolist()
    return summarize(values)


def load_gaussianavatars(path: str | Path, head: HeadModel,
                         device: str | torch.device = "cpu") -> tuple[GaussianAvatarsHead, FrameParameters]:
    """A trained baseline from ``gaussianavatars.pt`` (the Gaussians, their frames, the settings),
    or from the run folder holding it."""
    from mega.train.checkpoint import load_checkpoint

    path = Path(path)
    if path.is_dir():
        if not (path / f"{METHOD}.pt").is_file() and (path / "joint.pt").is_file():
            raise DataError(f"{path}: a MeGA avatar (joint.pt), not a GaussianAvatars run (gaussianavatars.pt)")
        path = path / f"{METHOD}.pt"
    if not path.is_file():
        raise DataError(f"{path}: not found; train the baseline first (mega train-gaussianavatars)")
    state = load_checkpoint(path, device)
    if state.get("method") != METHOD:
        raise DataError(f"{path}: not a GaussianAvatars checkpoint (method {state.get('method')!r})")
    recorded = state.get("head_model")
    if recorded is not None and recorded != head.fingerprint():
        raise DataError(f"{path}: trained with head model {recorded}, but the head model given is "
                        f"{head.fingerprint()}; pass the head model the run was trained with")
    config = GaussianAvatarsConfig.from_dict(state["config"], where=str(path))
    mesh = head_mesh(head, config).to(device)
    if mesh.faces.shape[0] != state["n_faces"]:
        raise DataError(f"{path}: the Gaussians are bound to a mesh of {state['n_faces']} triangles, but the head "
                        f"model gives {mesh.faces.shape[0]}; pass the head model the run was trained with")
    gaussians = BoundGaussians(1, state["n_faces"], config.sh_degree).to(device)
    gaussians.load_state_dict(state["gaussians"])
    frames = FrameParameters.from_state_dict(state["frames"]).to(device)
    model = GaussianAvatarsHead(mesh, gaussians, config).eval()
    return model, frames
