"""Stage 1: optimise the neural mesh face on a subject (paper §4, "Optimizing Facial Mesh").

The stage is its model, its parameter groups and its loss; :mod:`mega.train.loop` trains it.

Outputs in the run folder (``results/train/{subject}/{variant}/``):
    face.pt            the trained face (model + per-frame FLAME parameters + settings), at the end
    face/              the stage's work folder: checkpoint.pt, loss.csv, loss.png (see the loop),
                       metrics.json (val, val with refined parameters, test; time) and val/*.png
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mega import losses
from mega.atomic import write_json
from mega.data.flame_params import read_flame_params
from mega.data.gaussian_avatars import SubjectDataset, SubjectFrames, subject_extras
from mega.data.parsing import batch_regions
from mega.errors import ConfigError, DataError
from mega.eval.face import evaluate_face
from mega.face.config import FaceConfig
from mega.face.frames import LR_GROUP, FrameParameters
from mega.face.model import NeuralFace
from mega.flame.head_model import HeadModel
from mega.train.checkpoint import load_checkpoint, save_checkpoint
from mega.train.loop import LoopSettings, OnSettingsChange, ParameterGroup, pick_device, train

log = logging.getLogger(__name__)

LOSS_TERMS = ("rgb", "ssim", "diffuse_rgb", "depth", "normal", "laplacian", "normal_consistency", "edges",
              "scalp_shrink")
# Settings that may change between an interrupted run and its resumption.
RESUMABLE = {"epochs", "iterations", "checkpoint_every", "val_views", "cache_mb", "data_workers", "backend",
             "decoder_precision"}
MODEL_GROUPS = ("textures", "uv_encoding", "pixel_decoder", "displacement")
"""The face's parameter groups: the diffuse texture with the view and dynamic decoders; the
learned UV encoding; the pixel decoder; the displacement decoder. The joint stage trains the
first three and freezes the geometry (the displacement decoder and the FLAME tables)."""


# ----------------------------------------------------------------------------- data
def frame_parameters_of(union_dir: Path) -> dict[int, dict[str, np.ndarray]]:
    """FLAME parameters of every timestep of every split, from the tracking."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for split in ("train", "val", "test"):
        if not (union_dir / f"transforms_{split}.json").is_file():
            continue
        frames = SubjectFrames(union_dir, split)
        seen = {}
        for i, t in enumerate(frames.timestep):
            seen.setdefault(int(t), i)
        for t, i in seen.items():
            if t not in out:  # read the parameter file only, not the images
                out[t] = read_flame_params(frames.resolve(frames.flame_paths[i]))
    return out


def open_split(union_dir: Path, split: str, config: FaceConfig) -> SubjectDataset:
    """A split with its parsing and depth maps; no silent fallback when they are missing.

    Parsing is required unless ``require_parsing`` is off; then a subject without any trains
    with a warning. Depth maps are optional: without them the depth and normal terms are off
    (with a warning). Both are all or none across the subject's sequences
    (:func:`~mega.data.gaussian_avatars.subject_extras`)."""
    extras = subject_extras(union_dir)
    if config.require_parsing and not extras["parsing"]:
        raise DataError(f"{union_dir}: the subject has no face parsing (no sequence has a parsing/ folder). Face "
                        f"parsing tells the hair from the head; make it for this subject, or set the face setting "
                        f"require_parsing: false to train without (the mesh then fits the hair's silhouette)")
    if not extras["parsing"]:
        log.warning("%s split of %s has no face parsing: training without it (require_parsing is off); the mesh "
                    "will be fitted to the hair's silhouette", split, union_dir)
    if not extras["depths"]:
        log.warning("%s split of %s has no depth maps: the depth and normal terms are off", split, union_dir)
    return SubjectDataset(union_dir, split, parsing="require" if extras["parsing"] else "off",
                          depth="require" if extras["depths"] else "off")


# ----------------------------------------------------------------------------- losses
def face_targets(model: NeuralFace, out: dict, image: Tensor, hair: Tensor, hair_target: str
                 ) -> tuple[Tensor, Tensor]:
    """The targets [B, 3, H, W] of the face's full and diffuse renders (``out["rgb"]``,
    ``out["rgb_diffuse"]``) under the rule ``hair_target`` (FaceConfig): the ground truth ``image``
    with its hair pixels (``hair`` [B, 1, H, W] bool) white; under ``white_on_scalp`` the render's
    own value, detached, where hair hides a triangle off the scalp. The face and joint stages
    share it, so the joint stage does not teach white the skin the face stage left untaught."""
    target = losses.target_without_hair(image, hair)
    if hair_target == "white":
        return target, target
    # No error and no gradient where hair hides other triangles, and D-SSIM's windows see the
    # frame as it is rendered.
    free = losses.hair_over_other_triangles(hair, out["rast"][..., 3], model.mesh.scalp_faces)
    return torch.where(free, out["rgb"].detach(), target), torch.where(free, out["rgb_diffuse"].detach(), target)


