"""The joint stage against training length: the whole avatar's PSNR (the paper's protocol), face
and hair regions and hair IoU on val (novel view) and test (novel expression), and the training
batches' PSNR, at the end of each epoch of one run of ``--epochs`` epochs.

    python benchmarks/joint_curve.py --subject synthetic_long --epochs 8 [--points 1 2 4 8] \\
        [--run 'NAME={"w_solid": 0.1}'] [--threads 2]

The run is `mega train-joint` with the workflow's synthetic settings (config/config.yaml
`synthetic.hair`) updated by the run's JSON and ``joint_epochs = --epochs`` (the settings' fixed
``joint_iterations`` set to 0, so that the epochs count), on the workflow's stage-1 face and
canonical hair of the subject, in results/benchmarks/joint_curve/<subject>/<run>/.
Every rate of the joint stage is constant (the authors'), so a run's state after k epochs is the
state a run of k epochs ends in: one run stands for every length up to ``--epochs``. It is
trained in chunks (the loop's ``stop_after``, as an interruption would; a resumed run follows
the uninterrupted one) and the checkpoint at each point is evaluated as the stage evaluates its
own end (``joint/metrics.json``). Prints a Markdown table and writes curve.csv and curve.png.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import pandas as pd
import psutil
import torch

from curves import plot_panels, print_markdown, run_settings
from mega.avatar import Avatar, RigidTable
from mega.data.synth import synthesized_union
from mega.eval.avatar import evaluate_avatar
from mega.flame.head_model import load_head_model_folder
from mega.hair.model import GaussianHair
from mega.train.checkpoint import load_checkpoint
from mega.train.face import load_face
from mega.train.hair import open_hair_split
from mega.train.joint import deformation_field_of, train_joint

COLUMNS = {"psnr_head_paper": "PSNR", "psnr_face": "face", "psnr_hair": "hair", "hair_iou": "IoU"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", default="synthetic_long")
    parser.add_argument("--run", default="base={}", help="NAME=JSON overrides of the hair settings")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--points", type=int, nargs="+", help="epochs to evaluate at (default: 1, 2, 4, … and the end)")
    parser.add_argument("--results", default="results")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    name, overrides, config = run_settings(args.config, args.run, joint_epochs=args.epochs, joint_iterations=0)
    union = synthesized_union(results / "data" / args.subject)
    run = results / "train" / args.subject / "mega"
    face_path, hair_path = run / "face.pt", run / "hair.pt"
    rigid_path = results / "preprocess" / args.subject / "hair_rigid.npz"
    out = results / "benchmarks" / "joint_curve" / args.subject / name
    head = load_head_model_folder(results / "head_model")
    device = torch.device("cpu")
    print(f"machine: {platform.machine()}, {psutil.cpu_count()} cores, {args.threads} threads; "
          f"{args.subject} run {name}: {overrides}", flush=True)

    train_set = open_hair_split(union, "train")
    splits = {split: open_hair_split(union, split) for split in ("val", "test")}
    steps_per_epoch = config.joint_steps_for(len(train_set)) // args.epochs
    points = sorted(set(args.points or [2 ** k for k in range(args.epochs.bit_length()) if 2 ** k < args.epochs])
                    | {args.epochs})
    face, frames = load_face(face_path, head, device)
    hair = GaussianHair(0, config.sh_degree)
    hair.load_state_dict(load_checkpoint(hair_path, device)["hair"])
    hair.requires_grad_(False)
    rigid = RigidTable.from_file(rigid_path).to(device)

    rows, started = [], time.perf_counter()
    for epoch in points:
        stop = epoch * steps_per_epoch
        # The first chunk starts over: a checkpoint of an earlier invocation may lie past it.
        result = train_joint(union, face_path, hair_path, rigid_path, out, head, config, device="cpu",
                             progress=False, restart=epoch == points[0], on_settings_change="restart",
                             stop_after=stop if epoch < args.epochs else None)
        seconds = time.perf_counter() - started
        state = load_checkpoint(out / "joint" / "checkpoint.pt", device)["modules"]
        face.load_state_dict(state["face"])
        frames.load_state_dict(state["frames"])
        field = deformation_field_of(config)
        field.load_state_dict(state["deformation"])
        if "hair" in state:  # the joint stage trained the canonical hair's colours
            hair.load_state_dict(state["hair"])
        avatar = Avatar(face, hair, field.eval(), config)
        log = pd.read_csv(out / "joint" / "loss.csv")
        row = {"epoch": epoch, "step": stop, "train-batch PSNR (last epoch)":
               round(float(log[log["step"] > stop - steps_per_epoch]["psnr_train"].mean()), 2)}
        for split, dataset in splits.items():
            # The finished run has evaluated itself already.
            metrics = result.get(split) or evaluate_avatar(avatar, frames, rigid, dataset, device, None)
            row.update({f"{split} {label}": round(float(metrics[key]), 3 if key == "hair_iou" else 2)
                        for key, label in COLUMNS.items()})
        row["s"] = round(seconds)
        rows.append(row)
        print(row, flush=True)
        pd.DataFrame(rows).to_csv(out / "curve.csv", index=False)

    table = pd.DataFrame(rows)
    plot_panels(table, out / "curve.png", "epoch",
                [("PSNR (dB), paper protocol", {f"{s}, whole head": f"{s} PSNR" for s in ("val", "test")}),
                 ("hair IoU", {s: f"{s} IoU" for s in ("val", "test")})],
                f"{args.subject}, joint stage, run {name}")
    print_markdown(table)


if __name__ == "__main__":
    main()
