"""The canonical hair against training length: hair IoU and hair-region PSNR on the stage's own
training views (the one-frame split) and on the held-out val camera at the canonical frame,
just before each opacity reset of one run of ``--steps`` steps, and at its end.

    python benchmarks/hair_curve.py --subject long_seed3_12cams --steps 1200 \\
        [--run 'NAME={"init_in_hull": 0}'] [--threads 1]

The run is `mega train-hair` with the workflow's synthetic settings (config/config.yaml
`synthetic.hair`) updated by the run's JSON and ``hair_iterations = --steps``, on the workflow's
stage-1 face of the subject, in results/benchmarks/hair_curve/<subject>/<run>/. It is trained in
chunks (the loop's ``stop_after``, as an interruption would) and the checkpoint of each chunk's
end is evaluated; a resumed run follows the uninterrupted one exactly. Each point is the state
one step before an opacity reset (the checkpoint the authors keep and hand on), so one run's
points stand for the schedules that end there; the position rate decays over
``lr_position_steps`` (30,000), so a shorter run's differs from it by under 5 %. Prints a
Markdown table and writes curve.csv and curve.png beside the run.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import pandas as pd
import psutil
import torch
from torch.utils.data import Subset

from curves import plot_panels, print_markdown, run_settings
from mega.avatar import Avatar, RigidTable
from mega.data.synth import synthesized_union
from mega.flame.head_model import load_head_model_folder
from mega.hair.model import GaussianHair
from mega.hair.rigid import read_hair_rigid
from mega.train.checkpoint import load_checkpoint
from mega.train.face import load_face
from mega.train.hair import evaluate_canonical_hair, open_hair_split, train_hair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", default="synthetic_long")
    parser.add_argument("--run", default="views={}", help="NAME=JSON overrides of the hair settings")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--every", type=int, default=0,
                        help="steps between points (default: the opacity reset interval)")
    parser.add_argument("--results", default="results")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    name, overrides, config = run_settings(args.config, args.run, hair_iterations=args.steps)
    union = synthesized_union(results / "data" / args.subject)
    face_path = results / "train" / args.subject / "mega" / "face.pt"
    rigid_path = results / "preprocess" / args.subject / "hair_rigid.npz"
    out = results / "benchmarks" / "hair_curve" / args.subject / name
    head = load_head_model_folder(results / "head_model")
    device = torch.device("cpu")
    print(f"machine: {platform.machine()}, {psutil.cpu_count()} cores, {args.threads} threads; "
          f"{args.subject} run {name}: {overrides}", flush=True)

    face, frames = load_face(face_path, head, device)
    rigid_file = read_hair_rigid(rigid_path)
    timestep = int(rigid_file["canonical_timestep"])
    rigid = RigidTable(rigid_file["timestep"], rigid_file["rotation"], rigid_file["translation"]).to(device)
    train_views = open_hair_split(union, "onef")
    val_split = open_hair_split(union, "val")
    val_views = Subset(val_split, [i for i, t in enumerate(val_split.frames.timestep) if int(t) == timestep])
    if not len(val_views):
        raise SystemExit(f"{union}: the val split has no image of the canonical timestep {timestep}")

    rows = []
    csv = out / "curve.csv"
    # The points: the step before each opacity reset (the authors keep that checkpoint and hand
    # the last one on), and the end of the run.
    every = args.every or config.images_to_steps(config.opacity_reset_every_images, config.hair_batch_size)
    stops = [k - 1 for k in range(every, args.steps, every)] + [args.steps]
    for stop in stops:
        started = time.perf_counter()
        # The first chunk starts over: a checkpoint of an earlier invocation may lie past it.
        result = train_hair(union, face_path, rigid_path, out, head, config, device="cpu", progress=False,
                            restart=stop == stops[0], on_settings_change="restart",
                            stop_after=stop if stop < args.steps else None)
        seconds = time.perf_counter() - started
        state = load_checkpoint(out / "hair" / "checkpoint.pt", device)
        hair = GaussianHair(1, config.sh_degree)
        hair.load_state_dict(state["modules"]["hair"])
        avatar = Avatar(face, hair, None, config).eval()
        # The finished run has evaluated its own views already.
        train = result.get("training_views") or evaluate_canonical_hair(avatar, frames, rigid, train_views, device,
                                                                        None)
        val = evaluate_canonical_hair(avatar, frames, rigid, val_views, device,
                                      out / f"val_{stop:05d}.png" if stop == args.steps else None)
        row = {"step": stop, "Gaussians": hair.n, "train IoU": train["hair_iou"], "train hair PSNR": train["psnr_hair"],
               "val IoU": val["hair_iou"], "val hair PSNR": val["psnr_hair"], "chunk s": round(seconds, 1)}
        rows.append(row)
        print(row, flush=True)
        pd.DataFrame(rows).to_csv(csv, index=False)

    table = pd.DataFrame(rows)
    plot_panels(table, out / "curve.png", "step",
                [("hair IoU", {s: f"{s} IoU" for s in ("train", "val")}),
                 ("hair-region PSNR (dB)", {s: f"{s} hair PSNR" for s in ("train", "val")})],
                f"{args.subject}, run {name}")
    print_markdown(table)


if __name__ == "__main__":
    main()
