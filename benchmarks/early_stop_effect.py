"""How much early stopping changes a trained avatar's renders: the same avatar rendered with the
early-stop gap it was trained with and without it (as `allgs` renders), on each split; an
`allgs` avatar, trained without, is rendered with the method's gap instead.

    python benchmarks/early_stop_effect.py [--subject synthetic] [--run results/train/synthetic/mega]

Prints, per split: the pixels whose hair alpha and whose blended colour change by more than
1/255 when early stopping is switched (off, or on for `allgs`), beside the pixels of visible hair (blended hair
weight > 0.5), and the whole-head PSNR (the paper's protocol) both ways. Where almost no pixel
changes, `allgs` can differ from the full model only by how training went, not by what it
renders: Table 2 (c)'s allgs row needs a subject on which this count is large.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch

from mega.avatar import RigidTable
from mega.data.gaussian_avatars import collate_samples, to_device
from mega.data.synth import synthesized_union
from mega.eval.avatar import evaluate_avatar
from mega.eval.face import driving_parameters
from mega.flame.head_model import load_head_model_folder
from mega.hair.config import HairConfig
from mega.train.hair import open_hair_split
from mega.train.joint import load_avatar

CHANGED = 1 / 255


@torch.no_grad()
def changed_pixels(avatar, frames, rigid, dataset, device, other_gap_mm: float, n_images: int,
                   batch_size: int = 4) -> dict:
    """Counts over ``n_images`` images spread over the split, the avatar's own gap against ``other_gap_mm``."""
    every = max(1, len(dataset) // n_images)
    indices = list(range(0, len(dataset), every))[:n_images]
    counts = {"pixels": 0, "visible hair": 0, "alpha changed": 0, "image changed": 0}
    trained_gap = avatar.config.early_stop_gap_mm
    for first in range(0, len(indices), batch_size):
        batch = to_device(collate_samples([dataset[i] for i in indices[first:first + batch_size]]), device)
        flame = driving_parameters(frames, batch, False)
        rotation, translation = rigid(batch["timestep_index"])
        outs = []
        for gap in (trained_gap, other_gap_mm):
            avatar.config = dataclasses.replace(avatar.config, early_stop_gap_mm=gap)
            outs.append(avatar(flame, batch["camera"], rotation, translation, evaluation=True))
        avatar.config = dataclasses.replace(avatar.config, early_stop_gap_mm=trained_gap)
        with_stop, without = outs
        counts["pixels"] += with_stop["hair"]["alpha"].numel()
        counts["visible hair"] += int((with_stop["hair_weight"] > 0.5).sum())
        counts["alpha changed"] += int(((with_stop["hair"]["alpha"] - without["hair"]["alpha"]).abs() > CHANGED).sum())
        counts["image changed"] += int(((with_stop["rgb"] - without["rgb"]).abs().amax(1) > CHANGED).sum())
    counts["images"] = len(indices)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    parser.add_argument("--subject", default="synthetic")
    parser.add_argument("--run", default=None, help="run folder with joint.pt and hair.pt "
                                                    "(default: results/train/<subject>/mega)")
    parser.add_argument("--images", type=int, default=24, help="images per split for the pixel counts")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    results = Path(args.results)
    run = Path(args.run) if args.run else results / "train" / args.subject / "mega"
    avatar, frames, _ = load_avatar(run, load_head_model_folder(results / "head_model"), device)
    union = synthesized_union(results / "data" / args.subject)
    rigid = RigidTable.from_file(results / "preprocess" / args.subject / "hair_rigid.npz").to(device)
    gap = avatar.config.early_stop_gap_mm
    other = math.inf if math.isfinite(gap) else HairConfig().early_stop_gap_mm
    print(f"{run}: early-stop gap {gap:g} mm as trained, against {other:g} mm")
    print(f"| split | images | visible-hair px | hair alpha changed | blended image changed | "
          f"PSNR head (paper), gap {gap:g} mm | PSNR head (paper), gap {other:g} mm |")
    print("|---|---|---|---|---|---|---|")
    for split in ("train", "val", "test"):
        dataset = open_hair_split(union, split)
        counts = changed_pixels(avatar, frames, rigid, dataset, device, other, args.images)
        psnr = {}
        if split != "train":
            for name, value in (("trained", gap), ("other", other)):
                avatar.config = dataclasses.replace(avatar.config, early_stop_gap_mm=value)
                psnr[name] = evaluate_avatar(avatar, frames, rigid, dataset, device)["psnr_head_paper"]
            avatar.config = dataclasses.replace(avatar.config, early_stop_gap_mm=gap)
        share = lambda key: f"{counts[key]:,} ({counts[key] / counts['pixels']:.2%})"  # noqa: E731
        print(f"| {split} | {counts['images']} | {share('visible hair')} | {share('alpha changed')} | "
              f"{share('image changed')} | {psnr.get('trained', '—')} | {psnr.get('other', '—')} |")


if __name__ == "__main__":
    main()
