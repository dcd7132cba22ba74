"""The hair stages on several synthetic subjects with named changes of the synthetic settings:
the canonical hair's fit of its own training views and, with --joint, the whole avatar on val
(novel view) and test (novel expression).

    snakemake --cores 2 results/train/{synthetic,synthetic_long}/mega/face.pt \\
        results/preprocess/{synthetic,synthetic_long}/hair_rigid.npz --configfile config/examples/long_hair.yaml
    python benchmarks/long_hair.py --subjects synthetic synthetic_long \\
        --run 'authors={}' --run 'views={"init_colour": "views", "init_in_hull": 4000}' [--joint]
    python benchmarks/long_hair.py --subjects synthetic_long --run 'steps300={}' --run 'steps600={"hair_iterations": 600}'
    python benchmarks/long_hair.py --subjects synthetic --hair-from workflow --joint \
        --run 'fp32={"deform_precision": "float32"}' --run 'bf16={"deform_precision": "bfloat16"}'

Each run is `mega train-hair` (then `mega train-joint`) with the workflow's synthetic settings
(config/config.yaml `synthetic.hair`) updated by the run's JSON, on the workflow's stage-1 face
of the subject, in results/benchmarks/long_hair/<subject>/<run>/; a finished stage is not
trained again. ``--hair-from workflow`` trains only the joint stage, on the workflow's canonical
hair (results/train/<subject>/mega/hair.pt), for changes of the joint stage alone. Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from mega.data.synth import synthesized_union
from mega.settings import synthetic_stage_settings
from named_overrides import parse_named_overrides


def read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", nargs="+", default=["synthetic_long"])
    parser.add_argument("--run", action="append", default=[],
                        help="NAME=JSON overrides of the hair settings, repeatable (default: one run, "
                             "'synthetic={}', the synthetic settings as they are)")
    parser.add_argument("--joint", action="store_true", help="also train and evaluate the joint stage")
    parser.add_argument("--results", default="results")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-train", action="store_true", help="only print the table of finished runs")
    parser.add_argument("--hair-from", choices=["run", "workflow"], default="run",
                        help="the joint stage's canonical hair: each run's own, or the workflow's")
    args = parser.parse_args()
    results = Path(args.results)
    config = yaml.safe_load(Path(args.config).read_text())
    base = synthetic_stage_settings(config, "hair")
    runs = dict(parse_named_overrides(item, "--run") for item in args.run or ["synthetic={}"])
    print(f"machine: {platform.machine()}, {psutil.cpu_count()} cores, {args.threads} threads", flush=True)

    rows = []
    for subject in args.subjects:
        union = synthesized_union(results / "data" / subject)
        face = results / "train" / subject / "mega" / "face.pt"
        rigid = results / "preprocess" / subject / "hair_rigid.npz"
        for name, overrides in runs.items():
            out = results / "benchmarks" / "long_hair" / subject / name
            settings = json.dumps({**base, **overrides})
            common = ["--head-model", str(results / "head_model"), "--face", str(face), "--rigid", str(rigid),
                      "--settings", settings, "--out", str(out), "--quiet", "--threads", str(args.threads),
                      "--on-settings-change", "restart"]
            hair_pt = out / "hair.pt"
            stages = [("hair", ["train-hair", str(union), *common])]
            if args.hair_from == "workflow":
                hair_pt, stages = results / "train" / subject / "mega" / "hair.pt", []
            if args.joint:
                stages.append(("joint", ["train-joint", str(union), "--hair", str(hair_pt), *common]))
            for stage, command in stages:
                if not args.no_train and not (out / stage / "metrics.json").is_file():
                    print(f"$ {subject} {name}: mega {stage} ...", flush=True)
                    started = time.perf_counter()
                    subprocess.run([sys.executable, "-m", "mega", *command], check=True)
                    print(f"  {time.perf_counter() - started:.0f} s", flush=True)
            hair = read(hair_pt.parent / "hair" / "metrics.json")
            joint = read(out / "joint" / "metrics.json")
            views = hair.get("training_views", {})
            row = {"subject": subject, "run": name, "hair steps": hair.get("iterations"),
                   "Gaussians": hair.get("n_gaussians"), "hair s": hair.get("train_seconds"),
                   "train-view IoU": views.get("hair_iou"), "train-view hair PSNR": views.get("psnr_hair")}
            for split in ("val", "test"):
                m = joint.get(split, {})
                row.update({f"{split} PSNR": m.get("psnr_head_paper"), f"{split} face alone": m.get(
                    "face_only_psnr_head_paper"), f"{split} hair PSNR": m.get("psnr_hair"),
                    f"{split} IoU": m.get("hair_iou")})
            row["joint s"] = joint.get("train_seconds")
            rows.append(row)
    columns = list(rows[0])
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join("" if row[c] is None else str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
