"""Table 2 (face part) on a subject: the full model and the four face ablations, from the runs
of the train_face rule, next to the paper's numbers on subject 306.

    snakemake --cores 2 results/train/synthetic/{mega,noview,nodyn,nosubdiv,nodisp}/metrics.json
    python benchmarks/face_variants.py [--subject synthetic]

Prints a Markdown table: val (novel view) PSNR on head pixels, the paper's masked full-frame
PSNR, depth MAE on the face region, test (held-out sequence) PSNR, training time and peak
memory (from the rule's benchmark file), and whether the full model beats each ablation.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import pandas as pd
import psutil

VARIANTS = ("mega", "noview", "nodyn", "nosubdiv", "nodisp")
# Paper, Table 2, subject 306: PSNR, Geo. MAE (mm).
PAPER = {"mega": (33.57, 2.25), "noview": (31.68, 2.87), "nodyn": (32.81, 2.91), "nosubdiv": (32.81, 3.38),
         "nodisp": (32.99, 7.48)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", default="synthetic")
    parser.add_argument("--results", default="results")
    args = parser.parse_args()
    rows = []
    for variant in VARIANTS:
        path = Path(args.results) / "train" / args.subject / variant / "metrics.json"
        if not path.is_file():
            print(f"(missing: {path})")
            continue
        m = json.loads(path.read_text())
        bench = Path(args.results) / "benchmarks" / "train_face" / args.subject / f"{variant}.tsv"
        seconds = rss = float("nan")
        if bench.is_file():
            tsv = pd.read_csv(bench, sep="\t")
            seconds, rss = float(tsv["s"].iloc[-1]), float(tsv["max_rss"].iloc[-1])
        rows.append({"variant": variant, "val PSNR head (dB)": m["val"]["psnr_head"],
                     "val PSNR head w/o rim (dB)": m["val"].get("psnr_head_interior", float("nan")),
                     "val PSNR masked frame (dB)": m["val"]["psnr_frame"],
                     "val depth MAE face (mm)": m["val"]["depth_mae_face_mm"],
                     "test PSNR head (dB)": m["test"]["psnr_head"],
                     "test depth MAE (mm)": m["test"]["depth_mae_face_mm"],
                     "iterations": m["iterations"], "rule time (s)": round(seconds), "peak RSS (MB)": round(rss),
                     "paper PSNR / MAE": f"{PAPER[variant][0]} / {PAPER[variant][1]}"})
    table = pd.DataFrame(rows).set_index("variant")
    if "mega" in table.index:
        full = table.loc["mega"]
        table["full beats it (PSNR, MAE)"] = [
            "" if v == "mega" else
            f"{'yes' if full['val PSNR head (dB)'] > r['val PSNR head (dB)'] else 'no'}, "
            f"{'yes' if full['val depth MAE face (mm)'] < r['val depth MAE face (mm)'] else 'no'}"
            for v, r in table.iterrows()]
    print(f"machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB")
    print(table.to_markdown())


if __name__ == "__main__":
    main()
