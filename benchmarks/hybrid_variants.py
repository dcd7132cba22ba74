"""Table 2 (c) on the synthetic subject: the full hybrid against the blending ablations
(`gsdepth`: occlusion test on the alpha-weighted depth; `allgs`: no early stopping), and the
face alone, with several seeds.

    snakemake --cores 2 results/train/synthetic/mega/face.pt results/preprocess/synthetic/hair_rigid.npz
    python benchmarks/hybrid_variants.py --seeds 42 7        # trains what is missing, then prints

Each run is `mega train-hair` then `mega train-joint` with the synthetic subject's settings from
config/config.yaml (`synthetic.hair`) and the seed, on the workflow's stage-1 face, in
results/benchmarks/hybrid_variants/seed<S>/<variant>/; a finished run is not trained again.
Prints a Markdown table: per variant the mean over seeds (± half the range) of val and test
whole-head PSNR (the paper's protocol), the face alone under the same protocol, hair PSNR, hair
IoU, the canonical hair's size and the two stages' training times.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil
import yaml

from mega.data.synth import synthesized_union
from mega.settings import synthetic_stage_settings

VARIANTS = ("mega", "gsdepth", "allgs")
# Paper, Table 2 (c), subject 306: PSNR.
PAPER = {"mega": 33.57, "gsdepth": 27.94, "allgs": 31.42}
COLUMNS = {  # column: (file, split, metric)
    "val PSNR head (paper)": ("joint", "val", "psnr_head_paper"),
    "val face alone": ("joint", "val", "face_only_psnr_head_paper"),
    "val PSNR hair": ("joint", "val", "psnr_hair"),
    "val hair IoU": ("joint", "val", "hair_iou"),
    "test PSNR head (paper)": ("joint", "test", "psnr_head_paper"),
    "test face alone": ("joint", "test", "face_only_psnr_head_paper"),
    "test hair IoU": ("joint", "test", "hair_iou"),
    "Gaussians": ("hair", None, "n_gaussians"),
    "hair s": ("hair", None, "train_seconds"),
    "joint s": ("joint", None, "train_seconds"),
}


def run(command: list[str]) -> None:
    print(" ".join(command[2:5]), "...", flush=True)
    subprocess.run(command, check=True)


def train(variant: str, seed: int, out: Path, union: Path, results: Path, settings: dict, threads: int) -> None:
    common = [str(union), "--out", str(out), "--head-model", str(results / "head_model"), "--face",
              str(results / "train" / "synthetic" / "mega" / "face.pt"), "--rigid",
              str(results / "preprocess" / "synthetic" / "hair_rigid.npz"), "--variant", variant, "--settings",
              json.dumps({**settings, "seed": seed}), "--threads", str(threads), "--on-settings-change", "restart",
              "--quiet"]
    if not (out / "hair" / "metrics.json").is_file():
        run([sys.executable, "-m", "mega", "train-hair", *common])
    if not (out / "joint" / "metrics.json").is_file():
        run([sys.executable, "-m", "mega", "train-joint", *common, "--hair", str(out / "hair.pt")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--results", default="results")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-train", action="store_true", help="only print the table of finished runs")
    args = parser.parse_args()
    results = Path(args.results)
    union = synthesized_union(results / "data" / "synthetic")
    settings = synthetic_stage_settings(yaml.safe_load(Path(args.config).read_text()), "hair")
    rows = []
    for variant in args.variants:
        for seed in args.seeds:
            out = results / "benchmarks" / "hybrid_variants" / f"seed{seed}" / variant
            if not args.no_train:
                train(variant, seed, out, union, results, settings, args.threads)
            files = {name: out / name / "metrics.json" for name in ("hair", "joint")}
            if not all(path.is_file() for path in files.values()):
                continue
            metrics = {name: json.loads(path.read_text()) for name, path in files.items()}
            row = {"variant": variant, "seed": seed}
            for column, (name, split, key) in COLUMNS.items():
                source = metrics[name] if split is None else metrics[name].get(split, {})
                row[column] = source.get(key)
            rows.append(row)
    if not rows:
        print("no finished runs")
        return
    table = pd.DataFrame(rows)
    numeric = [c for c in COLUMNS]
    grouped = table.groupby("variant", sort=False)[numeric]
    mean, spread = grouped.mean(), (grouped.max() - grouped.min()) / 2
    summary_table = mean.round(3).astype(str) + " ±" + spread.round(3).astype(str)
    summary_table["paper PSNR"] = [PAPER.get(v) for v in summary_table.index]
    memory = psutil.virtual_memory().total / 2**30
    print(f"machine: {platform.machine()}, {psutil.cpu_count()} CPUs, {memory:.0f} GiB; seeds {args.seeds}; "
          f"mean ± half the range")
    print(summary_table.to_markdown())
    print()
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