def face_losses(model: NeuralFace, out: dict, batch: dict, config: FaceConfig) -> dict[str, Tensor]:
    """Every term of eq. 11, unweighted, as the authors compute them (see docs/face.md).

    Photometric terms compare whole frames against the ground truth with hair pixels white (or
    as ``config.hair_target`` says: :func:`face_targets`); depth and normal terms exist only when
    the subject has depth maps."""
    hair, head, _ = batch_regions(batch)
    triangle_id = out["rast"][..., 3]
    mesh = model.mesh
    target, target_diffuse = face_targets(model, out, batch["image"], hair, config.hair_target)
    terms = {
        "rgb": losses.photometric_l2(out["rgb"], target),
        "ssim": losses.dssim(out["rgb"], target),
        "diffuse_rgb": losses.photometric_l2(out["rgb_diffuse"], target_diffuse),
    }
    if "depth" in batch:
        supervised = losses.seam_free_mask(head, triangle_id, mesh.faces.shape[0])
        terms["depth"], gate = losses.depth_l1_mm(out["depth"], batch["depth"], supervised, config.depth_gate_mm)
        terms["normal"] = losses.normal_loss(out["depth"], batch["depth"], supervised, gate)
    vertices, reference = out["vertices"], out["vertices_flame"]
    terms["laplacian"] = losses.laplacian_smoothing(vertices, mesh.faces)
    terms["normal_consistency"] = losses.normal_consistency(vertices, mesh.faces, mesh.face_pairs)
    terms["edges"] = losses.edge_length(vertices, reference, mesh.edges, mesh.edge_keep)
    selected = losses.vertices_seen_in(hair, triangle_id, mesh.faces, mesh.n_vertices)
    terms["scalp_shrink"] = losses.scalp_shrink(vertices, reference[:, mesh.scalp_index], selected)
    return terms


def loss_weights(config: FaceConfig) -> dict[str, float]:
    """Eq. 11's weights; the diffuse-only term is 3 λ_p."""
    return {"rgb": config.w_rgb, "ssim": config.w_ssim, "diffuse_rgb": config.w_diffuse_rgb * config.w_rgb,
            "depth": config.w_depth, "normal": config.w_normal, "laplacian": config.w_laplacian,
            "normal_consistency": config.w_normal_consistency, "edges": config.w_edges,
            "scalp_shrink": config.w_scalp_shrink}


def weighted_total(terms: dict[str, Tensor], config: FaceConfig) -> Tensor:
    weights = loss_weights(config)
    return sum(weights[name] * value for name, value in terms.items())


# ----------------------------------------------------------------------------- the stage
class FaceStage:
    """The face as the loop trains it. ``frozen`` names groups to keep fixed (of
    :data:`MODEL_GROUPS` and ``flame_<table>``)."""

    name = "face"
    loss_terms = LOSS_TERMS
    extra_columns = ("psnr_train",)

    def __init__(self, model: NeuralFace, frames: FrameParameters, config: FaceConfig,
                 frozen: Sequence[str] = ()):
        self.model, self.frames, self.config = model, frames, config
        known = set(MODEL_GROUPS) | {f"flame_{name}" for name in LR_GROUP}
        unknown = sorted(set(frozen) - known)
        if unknown:
            raise ConfigError(f"unknown face parameter groups {unknown} (known: {', '.join(sorted(known))})")
        self.frozen = set(frozen)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "frames": self.frames}

    def parameter_groups(self) -> list[ParameterGroup]:
        m, c = self.model, self.config
        decoders = [d for d in (m.view_decoder, m.dynamic_decoder) if d is not None]
        groups = [
            ParameterGroup("textures", [m.diffuse_texture] + [p for d in decoders for p in d.parameters()],
                           c.learning_rate),
            ParameterGroup("uv_encoding", list(m.uv_encoding.parameters()), c.learning_rate),
            ParameterGroup("pixel_decoder", list(m.pixel_decoder.parameters()), c.lr_pixel_decoder),
            ParameterGroup("displacement", list(m.displacement_decoder.parameters())
                           if m.displacement_decoder is not None else [], c.learning_rate),
        ]
        for name, params in self.frames.parameter_groups().items():
            groups.append(ParameterGroup(f"flame_{name}", params, getattr(c, LR_GROUP[name]),
                                         trainable=c.optimize_flame))
        covered = {id(p) for g in groups for p in g.params}
        missing = [n for n, p in m.named_parameters() if id(p) not in covered]
        assert not missing, f"parameters outside every group: {missing}"
        for group in groups:
            group.trainable = group.trainable and group.name not in self.frozen
        return groups

    def step(self, batch: dict) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        out = self.model(self.frames(batch["timestep_index"]), batch["camera"])
        terms = face_losses(self.model, out, batch, self.config)
        with torch.no_grad():
            _, head, _ = batch_regions(batch)
            region = (head & out["mask"]).expand_as(out["rgb"])
            mse = ((out["rgb"] - batch["image"]) ** 2 * region).sum() / region.sum().clamp_min(1)
            psnr = -10 * torch.log10(mse.clamp_min(1e-12))
        return weighted_total(terms, self.config), terms, {"psnr_train": psnr}


