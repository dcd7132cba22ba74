"""One joint-stage training step of a real-size avatar: milliseconds and peak memory, and the
projected time of the authors' joint schedule for one subject.

    python benchmarks/joint_step.py --device cuda [--gaussian-backend triton] [--decoder-precision bfloat16]
    python benchmarks/joint_step.py --device cpu --tex-size 256 --gaussians 5000 --batch 2 \\
        --width 138 --height 200 --steps 2          # a quick check that the script runs

Real size by default: the face at the authors' settings (FaceConfig(): 1024² neural textures),
150k hair Gaussians (HairConfig(): 50k on and 100k off the scalp), 550 × 802 images, the
authors' joint batch (HairConfig().joint_batch_size). Weights are untrained (the step's cost
does not depend on them): the face is a fresh NeuralFace on the workflow's head model with the
synthetic subject's FLAME parameters (from its stage-1 face.pt), the hair is initialised as the
canonical-hair stage does and made opaque, and the batch is the synthetic subject's training
images resized to the real size. A step is what the shared loop does: the stage's loss,
backward, Adam. Needs the workflow's results/ for the synthetic subject (`snakemake --cores 2
results/train/synthetic/mega/face.pt results/preprocess/synthetic/hair_rigid.npz`).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F

from mega.avatar import Avatar, RigidTable
from mega.data.gaussian_avatars import collate_samples, to_device
from mega.data.synth import synthesized_union
from mega.face.config import DECODER_PRECISIONS, FaceConfig
from mega.face.model import NeuralFace
from mega.flame.head_model import load_head_model_folder
from mega.hair.config import HairConfig
from mega.hair.deform import DeformationField
from mega.hair.rigid import read_hair_rigid
from mega.render.gaussians import GAUSSIAN_BACKENDS
from mega.train.face import load_face
from mega.train.hair import initial_hair, open_hair_split
from mega.train.joint import JointStage

# A NeRSemble subject as the paper trains it: 16 cameras × about 1,900 timesteps of its
# sequences (the "30k images").
REAL_SUBJECT_IMAGES = 30_000


def resized_batch(batch: dict, width: int, height: int) -> dict:
    """The batch's images, masks and parsing resampled to width × height, its cameras rescaled."""
    out = dict(batch)
    out["image"] = F.interpolate(batch["image"], size=(height, width), mode="bilinear", align_corners=False)
    out["fg_mask"] = F.interpolate(batch["fg_mask"], size=(height, width), mode="nearest")
    out["parsing"] = F.interpolate(batch["parsing"][:, None].float(), size=(height, width), mode="nearest")[:, 0].long()
    out["camera"] = batch["camera"].resized(width, height)
    return out


def driver_version() -> str:
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30)
        return result.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tex-size", type=int, default=FaceConfig().tex_size)
    parser.add_argument("--gaussians", type=int, default=HairConfig().init_on_scalp + HairConfig().init_off_scalp)
    parser.add_argument("--batch", type=int, default=HairConfig().joint_batch_size)
    parser.add_argument("--width", type=int, default=550)
    parser.add_argument("--height", type=int, default=802)
    parser.add_argument("--gaussian-backend", default="auto", choices=GAUSSIAN_BACKENDS)
    parser.add_argument("--decoder-precision", default="float32", choices=DECODER_PRECISIONS,
                        help="the view and dynamic texture decoders' arithmetic (FaceConfig.decoder_precision)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = Path(args.results)
    union = synthesized_union(results / "data" / "synthetic")

    head = load_head_model_folder(results / "head_model")
    _, frames = load_face(results / "train" / "synthetic" / "mega" / "face.pt", head)
    face_config = FaceConfig(tex_size=args.tex_size, decoder_precision=args.decoder_precision)
    face, frames = NeuralFace(head, face_config).to(device), frames.to(device)
    n_on = args.gaussians // 3
    config = HairConfig(init_on_scalp=n_on, init_off_scalp=args.gaussians - n_on,
                        gaussian_backend=args.gaussian_backend)
    rigid_file = read_hair_rigid(results / "preprocess" / "synthetic" / "hair_rigid.npz")
    started = time.perf_counter()
    hair = initial_hair(face, frames, int(rigid_file["canonical_timestep"]), config)
    with torch.no_grad():  # opaque enough to render like trained hair
        hair.params["opacities"].fill_(2.0)
    init_seconds = time.perf_counter() - started
    hair = hair.to(device)
    rigid = RigidTable(rigid_file["timestep"], rigid_file["rotation"], rigid_file["translation"]).to(device)
    avatar = Avatar(face, hair, DeformationField().to(device), config)
    stage = JointStage(avatar, frames, rigid, config)
    groups = stage.parameter_groups()
    for group in groups:
        for p in group.params:
            p.requires_grad_(group.trainable)
    trainable = [g for g in groups if g.trainable and g.params]
    optimizer = torch.optim.Adam([{"params": g.params, "lr": g.lr} for g in trainable], eps=1e-15)

    train = open_hair_split(union, "train")
    samples = [train[i % len(train)] for i in range(args.batch)]
    batch = to_device(resized_batch(collate_samples(samples), args.width, args.height), device)

    def step() -> None:
        stage.begin_step(0)
        total, _, _ = stage.step(batch)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    step()  # warm-up: kernels compiled, memory pools filled
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        synchronize(device)
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        memory = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GB peak CUDA memory"
        versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}, driver {driver_version()}"
    else:
        name = platform.processor() or platform.machine()
        memory = f"{psutil.Process().memory_info().rss / 2**30:.2f} GB resident"
        versions = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    steps = config.joint_steps_for(REAL_SUBJECT_IMAGES)
    print(f"machine: {name}; {versions}")
    print(f"joint step: textures {args.tex_size}², {hair.n:,} Gaussians, {args.width} × {args.height}, "
          f"batch {args.batch}, Gaussian backend {args.gaussian_backend}, texture decoders in {args.decoder_precision}")
    print(f"  {seconds * 1000:.1f} ms per step (median of {args.steps}; min {min(times) * 1000:.1f}), {memory}")
    print(f"  hair initialisation {init_seconds:.1f} s")
    print(f"  authors' joint schedule: {config.joint_epochs} epochs of {REAL_SUBJECT_IMAGES:,} images at batch "
          f"{config.joint_batch_size} = {steps:,} steps → {steps * seconds / 3600:.1f} h at this step time"
          + ("" if args.batch == config.joint_batch_size else f" (measured at batch {args.batch}: not the authors')"))


if __name__ == "__main__":
    main()
