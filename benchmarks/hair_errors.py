"""Where a trained avatar's error on a split comes from: the hair it misses, the hair it covers in
the wrong colour, the hair it spills where there is none, and the face.

    python benchmarks/hair_errors.py --subjects synthetic synthetic_long [--split val] [--run mega]

Renders the split as `mega evaluate` does (the evaluation's blend, tracked expression and pose,
8-bit rounding) and splits the frame's squared error (the paper's protocol: render and ground truth
× the object mask × the rendered full mask, mean over the whole frame) by pixel class, from the
parsing's hair mask and the blend's Â_hair > 0.5:
  - missed hair: ground-truth hair the render does not cover;
  - covered hair: ground-truth hair the render covers;
  - spilled hair: rendered hair where the ground truth has none;
  - the rest (face, neck, background under the masks).
Each class: its share of the frame's pixels, its share of the frame's squared error, and the PSNR
the frame would have if that class's error were zero. Then, for the covered hair: its PSNR per
pixel, its mean colour error (a bias a colour fix could remove), and the share of its squared
error that is coarser than strands: the error averaged over a Gaussian of σ 1.5 px (within the
covered hair); the rest is strand-scale detail. Last, the parsing's face region: its PSNR per
pixel within 3 px of the ground truth's hair (where hair hangs over or borders the face) and
farther from it.

    python benchmarks/hair_errors.py --subjects long_seed11 \\
        --run ../../benchmarks/avatar_variants/long_seed11/seed42/omega10

`--by-frame` adds, per subject, a table by timestep: the frame's PSNR and the covered hair's PSNR
per pixel on each timestep of the split, beside the canonical frame's (the one the canonical hair
was fitted to; its hair differs from the others' only by the rigid motion and what the
deformation field models).

`--blur-hair σ [σ ...]` adds, per subject, the frame's PSNR when the render's hair is blurred by a
Gaussian of σ px before the error is taken (rgb + Â_hair · (blur(rgb) − rgb), the render's own hair
weight, no ground truth): whether the avatar's hair is noisier from this split's cameras than a
smoother render would be (compare `--split val` with `--split train`).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d

from mega.avatar import RigidTable
from mega.data.gaussian_avatars import SubjectDataset, collate_samples
from mega.data.parsing import batch_regions, object_mask
from mega.data.synth import synthesized_union
from mega.eval.avatar import full_mask
from mega.eval.face import driving_parameters
from mega.eval.face_metrics import as_8bit
from mega.flame.head_model import load_head_model_folder
from mega.train.joint import load_avatar

CLASSES = ("missed hair", "covered hair", "spilled hair", "rest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", nargs="+", default=["synthetic", "synthetic_long"])
    parser.add_argument("--results", default="results")
    parser.add_argument("--run", default="mega", help="the run folder under results/train/<subject>/ (or a path "
                        "relative to it)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--near-z", choices=("1st", "2nd"), default="2nd",
                        help="which near-z the evaluation's occlusion test reads (2nd: the authors' evaluation)")
    parser.add_argument("--by-frame", action="store_true", help="also a table by timestep")
    parser.add_argument("--blur-hair", type=float, nargs="*", default=[], metavar="SIGMA",
                        help="also the frame PSNR with the render's hair blurred by each σ (px)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    head = load_head_model_folder(results / "head_model")
    print(f"split {args.split}; per class: share of the frame's pixels / share of its squared error / frame "
          f"PSNR without that class's error (dB)\n")
    print("| subject | frame PSNR | " + " | ".join(CLASSES) + " | covered hair: PSNR per pixel / mean error "
          "(RGB, 8-bit levels) / share coarser than σ 1.5 px |")
    print("|---|---|" + "---|" * (len(CLASSES) + 1))
    for subject in args.subjects:
        # Lexically, so that a path through a subject's not-yet-made results/train folder still resolves.
        run_dir = Path(os.path.normpath(results / "train" / subject / args.run))
        avatar, frames, _ = load_avatar(run_dir, head)
        avatar.evaluation_near_z = ("1st", "2nd").index(args.near_z)
        rigid = RigidTable.from_file(results / "preprocess" / subject / "hair_rigid.npz")
        union = synthesized_union(results / "data" / subject)
        dataset = SubjectDataset(union, args.split, parsing="require", depth="off")
        pixels = {c: 0.0 for c in CLASSES}
        error = {c: 0.0 for c in CLASSES}
        total_pixels = 0
        covered_sum, covered_coarse = torch.zeros(3, dtype=torch.float64), 0.0
        face_pixels, face_error = [0.0, 0.0], [0.0, 0.0]  # within 3 px of the hair, farther
        band_error = {c: 0.0 for c in CLASSES}  # the face region within 3 px of the hair, by pixel class
        by_frame: dict[int, list[float]] = {}  # timestep -> [pixels, squared error, covered pixels, its error]
        blurred_error = {sigma: 0.0 for sigma in args.blur_hair}
        with torch.no_grad():
            for first in range(0, len(dataset), 4):
                batch = collate_samples([dataset[i] for i in range(first, min(first + 4, len(dataset)))])
                flame = driving_parameters(frames, batch, refined=False)
                rotation, translation = rigid(batch["timestep_index"])
                out = avatar(flame, batch["camera"], rotation, translation, evaluation=True)
                hair, _, face = batch_regions(batch)
                used = object_mask(batch["parsing"])[:, None] * full_mask(out)
                target = batch["image"] * used
                difference = as_8bit(out["rgb"]) * used - target
                squared = (difference ** 2).sum(1, keepdim=True)
                for sigma in args.blur_hair:
                    size = 2 * math.ceil(3 * sigma) + 1
                    smoothed = gaussian_blur2d(out["rgb"], (size, size), (sigma, sigma))
                    rgb = out["rgb"] + out["hair_weight"] * (smoothed - out["rgb"])
                    blurred_error[sigma] += float(((as_8bit(rgb) * used - target) ** 2).sum())
                rendered = out["hair_weight"] > 0.5
                masks = {"missed hair": hair & ~rendered, "covered hair": hair & rendered,
                         "spilled hair": ~hair & rendered, "rest": ~hair & ~rendered}
                for c, m in masks.items():
                    pixels[c] += float(m.sum())
                    error[c] += float(squared[m].sum())
                covered = masks["covered hair"].to(difference.dtype)
                near_hair = F.max_pool2d(hair.to(difference.dtype), 7, stride=1, padding=3) > 0
                for k, m in enumerate((face & near_hair, face & ~near_hair)):
                    face_pixels[k] += float(m.sum())
                    face_error[k] += float(squared[m].sum())
                for c, m in masks.items():
                    band_error[c] += float(squared[m & face & near_hair].sum())
                for i, timestep in enumerate(batch["timestep_index"].tolist()):
                    row = by_frame.setdefault(int(timestep), [0.0, 0.0, 0.0, 0.0])
                    row[0] += float(hair[i, 0].numel())
                    row[1] += float(squared[i].sum())
                    row[2] += float(covered[i].sum())
                    row[3] += float((squared[i] * covered[i]).sum())
                covered_sum += (difference * covered).sum((0, 2, 3)).double()
                # The error's coarse part: its local mean over the covered hair around each pixel.
                weight = gaussian_blur2d(covered, (7, 7), (1.5, 1.5)).clamp_min(1e-6)
                coarse = gaussian_blur2d(difference * covered, (7, 7), (1.5, 1.5)) / weight
                covered_coarse += float((coarse ** 2 * covered).sum())
                total_pixels += hair[:, 0].numel()
        total = sum(error.values())
        frame_psnr = psnr_db(total_pixels, total)
        cells = []
        for c in CLASSES:
            without = psnr_db(total_pixels, total - error[c])
            cells.append(f"{100 * pixels[c] / total_pixels:.1f} % / {100 * error[c] / total:.0f} % / {without:.1f}")
        n_covered = max(pixels["covered hair"], 1.0)
        per_pixel = psnr_db(n_covered, error["covered hair"])
        bias = ", ".join(f"{255 * float(v) / n_covered:+.1f}" for v in covered_sum)
        cells.append(f"{per_pixel:.1f} dB / {bias} / {100 * covered_coarse / max(error['covered hair'], 1e-12):.0f} %")
        print(f"| {subject} | {frame_psnr:.2f} | " + " | ".join(cells) + " |", flush=True)
        face = [psnr_db(n, e) for n, e in zip(face_pixels, face_error)]
        print(f"  {subject}: face region {100 * sum(face_pixels) / total_pixels:.1f} % of the frame, "
              f"{psnr_db(sum(face_pixels), sum(face_error)):.2f} dB per pixel; "
              f"within 3 px of the hair {100 * face_pixels[0] / max(sum(face_pixels), 1.0):.0f} % of it at "
              f"{face[0]:.2f} dB, farther {face[1]:.2f} dB", flush=True)
        print(f"  {subject}: the face within 3 px of the hair, its squared error by class: " + ", ".join(
            f"{c} {100 * e / max(face_error[0], 1e-12):.0f} %" for c, e in band_error.items()), flush=True)
        if args.blur_hair:
            print(f"  {subject}: the render's hair blurred: " + ", ".join(
                f"σ {sigma:g} px {psnr_db(total_pixels, e):.2f} dB" for sigma, e in blurred_error.items())
                + f" (unblurred {frame_psnr:.2f})", flush=True)
        if args.by_frame:
            onef = SubjectDataset(union, "onef", depth="off")
            print_by_frame(subject, by_frame, int(onef[0]["timestep_index"]))


def psnr_db(pixels: float, squared_error: float) -> float:
    """PSNR (dB) of ``pixels`` RGB pixels in [0, 1] whose squared errors sum to ``squared_error``."""
    return 10 * math.log10(3 * max(pixels, 1.0) / max(squared_error, 1e-12))


def print_by_frame(subject: str, by_frame: dict[int, list[float]], canonical: int) -> None:
    """Per timestep: the frame's PSNR and the covered hair's PSNR per pixel (dB)."""
    print(f"\n{subject}, by timestep (canonical: {canonical}): frame PSNR / covered hair per pixel")
    for timestep in sorted(by_frame):
        pixels, squared, covered, covered_error = by_frame[timestep]
        frame, hair = psnr_db(pixels, squared), psnr_db(covered, covered_error)
        mark = "  (canonical)" if timestep == canonical else ""
        print(f"  {timestep:4d}: {frame:6.2f} / {hair:5.2f}{mark}")
    print(flush=True)


if __name__ == "__main__":
    main()