# ----------------------------------------------------------------------------- training
def train_face(union_dir: str | Path, head: HeadModel, run_dir: str | Path, config: FaceConfig,
               variant: str = "mega", device: str = "auto", progress: bool = True, restart: bool = False,
               on_settings_change: OnSettingsChange = "fail", stop_after: int | None = None) -> dict:
    """Train (or resume) and evaluate the face; returns the metrics written to face/metrics.json.

    ``stop_after`` ends the run after that many steps with only the checkpoint written, as an
    interruption would (tests use it)."""
    union_dir, run_dir = Path(union_dir).resolve(), Path(run_dir)
    work_dir = run_dir / "face"
    device = pick_device(device)

    torch.manual_seed(config.seed)
    dataset = open_split(union_dir, "train", config)
    frames = FrameParameters(frame_parameters_of(union_dir)).to(device)
    model = NeuralFace(head, config).to(device)
    stage = FaceStage(model, frames, config)
    steps = config.steps_for(len(dataset))
    settings = LoopSettings(steps=steps, batch_size=config.batch_size, seed=config.seed,
                            checkpoint_every=config.checkpoint_every, lr_final_ratio=config.lr_final_ratio,
                            data_workers=config.data_workers, cache_mb=config.cache_mb)
    log.info("face stage: %d training images, batch %d, %d steps", len(dataset), config.batch_size, steps)
    result = train(stage, dataset, work_dir, settings, fingerprint={**config.to_dict(), "variant": variant},
                   device=device, resumable=RESUMABLE, progress=progress, restart=restart,
                   on_settings_change=on_settings_change, stop_after=stop_after,
                   fingerprint_defaults=FaceConfig.defaults())
    if not result.finished:
        return {"stopped_at": result.steps_done}

    save_checkpoint(run_dir / "face.pt", {"model": model.state_dict(), "frames": frames.state_dict(),
                                          "config": config.to_dict(), "variant": variant, "iterations": steps})
    metrics = {"variant": variant, "iterations": steps, "epochs": round(steps * config.batch_size / len(dataset), 2),
               "device": str(device), "train_seconds": round(result.seconds, 1),
               "seconds_per_iteration": round(result.seconds_this_run / max(steps - result.started_at, 1), 4)}
    for split in ("val", "test"):
        if not (union_dir / f"transforms_{split}.json").is_file():
            continue
        data = open_split(union_dir, split, config)
        renders = work_dir / split if split == "val" else None
        # The authors' protocol: the refined shape with the tracked expression and pose.
        metrics[split] = evaluate_face(model, frames, data, device, renders, config.val_views, refined=False)
        if split == "val":  # the same views with the per-frame parameters refined in training
            metrics["val_refined"] = evaluate_face(model, frames, data, device, None, refined=True)
    write_json(work_dir / "metrics.json", metrics)
    return metrics


def model_weights(state: dict) -> dict[str, Tensor]:
    """The model's weights from a checkpoint or face.pt. The mesh's arrays are rebuilt from the
    head model; files of earlier versions saved them too, and those entries are skipped."""
    return {k: v for k, v in state["model"].items() if not k.startswith("mesh.")}


def load_face(path: str | Path, head: HeadModel, device: str = "cpu") -> tuple[NeuralFace, FrameParameters]:
    """A trained face from ``face.pt`` (settings, weights, per-frame FLAME parameters)."""
    state = load_checkpoint(path, device, "face")
    config = FaceConfig.from_dict(state["config"], where=str(path))
    model = NeuralFace(head, config).to(device)
    model.load_state_dict(model_weights(state))
    frames = FrameParameters.from_state_dict(state["frames"]).to(device)
    model.eval()
    return model, frames


__all__ = ["train_face", "load_face", "face_losses", "FaceStage", "LOSS_TERMS", "MODEL_GROUPS", "open_split"]
