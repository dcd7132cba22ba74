"""The default synthetic avatar's three stages on one device, with the workflow's settings for the
synthetic subject: each stage's wall time and the avatar's quality, beside the workflow's own run
(on the CPU) when its results are there. On a GPU this is the synthetic default run on CUDA.

    python benchmarks/synthetic_stages.py --device cuda [--gaussian-backend triton]

Needs the synthetic subject's data and rigid table (`snakemake --cores 2
results/preprocess/synthetic/hair_rigid.npz`, or those folders copied in) and the head model
(made here when missing: it takes seconds). Trains into results/benchmarks/synthetic_stages/
<device>-<backend>/; a finished stage is not trained again (delete the folder to retrain).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mega.data.synth import synthesized_union
from mega.render.gaussians import GAUSSIAN_BACKENDS
from mega.settings import synthetic_stage_settings


def run_stage(command: list[str]) -> float:
    """Run a `mega` command; its wall time in seconds."""
    print("$ mega " + " ".join(command[:2]) + " ...", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mega", *command], check=True)
    return time.perf_counter() - started


def read_metrics(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--gaussian-backend", default="auto", choices=GAUSSIAN_BACKENDS)
    parser.add_argument("--results", default="results")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    args = parser.parse_args()
    results = Path(args.results)
    config = yaml.safe_load(Path(args.config).read_text())
    union = synthesized_union(results / "data" / "synthetic")
    head_model = results / "head_model"
    rigid = results / "preprocess" / "synthetic" / "hair_rigid.npz"
    out = results / "benchmarks" / "synthetic_stages" / f"{args.device.replace(':', '')}-{args.gaussian_backend}"
    face = synthetic_stage_settings(config, "face")
    hair = {**synthetic_stage_settings(config, "hair"), "gaussian_backend": args.gaussian_backend}
    common = ["--device", args.device, "--quiet", "--on-settings-change", "restart"]
    if args.threads:
        common += ["--threads", str(args.threads)]

    seconds = {}
    if not (head_model / "summary.json").is_file():
        seconds["head model"] = run_stage(["head-model", "--out", str(head_model)])
    stages = [
        ("face", out / "face" / "metrics.json",
         ["train-face", str(union), "--out", str(out), "--head-model", str(head_model),
          "--settings", json.dumps(face)]),
        ("hair", out / "hair" / "metrics.json",
         ["train-hair", str(union), "--out", str(out), "--head-model", str(head_model), "--face", str(out / "face.pt"),
          "--rigid", str(rigid), "--settings", json.dumps(hair)]),
        ("joint", out / "joint" / "metrics.json",
         ["train-joint", str(union), "--out", str(out), "--head-model", str(head_model), "--face",
          str(out / "face.pt"), "--hair", str(out / "hair.pt"), "--rigid", str(rigid), "--settings", json.dumps(hair)]),
    ]
    for name, done, command in stages:
        if not done.is_file():
            seconds[name] = run_stage(command + common)

    workflow = results / "train" / "synthetic" / "mega"
    here = {k: read_metrics(out / k / "metrics.json") for k in ("face", "hair", "joint")}
    there = {k: read_metrics(workflow / k / "metrics.json") for k in ("face", "hair", "joint")}
    print(f"\ndevice {args.device}, Gaussian backend {args.gaussian_backend}; run folder {out}")
    print("| | this run | the workflow's run |")
    print("|---|---|---|")
    for stage in ("face", "hair", "joint"):
        print(f"| {stage}: wall time (s), training time (s) | {seconds.get(stage, float('nan')):.0f}, "
              f"{here[stage].get('train_seconds')} | —, {there[stage].get('train_seconds')} |")
    for split in ("val", "test"):
        for key in ("psnr_head_paper", "psnr_hair", "hair_iou", "face_only_psnr_head_paper"):
            print(f"| joint {split} {key} | {here['joint'].get(split, {}).get(key)} | "
                  f"{there['joint'].get(split, {}).get(key)} |")
        print(f"| face {split} psnr_head | {here['face'].get(split, {}).get('psnr_head')} | "
              f"{there['face'].get(split, {}).get('psnr_head')} |")
    print(f"| Gaussians after the hair stage | {here['hair'].get('n_gaussians')} | "
          f"{there['hair'].get('n_gaussians')} |")


if __name__ == "__main__":
    main()
