"""Seconds per training step of the face stage at the synthetic subject's default size.

    snakemake --cores 2 results/data/synthetic/summary.json results/head_model/summary.json
    python benchmarks/face_step.py [--threads 2] [--steps 10]

Times `FaceStage.step` (forward, every loss term) plus the backward pass on batches of the
synthetic subject decoded beforehand (no data loading), with the settings of config.yaml's
`synthetic.face`, after two warm-up steps; prints the median and the forward/backward split.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from mega.data.gaussian_avatars import SubjectDataset, collate_samples
from mega.data.synth import synthesized_union
from mega.face.config import FaceConfig
from mega.face.frames import FrameParameters
from mega.face.model import NeuralFace
from mega.flame.head_model import load_head_model_folder
from mega.train.face import FaceStage, frame_parameters_of
from mega.train.loop import batch_indices

SYNTHETIC_FACE = {"tex_size": 128, "disp_size": 64, "uv_encoding_size": 256, "batch_size": 4, "backend": "torch"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    union = synthesized_union(results / "data" / "synthetic")
    config = FaceConfig(**SYNTHETIC_FACE)
    model = NeuralFace(load_head_model_folder(results / "head_model"), config)
    frames = FrameParameters(frame_parameters_of(union))
    stage = FaceStage(model, frames, config)
    dataset = SubjectDataset(union, "train")
    batches = [collate_samples([dataset[i] for i in batch_indices(s, len(dataset), config.batch_size, 0)])
               for s in range(args.steps + 2)]
    forward, backward = [], []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        total, _, _ = stage.step(batch)
        t1 = time.perf_counter()
        total.backward()
        t2 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        if i >= 2:
            forward.append(t1 - t0)
            backward.append(t2 - t1)
    steps = [f + b for f, b in zip(forward, backward)]
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {args.threads} threads; "
          f"{len(dataset)} train images at {dataset[0]['image'].shape[2]}x{dataset[0]['image'].shape[1]}, batch "
          f"{config.batch_size}, textures {config.tex_size}²")
    print(f"step {statistics.median(steps):.3f} s (forward + losses {statistics.median(forward):.3f} s, "
          f"backward {statistics.median(backward):.3f} s), median of {len(steps)}")


if __name__ == "__main__":
    main()
