"""How well a model could score on a subject's hair at all: the ground truth against itself,
degraded the way a model that resolves the hair only so finely would render it.

    python benchmarks/hair_ceiling.py --subjects synthetic synthetic_long [--split val]

For each subject and split, over every image: the share of the frame that is hair (the parsing's
hair mask), and the hair-region PSNR and the frame PSNR of the paper's protocol (render and ground
truth × the object mask, error over the whole frame) when the rendered image is the ground truth
itself with its hair pixels replaced by
  - ``blur σ px``: the ground truth blurred by a Gaussian of σ pixels (a model that gets every strand's
    colour and place right but resolves them only to about σ pixels);
  - ``flat``: the image's mean hair colour (a model that gets the hair's silhouette and mean colour
    right and no strand at all).
Everything outside the hair is left perfect, so the frame PSNR is an upper bound of what a model
with that hair, and a perfect face, would score; the face region costs more on top.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import kornia
import torch

from mega.data.gaussian_avatars import SubjectDataset, collate_samples
from mega.data.parsing import batch_regions, object_mask
from mega.data.synth import synthesized_union
from mega.eval.face_metrics import as_8bit, psnr_frame, psnr_masked


def degraded_hair(image: torch.Tensor, hair: torch.Tensor, how: str) -> torch.Tensor:
    """image [B, 3, H, W] with its hair pixels (hair [B, 1, H, W] bool) replaced as ``how`` says."""
    if how == "flat":
        weight = hair.float()
        mean = (image * weight).sum((2, 3), keepdim=True) / weight.sum((2, 3), keepdim=True).clamp_min(1)
        replaced = mean.expand_as(image)
    else:
        sigma = float(how.split()[1])
        size = 2 * math.ceil(3 * sigma) + 1
        replaced = kornia.filters.gaussian_blur2d(image, (size, size), (sigma, sigma), border_type="reflect")
    return torch.where(hair, replaced, image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", nargs="+", default=["synthetic", "synthetic_long"])
    parser.add_argument("--results", default="results")
    parser.add_argument("--split", default="val")
    parser.add_argument("--sigmas", nargs="+", type=float, default=[0.5, 1.0, 1.5])
    args = parser.parse_args()
    kinds = [f"blur {s}" for s in args.sigmas] + ["flat"]
    print(f"split {args.split}; hair PSNR / frame PSNR (paper protocol) with a perfect face, dB\n")
    print("| subject | hair share of frame | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for subject in args.subjects:
        dataset = SubjectDataset(synthesized_union(Path(args.results) / "data" / subject), args.split,
                                 parsing="require", depth="off")
        share, hair_psnr, frame_psnr = [], {k: [] for k in kinds}, {k: [] for k in kinds}
        for first in range(0, len(dataset), 8):
            batch = collate_samples([dataset[i] for i in range(first, min(first + 8, len(dataset)))])
            hair, _, _ = batch_regions(batch)
            used = object_mask(batch["parsing"])[:, None]
            image = batch["image"]
            share += hair.flatten(1).float().mean(1).tolist()
            for kind in kinds:
                rendered = as_8bit(degraded_hair(image, hair, kind))
                for b in range(image.shape[0]):
                    hair_psnr[kind].append(psnr_masked(rendered[b], image[b], hair[b, 0]))
                    frame_psnr[kind].append(psnr_frame(rendered[b], image[b], used[b, 0]))
        mean = lambda values: sum(v for v in values if math.isfinite(v)) / max(1, sum(map(math.isfinite, values)))
        cells = [f"{mean(hair_psnr[k]):.1f} / {mean(frame_psnr[k]):.1f}" for k in kinds]
        print(f"| {subject} | {100 * mean(share):.1f} % | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
