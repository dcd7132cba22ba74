"""Stage 1: optimise the neural mesh face on a subject (paper §4, "Optimizing Facial Mesh").

Outputs in the run folder:
    checkpoint.pt   model, per-frame FLAME parameters, optimizer, step (written atomically every
                    ``checkpoint_every`` steps; a rerun resumes from it)
    loss.csv        every loss term at every step
    face.pt         the trained face (model + frames + settings), at the end
    loss.png        loss curves
    metrics.json    val (novel view) and test (novel expression) metrics, time
    val/*.png       a few validation views: ground truth | render | diffuse only | error | depth error
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from mega.atomic import atomic_path, write_json
from mega.data.cache import MemoryCachedDataset
from mega.data.camera import Camera
from mega.data.flame_params import read_flame_params
from mega.data.gaussian_avatars import SubjectDataset, SubjectFrames, collate_samples
from mega.data.parsing import face_mask, hair_mask, head_mask
from mega.errors import TrainingError
from mega.eval.face_metrics import depth_mae_mm, psnr_frame, psnr_masked, summarize
from mega.face.config import FaceConfig
from mega.face.frames import LR_GROUP, FrameParameters
from mega.face.model import NeuralFace
from mega.flame.head_model import HeadModel
from mega import losses
from mega.report.training_figure import write_loss_figure
from mega.train.checkpoint import CsvLog, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

LOSS_TERMS = ("rgb", "ssim", "diffuse_rgb", "depth", "normal", "laplacian", "normal_consistency", "edges",
              "scalp_shrink")
# Settings that may change between an interrupted run and its resumption.
RESUMABLE = {"iterations", "checkpoint_every", "val_views", "cache_mb", "backend"}
SCALP_VISIBLE_M = 0.005
"""A scalp vertex counts as seen when it lies this close to the rendered depth at its pixel."""


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


def batch_indices(step: int, n_samples: int, batch_size: int, seed: int) -> list[int]:
    """The samples of ``step``: a fresh permutation per epoch, a function of (seed, step) alone,
    so that a resumed run draws exactly the batches the uninterrupted one would have."""
    batch_size = min(batch_size, n_samples)
    per_epoch = n_samples // batch_size
    epoch, position = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_samples, generator=generator)
    return order[position * batch_size:(position + 1) * batch_size].tolist()


def to_device(batch: dict, device: torch.device) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, Tensor):
            out[key] = value.to(device)
        elif isinstance(value, Camera):
            out[key] = value.to(device=device)
        elif isinstance(value, dict):
            out[key] = to_device(value, device)
        else:
            out[key] = value
    return out


def region_masks(batch: dict) -> tuple[Tensor, Tensor, Tensor]:
    """(hair, head, face) [B, 1, H, W] bool from the parsing labels; without parsing, the
    foreground is head and face, and nothing is hair."""
    if "parsing" in batch:
        labels = batch["parsing"]
        return hair_mask(labels)[:, None], head_mask(labels)[:, None], face_mask(labels)[:, None]
    fg = batch["fg_mask"] > 0.5
    return torch.zeros_like(fg), fg, fg


# ----------------------------------------------------------------------------- losses
def scalp_under_hair(model: NeuralFace, vertices: Tensor, depth: Tensor, hair: Tensor, cameras: Camera) -> Tensor:
    """[B, V] scalp vertices seen in this view where the parsing says hair (eq. 10's V_scalp)."""
    with torch.no_grad():
        pixels, z = cameras.project(vertices)
        H, W = depth.shape[-2:]
        col, row = pixels[..., 0].floor().long(), pixels[..., 1].floor().long()
        inside = (col >= 0) & (col < W) & (row >= 0) & (row < H) & (z > 0)
        flat = (row.clamp(0, H - 1) * W + col.clamp(0, W - 1))
        seen_depth = depth.flatten(1).gather(1, flat)
        on_hair = hair.flatten(1).gather(1, flat)
        visible = (seen_depth - z).abs() < SCALP_VISIBLE_M
        return inside & visible & on_hair & model.mesh.scalp[None]


def face_losses(model: NeuralFace, out: dict, batch: dict, config: FaceConfig) -> dict[str, Tensor]:
    """Every term of eq. 11, unweighted. Hair pixels are white in the target and left out of
    the photometric terms; depth and normal terms exist only when the subject has depth maps."""
    hair, head, _ = region_masks(batch)
    target = torch.where(hair, torch.ones_like(batch["image"]), batch["image"])
    keep = ~hair
    pred = torch.where(hair, torch.ones_like(out["rgb"]), out["rgb"])
    terms = {
        "rgb": losses.photometric_l2(out["rgb"], target, keep),
        "ssim": losses.dssim(pred, target),
        "diffuse_rgb": losses.photometric_l2(out["rgb_diffuse"], target, keep),
    }
    if "depth" in batch:
        region = head & out["mask"] & ~hair
        terms["depth"] = losses.depth_l1_mm(out["depth"], batch["depth"], region, config.depth_gate_mm)
        terms["normal"] = losses.normal_loss(out["depth"], batch["depth"], batch["camera"].intrinsics, region,
                                             config.depth_gate_mm)
    vertices, reference = out["vertices"], out["vertices_flame"]
    faces = model.mesh.faces
    terms["laplacian"] = losses.laplacian_smoothing(vertices, faces)
    terms["normal_consistency"] = losses.normal_consistency(vertices, faces, model.mesh.face_pairs)
    terms["edges"] = losses.edge_length(vertices, reference, model.mesh.edges)
    selected = scalp_under_hair(model, vertices.detach(), out["depth"][:, 0].detach(), hair[:, 0], batch["camera"])
    terms["scalp_shrink"] = losses.scalp_shrink(vertices, reference, selected)
    return terms


def weighted_total(terms: dict[str, Tensor], config: FaceConfig) -> Tensor:
    weights = {"rgb": config.w_rgb, "ssim": config.w_ssim, "diffuse_rgb": config.w_diffuse_rgb * config.w_rgb,
               "depth": config.w_depth, "normal": config.w_normal, "laplacian": config.w_laplacian,
               "normal_consistency": config.w_normal_consistency, "edges": config.w_edges,
               "scalp_shrink": config.w_scalp_shrink}
    return sum(weights[name] * value for name, value in terms.items())


# ----------------------------------------------------------------------------- setup
def build_optimizer(model: NeuralFace, frames: FrameParameters, config: FaceConfig) -> torch.optim.Adam:
    decoder = {id(p) for p in model.pixel_decoder.parameters()}
    groups = [{"name": "face", "params": [p for p in model.parameters() if id(p) not in decoder],
               "lr": config.learning_rate},
              {"name": "pixel_decoder", "params": list(model.pixel_decoder.parameters()),
               "lr": config.lr_pixel_decoder}]
    if config.optimize_flame:
        for name, params in frames.parameter_groups().items():
            groups.append({"name": f"flame_{name}", "params": params, "lr": getattr(config, LR_GROUP[name])})
    else:
        frames.requires_grad_(False)
    return torch.optim.Adam(groups, eps=1e-15)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _config_changes(saved: dict, config: FaceConfig) -> list[str]:
    now = config.to_dict()
    return [f"{k}: {saved.get(k)!r} → {now[k]!r}" for k in now if k not in RESUMABLE and saved.get(k) != now[k]]


def _check_finite(step: int, terms: dict[str, Tensor], total: Tensor, last_good: str) -> None:
    for name, value in list(terms.items()) + [("total", total)]:
        if not torch.isfinite(value):
            raise TrainingError(f"step {step}: loss '{name}' is {float(value.detach())}; stopped. {last_good}")


def _check_gradients(step: int, named: list[tuple[str, torch.nn.Parameter]], last_good: str) -> None:
    for name, p in named:
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            raise TrainingError(f"step {step}: the gradient of '{name}' is not finite; stopped. {last_good}")


# ----------------------------------------------------------------------------- training
def train_face(union_dir: str | Path, head: HeadModel, out_dir: str | Path, config: FaceConfig,
               variant: str = "mega", device: str = "auto", progress: bool = True, restart: bool = False,
               stop_after: int | None = None) -> dict:
    """Train (or resume) and evaluate the face; returns the metrics written to metrics.json.

    ``stop_after`` ends the run after that many steps with only the checkpoint written, as an
    interruption would (tests use it).
    """
    union_dir, out_dir = Path(union_dir).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(device)
    checkpoint_path = out_dir / "checkpoint.pt"

    torch.manual_seed(config.seed)
    dataset = SubjectDataset(union_dir, "train")
    data = MemoryCachedDataset(dataset, config.cache_mb * 2**20)
    frames = FrameParameters(frame_parameters_of(union_dir)).to(device)
    model = NeuralFace(head, config).to(device)
    optimizer = build_optimizer(model, frames, config)
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # before a checkpoint's decayed ones
    named = [(f"face.{n}", p) for n, p in model.named_parameters()] + \
            [(f"flame.{n}", p) for n, p in frames.named_parameters()]

    start = 0
    if checkpoint_path.is_file() and not restart:
        state = load_checkpoint(checkpoint_path, device)
        changes = _config_changes(state["config"], config)
        if changes or state.get("variant") != variant:
            raise TrainingError(f"{checkpoint_path} was written with other settings ({'; '.join(changes) or 'variant'}"
                                f"); delete it or pass --restart to start over")
        model.load_state_dict(model_weights(state))
        frames.load_state_dict(state["frames"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        log.info("resuming %s from step %d", checkpoint_path, start)
    columns = ["total", *LOSS_TERMS, "psnr_train", "seconds"]
    csv_log = CsvLog(out_dir / "loss.csv", columns, resume_step=start if start else None)
    last_good = (f"The last good checkpoint is {checkpoint_path} (step {start})." if start
                 else "No checkpoint was written yet.")

    def checkpoint(step: int) -> None:
        save_checkpoint(checkpoint_path, {"step": step, "model": model.state_dict(), "frames": frames.state_dict(),
                                          "optimizer": optimizer.state_dict(), "config": config.to_dict(),
                                          "variant": variant})
        csv_log.flush()

    end = config.iterations if stop_after is None else min(config.iterations, stop_after)
    # In a log file (a workflow job) a line every 30 s, not a redraw per step.
    bar = tqdm(total=config.iterations, initial=start, desc=f"train-face {variant}", unit="it", disable=not progress,
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)
    model.train()
    t0 = time.perf_counter()
    # Training time across interruptions: what the log had reached at the checkpoint.
    elapsed_before = float(csv_log.last_row["seconds"]) if csv_log.last_row else 0.0
    for step in range(start, end):
        # The rate is a function of the step alone, so a resumed run follows the same schedule.
        decay = config.lr_final_ratio ** (step / max(config.iterations - 1, 1))
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * decay
        indices = batch_indices(step, len(data), config.batch_size, config.seed)
        batch = to_device(collate_samples([data[i] for i in indices]), device)
        flame = frames(batch["timestep_index"])
        out = model(flame, batch["camera"])
        terms = face_losses(model, out, batch, config)
        total = weighted_total(terms, config)
        _check_finite(step + 1, terms, total, last_good)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        _check_gradients(step + 1, named, last_good)
        optimizer.step()

        with torch.no_grad():
            _, head_region, _ = region_masks(batch)
            train_psnr = psnr_masked(out["rgb"][0], batch["image"][0], (head_region & out["mask"])[0, 0])
        values = {name: float(v.detach()) for name, v in terms.items()}
        csv_log.write(step + 1, {"total": float(total.detach()), **values, "psnr_train": train_psnr,
                                 "seconds": elapsed_before + time.perf_counter() - t0})
        bar.update()
        if (step + 1) % 10 == 0:
            bar.set_postfix(loss=f"{float(total.detach()):.4f}", psnr=f"{train_psnr:.1f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == end:
            checkpoint(step + 1)
            last_good = f"The last good checkpoint is {checkpoint_path} (step {step + 1})."
    bar.close()
    csv_log.close()
    train_seconds = time.perf_counter() - t0
    if end < config.iterations:
        return {"stopped_at": end}

    face_path = out_dir / "face.pt"
    save_checkpoint(face_path, {"model": model.state_dict(), "frames": frames.state_dict(),
                                "config": config.to_dict(), "variant": variant, "iterations": config.iterations})
    write_loss_figure(out_dir / "loss.csv", out_dir / "loss.png", f"face training, {variant}")
    metrics = {"variant": variant, "iterations": config.iterations, "device": str(device),
               "train_seconds": round(elapsed_before + train_seconds, 1),
               "seconds_per_iteration": round(train_seconds / max(end - start, 1), 4)}
    for split in ("val", "test"):
        if (union_dir / f"transforms_{split}.json").is_file():
            metrics[split] = evaluate_face(model, frames, SubjectDataset(union_dir, split), device,
                                           out_dir / split if split == "val" else None, config.val_views)
    write_json(out_dir / "metrics.json", metrics)
    return metrics


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_face(model: NeuralFace, frames: FrameParameters, dataset: SubjectDataset, device: torch.device,
                  render_dir: Path | None = None, n_renders: int = 4, batch_size: int = 4) -> dict:
    """Per-image PSNR on head pixels (mean squared error over them), the same without the
    head's 1-pixel rim, the paper's masked full-frame PSNR, and depth MAE (mm) on the face
    region; means over the split."""
    model.eval()
    per_image = {"psnr_head": [], "psnr_head_interior": [], "psnr_frame": [], "depth_mae_face_mm": []}
    render_every = max(1, len(dataset) // max(n_renders, 1))
    for first in range(0, len(dataset), batch_size):
        indices = list(range(first, min(first + batch_size, len(dataset))))
        batch = to_device(collate_samples([dataset[i] for i in indices]), device)
        out = model(frames(batch["timestep_index"]), batch["camera"])
        _, head, face = region_masks(batch)
        for b, index in enumerate(indices):
            region = (head & out["mask"])[b, 0]
            per_image["psnr_head"].append(psnr_masked(out["rgb"][b], batch["image"][b], region))
            per_image["psnr_head_interior"].append(
                psnr_masked(out["rgb"][b], batch["image"][b], erode(region)))
            per_image["psnr_frame"].append(psnr_frame(out["rgb"][b], batch["image"][b], region))
            if "depth" in batch:
                per_image["depth_mae_face_mm"].append(
                    depth_mae_mm(out["depth"][b, 0], batch["depth"][b, 0], (face & out["mask"])[b, 0]))
            if render_dir is not None and index % render_every == 0 and index // render_every < n_renders:
                write_comparison(render_dir / f"{index:04d}.png", batch, out, b, region)
    model.train()
    summary = {k: round(summarize(v), 3) for k, v in per_image.items() if v}
    summary["n_images"] = len(dataset)
    return summary


def erode(mask: Tensor) -> Tensor:
    """[H, W] bool: the pixels whose 3 × 3 neighbourhood lies inside ``mask``. Drops the rim,
    where the ground truth blends the head with hair or background and no face render can match."""
    return ~torch.nn.functional.max_pool2d((~mask)[None, None].float(), 3, 1, 1)[0, 0].bool()


def write_comparison(path: Path, batch: dict, out: dict, b: int, region: Tensor) -> None:
    """ground truth | render | diffuse only | |error| × 4 on the head | depth error (0–5 mm)."""
    gt, rgb, diffuse = batch["image"][b], out["rgb"][b], out["rgb_diffuse"][b]
    error = ((rgb - gt).abs() * 4 * region).clamp(0, 1)
    panels = [gt, rgb, diffuse, error]
    if "depth" in batch:
        d = ((out["depth"][b] - batch["depth"][b]).abs() * 1000 / 5).clamp(0, 1) * region
        panels.append(torch.cat([d, 1 - d, 1 - d]) * region + (~region))
    strip = torch.cat(panels, dim=2).permute(1, 2, 0).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray((strip * 255 + 0.5).clip(0, 255).astype(np.uint8)).save(tmp)


def model_weights(state: dict) -> dict[str, Tensor]:
    """The model's weights from a checkpoint or face.pt. The mesh's arrays are rebuilt from the
    head model; files of earlier versions saved them too, and those entries are skipped."""
    return {k: v for k, v in state["model"].items() if not k.startswith("mesh.")}


def load_face(path: str | Path, head: HeadModel, device: str = "cpu") -> tuple[NeuralFace, FrameParameters]:
    """A trained face from ``face.pt`` (settings, weights, per-frame FLAME parameters)."""
    state = load_checkpoint(path, device)
    config = FaceConfig.from_dict(state["config"], where=str(path))
    model = NeuralFace(head, config).to(device)
    model.load_state_dict(model_weights(state))
    frames = FrameParameters.from_state_dict(state["frames"]).to(device)
    model.eval()
    return model, frames


__all__ = ["train_face", "evaluate_face", "load_face", "face_losses", "batch_indices", "LOSS_TERMS"]
