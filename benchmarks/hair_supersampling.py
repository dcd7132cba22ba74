"""How far the synthetic ground truth's hair is from converged, for each way of drawing its strands.

    python benchmarks/hair_supersampling.py [--hairstyles short long] [--seed 0] [--factors 1 2 4 8]

The synthetic strands are 0.8 mm thick, under half a pixel of the 138 × 200 images, and the
ground truth is rendered at `supersample`× and box-filtered down (`mega/data/synth.py`). A camera
integrates each pixel, so the written hair should not depend on the factor. For each hairstyle
and hair render (`classic`: 3DGS's dilation as is; `antialiased`: mass-preserving), this
synthesizes one small subject (2 sequences × 1 frame × 16 cameras, the workflow's image size) at
each factor, and prints the PSNR over the hair pixels (the largest factor's parsing) of each
factor against the largest: how converged the written hair is (each render over its own
parsing). Then, against the ground truth at 2× (the workflow's), the subject written at 1×
(classic, no supersampling: the true strands drawn at the image's size the way an avatar draws
its Gaussians, and the mesh unfiltered too): what a model that knew every strand exactly would
score on the hair.

Subjects are written to results/benchmarks/hair_supersampling/ and reused when present (a
`complete` file marks each; delete the folder after changing `mega/data/synth.py`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mega.data.parsing import LABEL
from mega.data.synth import SynthOptions, synthesize
from mega.flame.head_model import load_head_model_folder


def hair_psnr(rendered: Path, truth: Path) -> float:
    """PSNR (dB) of every image under ``rendered`` against the same file under ``truth``, over
    the pixels ``truth``'s parsing labels hair."""
    squared, count = 0.0, 0
    for path in sorted(truth.rglob("images/*.png")):
        a = np.asarray(Image.open(rendered / path.relative_to(truth)), dtype=np.float64)[..., :3] / 255
        b = np.asarray(Image.open(path), dtype=np.float64)[..., :3] / 255
        hair = np.asarray(Image.open(path.parent.parent / "parsing" / f"{path.stem}_labels.png")) == LABEL["hair"]
        squared += float(((a - b) ** 2)[hair].sum())
        count += int(hair.sum()) * 3
    if count == 0:
        raise SystemExit(f"{truth}: no hair pixels in its parsing")
    return 10 * math.log10(count / max(squared, 1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hairstyles", nargs="+", choices=("short", "long"), default=["short", "long"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--factors", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--results", default="results")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    head = load_head_model_folder(results / "head_model")
    root = results / "benchmarks" / "hair_supersampling"
    factors = sorted(set(args.factors))
    if min(factors) < 1 or 1 not in factors or 2 not in factors or len(factors) < 3:
        raise SystemExit("--factors: give 1, 2 and at least one larger factor, none below 1 "
                         "(the reference is the largest)")
    top = factors[-1]

    def subject(style: str, render: str, factor: int) -> Path:
        out = root / f"{style}_seed{args.seed}_{render}_x{factor}"
        if not (out / "complete").is_file():
            synthesize(out, head, SynthOptions(seed=args.seed, hair=style, n_sequences=2, frames_per_sequence=1,
                                               supersample=factor, hair_render=render, subject="s"), progress=False)
            (out / "complete").touch()  # a folder left half-written by an interruption is made again
        return out

    print(f"seed {args.seed}, 2 frames × 16 cameras, 138 × 200; PSNR over the hair pixels, dB\n")
    print("| hairstyle | hair render | " + " | ".join(f"{f}× against {top}×" for f in factors[:-1]) + " |")
    print("|---|---|" + "---|" * (len(factors) - 1))
    for style in args.hairstyles:
        for render in ("classic", "antialiased"):
            reference = subject(style, render, top)
            cells = [f"{hair_psnr(subject(style, render, f), reference):.2f}" for f in factors[:-1]]
            print(f"| {style} | {render} | " + " | ".join(cells) + " |", flush=True)
    print("\nThe true strands drawn at 1× as an avatar draws them (classic), against the ground truth at 2×:\n")
    print("| hairstyle | against classic 2× | against antialiased 2× |")
    print("|---|---|---|")
    for style in args.hairstyles:
        drawn = subject(style, "classic", 1)
        cells = [f"{hair_psnr(drawn, subject(style, render, 2)):.2f}" for render in ("classic", "antialiased")]
        print(f"| {style} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
