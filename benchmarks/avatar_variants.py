"""Whole avatars (face, canonical hair, joint, evaluation) of synthetic subjects under setting
variants, side by side: what one setting changes in the numbers of Table 1, not only in its stage.

    python benchmarks/avatar_variants.py --subjects synthetic_long long_seed11 --seeds 42 7 \\
        --variant 'omega30={"face": {"pixel_decoder_omega": 30}}' \\
        --variant 'omega10={"face": {"pixel_decoder_omega": 10}}' --jobs 2

Each run trains with the synthetic subjects' settings of config/config.yaml (`synthetic.face`,
`synthetic.hair`), the variant's overrides and the seed (every stage's `seed`), one thread a
job, in results/benchmarks/avatar_variants/<subject>/seed<S>/<variant>/, and is evaluated on val
(novel view) and test (novel expression) as the workflow does; a finished stage is not run
again (runs are keyed by the variant's name: give changed overrides a new name). The subjects
must have been made by the workflow (results/data/<subject>, the hair's rigid fit in
results/preprocess/<subject>/hair_rigid.npz). Prints per run and, per variant, the mean
difference to the first variant over the same (subject, seed) pairs.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import psutil
import yaml

from mega.data.synth import synthesized_union
from mega.settings import synthetic_stage_settings
from named_overrides import parse_named_overrides

COLUMNS = {  # column: (split, metric)
    "NV PSNR": ("val", "psnr"), "NV SSIM": ("val", "ssim"), "NV LPIPS": ("val", "lpips"),
    "NV face": ("val", "psnr_face"), "NV hair": ("val", "psnr_hair"), "NV IoU": ("val", "hair_iou"),
    "NE PSNR": ("test", "psnr"), "NE face": ("test", "psnr_face"),
}


def run_avatar(subject: str, seed: int, overrides: dict, out: Path, results: Path, config: dict,
               lpips_weights: str | None) -> None:
    """Train and evaluate one avatar in ``out``, skipping the stages already done."""
    union = str(synthesized_union(results / "data" / subject))
    head_model = str(results / "head_model")
    rigid = str(results / "preprocess" / subject / "hair_rigid.npz")
    face = {**synthetic_stage_settings(config, "face"), **overrides.get("face", {}), "seed": seed}
    hair = {**synthetic_stage_settings(config, "hair"), **overrides.get("hair", {}), "seed": seed}
    common = ["--head-model", head_model, "--threads", "1", "--quiet"]
    steps = [  # (what shows it done, its log's name, the mega command)
        (out / "face.pt", "train-face", ["train-face", union, "--out", str(out), "--settings", json.dumps(face)]),
        (out / "hair.pt", "train-hair", ["train-hair", union, "--out", str(out), "--face", str(out / "face.pt"),
                                         "--rigid", rigid, "--settings", json.dumps(hair)]),
        (out / "joint.pt", "train-joint", ["train-joint", union, "--out", str(out), "--face", str(out / "face.pt"),
                                           "--hair", str(out / "hair.pt"), "--rigid", rigid,
                                           "--settings", json.dumps(hair)]),
    ]
    for split in ("val", "test"):
        evaluate = ["evaluate", str(out), union, "--rigid", rigid, "--split", split, "--out",
                    str(out / "eval" / split), "--subject", subject]
        if lpips_weights:
            evaluate += ["--lpips-weights", lpips_weights]
        steps.append((out / "eval" / split / "metrics.json", f"evaluate_{split}", evaluate))
    out.mkdir(parents=True, exist_ok=True)
    for done, log_name, command in steps:
        if done.is_file():
            continue
        log = out / f"{log_name}.log"
        # One write a line: the jobs' threads print side by side.
        sys.stdout.write(f"{subject} seed {seed} {out.name}: {command[0]} ... (log {log})\n")
        sys.stdout.flush()
        with open(log, "w") as stream:
            finished = subprocess.run([sys.executable, "-m", "mega", *command, *common], stdout=stream,
                                      stderr=subprocess.STDOUT)
        if finished.returncode != 0:
            raise RuntimeError(f"{subject} seed {seed} {out.name}: mega {command[0]} exited with "
                               f"{finished.returncode}; its output is in {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", nargs="+", default=["synthetic_long"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=JSON overrides of the synthetic face/hair settings; the first is the reference")
    parser.add_argument("--results", default="results")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--jobs", type=int, default=2, help="avatars trained at once, one thread each")
    parser.add_argument("--lpips-weights", default=".cache/mega/lpips_alex.pth")
    parser.add_argument("--no-train", action="store_true", help="only print the table of finished runs")
    args = parser.parse_args()
    variants = dict(parse_named_overrides(v, "--variant", {"face", "hair"})
                    for v in (args.variant or ["as_configured={}"]))
    results = Path(args.results)
    config = yaml.safe_load(Path(args.config).read_text())
    lpips_weights = args.lpips_weights if Path(args.lpips_weights).is_file() else None
    root = results / "benchmarks" / "avatar_variants"
    for subject in args.subjects:
        needed = [results / "data" / subject / "summary.json", results / "preprocess" / subject / "hair_rigid.npz"]
        missing = [str(path) for path in needed if not path.is_file()]
        if missing:
            raise SystemExit(f"subject {subject!r}: missing {', '.join(missing)}; make them first, e.g. "
                             f"snakemake --cores 2 {' '.join(missing)} (a subject other than synthetic must be "
                             "named under synthetic.others or subjects: in the config)")
    runs = [(s, seed, name) for s in args.subjects for seed in args.seeds for name in variants]
    if not args.no_train:
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_avatar, run[0], run[1], variants[run[2]],
                                   root / run[0] / f"seed{run[1]}" / run[2], results, config, lpips_weights)
                       for run in runs]
            for future in futures:
                future.result()
    rows = []
    for subject, seed, name in runs:
        out = root / subject / f"seed{seed}" / name
        metrics = {split: out / "eval" / split / "metrics.json" for split in ("val", "test")}
        if not all(path.is_file() for path in metrics.values()):
            print(f"(missing: {out})")
            continue
        loaded = {split: json.loads(path.read_text()) for split, path in metrics.items()}
        row = {"subject": subject, "seed": seed, "variant": name}
        for column, (split, metric) in COLUMNS.items():
            row[column] = loaded[split].get(metric, float("nan"))
        for stage in ("face", "hair", "joint"):
            stage_metrics = out / stage / "metrics.json"
            row[f"{stage} s"] = json.loads(stage_metrics.read_text()).get("train_seconds", float("nan")) \
                if stage_metrics.is_file() else float("nan")
        rows.append(row)
    if not rows:
        return
    table = pd.DataFrame(rows)
    print(f"machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB; {args.jobs} jobs of one thread")
    print(table.round(3).to_markdown(index=False))
    reference = next(iter(variants))
    keyed = table.set_index(["subject", "seed", "variant"])[list(COLUMNS)]
    if len(variants) > 1 and reference in keyed.index.get_level_values("variant"):
        print(f"\nmean difference to {reference} over the same subject and seed (and its range):")
        base = keyed.xs(reference, level="variant")
        for name in variants:
            if name == reference or name not in keyed.index.get_level_values("variant"):
                continue
            diff = (keyed.xs(name, level="variant") - base).dropna()
            summary = diff.mean().round(3).astype(str) + " [" + diff.min().round(2).astype(str) + ", " \
                + diff.max().round(2).astype(str) + "]"
            print(f"{name} ({len(diff)} pairs): " + ", ".join(f"{k} {v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
