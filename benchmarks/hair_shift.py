"""How far a trained avatar's hair sits from the ground truth's on each frame: the hair IoU of the
render as it is, and at the best sub-pixel shift of the rendered hair, beside the synthetic
subject's own hair sway on that frame (the tips' motion with time that the frame's expression does
not predict; `mega.data.synth.hair_sway_m`).

    python benchmarks/hair_shift.py --subjects synthetic long_seed3_dense40k \\
        --run ../../benchmarks/avatar_variants/{subject}/seed42/onscalpj [--split val]

Renders the split as `mega evaluate` does (the evaluation's blend, tracked expression and pose);
the rendered hair is Â_hair > 0.5, the ground truth's the parsing's hair. Each frame's rendered
hair weight is shifted by (dx, dy) on a half-pixel grid within ±2 px (bilinear), and the shift of
the highest IoU is kept. The sway column is the tips' offset from the canonical frame's (the frame
the canonical hair was fitted to), in mm in the head's frame: x is the image's x for the frontal
camera (val), z its depth. A deformation field that followed the sway would leave the best shift
at 0 on every frame.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from kornia.geometry.transform import translate

from mega.avatar import RigidTable
from mega.data.gaussian_avatars import SubjectDataset, collate_samples
from mega.data.parsing import batch_regions
from mega.data.synth import SynthOptions, hair_sway_m, synthesized_union
from mega.eval.avatar import hair_iou
from mega.eval.face import driving_parameters
from mega.flame.head_model import load_head_model_folder
from mega.train.joint import load_avatar

SHIFTS_PX = [(dx / 2, dy / 2) for dx in range(-4, 5) for dy in range(-4, 5)]


def shifted(image: torch.Tensor, dx_px: float, dy_px: float) -> torch.Tensor:
    """image [B, C, H, W] moved by (dx, dy) pixels (right, down), bilinear, the border repeated."""
    offset = torch.tensor([[dx_px, dy_px]], dtype=image.dtype).expand(image.shape[0], 2)
    return translate(image, offset, padding_mode="border", align_corners=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", nargs="+", default=["synthetic"])
    parser.add_argument("--results", default="results")
    parser.add_argument("--run", default="mega", help="the run folder under results/train/<subject>/ (or a path "
                        "relative to it); {subject} is replaced by the subject")
    parser.add_argument("--split", default="val")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    head = load_head_model_folder(results / "head_model")
    for subject in args.subjects:
        run_dir = Path(os.path.normpath(results / "train" / subject / args.run.format(subject=subject)))
        avatar, frames, _ = load_avatar(run_dir, head)
        rigid = RigidTable.from_file(results / "preprocess" / subject / "hair_rigid.npz")
        options = json.loads((results / "data" / subject / "summary.json").read_text())["options"]
        seed = int(options["seed"])
        amplitude_mm = float(options.get("hair_sway_mm", SynthOptions.hair_sway_mm))
        union = synthesized_union(results / "data" / subject)
        dataset = SubjectDataset(union, args.split, parsing="require", depth="off")
        canonical = int(SubjectDataset(union, "onef", depth="off")[0]["timestep_index"])
        print(f"\n{subject} ({args.split}; sway {amplitude_mm:g} mm; canonical timestep {canonical})\n")
        print("| timestep | camera | IoU | best shifted IoU | at dx, dy (px) | tips' sway from the canonical frame: x, z (mm) |")
        print("|---|---|---|---|---|---|")
        rows = []
        for index in range(len(dataset)):
            batch = collate_samples([dataset[index]])
            with torch.no_grad():
                rotation, translation = rigid(batch["timestep_index"])
                out = avatar(driving_parameters(frames, batch, refined=False), batch["camera"], rotation,
                             translation, evaluation=True)
            truth = batch_regions(batch)[0]
            scores = [(float(hair_iou(shifted(out["hair_weight"], dx, dy), truth)[0]), dx, dy) for dx, dy in SHIFTS_PX]
            at_zero = scores[SHIFTS_PX.index((0.0, 0.0))][0]
            # The smallest of equally good shifts: a tie with no shift at all keeps no shift.
            best, dx, dy = max(scores, key=lambda score: (score[0], -abs(score[1]) - abs(score[2])))
            timestep = int(batch["timestep_index"])
            sway_mm = 1000 * (hair_sway_m(timestep, seed, amplitude_mm) - hair_sway_m(canonical, seed, amplitude_mm))
            camera = int(batch["camera_index"]) if "camera_index" in batch else -1
            rows.append((at_zero, best, abs(dx) + abs(dy)))
            print(f"| {timestep} | {camera} | {at_zero:.3f} | {best:.3f} | {dx:+.1f}, {dy:+.1f} | "
                  f"{sway_mm[0]:+.1f}, {sway_mm[2]:+.1f} |", flush=True)
        n = len(rows)
        print(f"\n{subject}: mean IoU {sum(r[0] for r in rows) / n:.3f}, at the best shift "
              f"{sum(r[1] for r in rows) / n:.3f}; frames whose best shift is not 0: "
              f"{sum(r[2] > 0 for r in rows)} of {n}", flush=True)


if __name__ == "__main__":
    main()
