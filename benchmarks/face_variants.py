"""Table 2 (face part) on the synthetic subject: the full model and the four face ablations,
each trained with several seeds, next to the paper's numbers on subject 306.

    snakemake --cores 2 results/data/synthetic/summary.json results/head_model/summary.json
    python benchmarks/face_variants.py --seeds 42 7          # trains what is missing, then prints

Each run is `mega train-face` with the synthetic subject's settings from config/config.yaml
(`synthetic.face`) and the seed, in results/benchmarks/face_variants/seed<S>/<variant>/; a
finished run is not trained again. Prints a Markdown table: per variant the mean over seeds
(and each seed) of val (novel view, the authors' protocol: tracked expression and pose) PSNR on
head pixels, without the rim, the paper's masked full-frame PSNR, val PSNR with the refined
per-frame parameters, depth MAE on the face, test (held-out sequence) PSNR, and training time.
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

VARIANTS = ("mega", "noview", "nodyn", "nosubdiv", "nodisp")
# Paper, Table 2, subject 306: PSNR, Geo. MAE (mm).
PAPER = {"mega": (33.57, 2.25), "noview": (31.68, 2.87), "nodyn": (32.81, 2.91), "nosubdiv": (32.81, 3.38),
         "nodisp": (32.99, 7.48)}
COLUMNS = {  # column: (split, metric)
    "val PSNR head": ("val", "psnr_head"),
    "val PSNR head w/o rim": ("val", "psnr_head_interior"),
    "val PSNR paper protocol": ("val", "psnr_frame"),
    "val PSNR head, refined params": ("val_refined", "psnr_head"),
    "val depth MAE face (mm)": ("val", "depth_mae_face_mm"),
    "test PSNR head": ("test", "psnr_head"),
    "test depth MAE (mm)": ("test", "depth_mae_face_mm"),
}


def train(variant: str, seed: int, out: Path, union: Path, head_model: Path, settings: dict, threads: int) -> None:
    if (out / "face" / "metrics.json").is_file():
        return
    command = [sys.executable, "-m", "mega", "train-face", str(union), "--out", str(out), "--head-model",
               str(head_model), "--variant", variant, "--settings", json.dumps({**settings, "seed": seed}),
               "--threads", str(threads), "--on-settings-change", "restart", "--quiet"]
    print(f"training {variant}, seed {seed} ...", flush=True)
    subprocess.run(command, check=True)


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
    settings = synthetic_stage_settings(yaml.safe_load(Path(args.config).read_text()), "face")
    rows = []
    for variant in args.variants:
        for seed in args.seeds:
            out = results / "benchmarks" / "face_variants" / f"seed{seed}" / variant
            if not args.no_train:
                train(variant, seed, out, union, results / "head_model", settings, args.threads)
            path = out / "face" / "metrics.json"
            if not path.is_file():
                print(f"(missing: {path})")
                continue
            m = json.loads(path.read_text())
            row = {"variant": variant, "seed": seed, "train s": m["train_seconds"], "steps": m["iterations"]}
            for column, (split, metric) in COLUMNS.items():
                row[column] = m.get(split, {}).get(metric, float("nan"))
            rows.append(row)
    runs = pd.DataFrame(rows)
    means = runs.drop(columns="seed").groupby("variant", sort=False).mean()
    spread = runs.drop(columns="seed").groupby("variant", sort=False).agg(lambda x: x.max() - x.min())
    table = means.round(3).astype(str) + " ±" + (spread / 2).round(2).astype(str)
    table["paper PSNR / MAE"] = [f"{PAPER[v][0]} / {PAPER[v][1]}" for v in table.index]
    if "mega" in means.index:
        full = means.loc["mega"]
        table["full − ablation (val PSNR head, depth MAE)"] = [
            "" if v == "mega" else f"{full['val PSNR head'] - r['val PSNR head']:+.2f} dB, "
                                   f"{full['val depth MAE face (mm)'] - r['val depth MAE face (mm)']:+.3f} mm"
            for v, r in means.iterrows()]
    print(f"machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB; seeds {args.seeds}; mean ± half the range")
    print(table.to_markdown())
    print()
    print(runs.round(3).to_markdown(index=False))


if __name__ == "__main__":
    main()
