"""Seconds per step of the canonical-hair and joint stages on the synthetic subject, and where
the time goes (face render, hair render, losses, backward).

    python benchmarks/hair_step.py [--face results/train/synthetic/mega/face.pt] [--threads 2]

Needs the synthetic subject, its head model, a trained face and hair_rigid.npz (the workflow's
results/). Prints a table; record it in docs/benchmarks.md with the machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mega.avatar import Avatar, RigidTable
from mega.data.gaussian_avatars import collate_samples
from mega.flame.head_model import load_head_model_folder
from mega.hair.config import HairConfig
from mega.hair.deform import DeformationField
from mega.hair.rigid import read_hair_rigid
from mega.train.face import load_face
from mega.train.hair import hair_losses, initial_hair, open_hair_split
from mega.train.joint import JointStage

UNION = Path("results/data/synthetic/UNION10_synthetic_v16_synthetic")


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - start) / repeats, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--face", default="results/train/synthetic/mega/face.pt")
    parser.add_argument("--rigid", default="results/preprocess/synthetic/hair_rigid.npz")
    parser.add_argument("--head-model", default="results/head_model")
    parser.add_argument("--gaussians", type=int, nargs="+", default=[6000, 20000])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    head = load_head_model_folder(args.head_model)
    face, frames = load_face(args.face, head)
    rigid_file = read_hair_rigid(args.rigid)
    rigid = RigidTable(rigid_file["timestep"], rigid_file["rotation"], rigid_file["translation"])
    onef, train = open_hair_split(UNION, "onef"), open_hair_split(UNION, "train")
    print(f"threads {args.threads}, batch {args.batch}, images {onef[0]['image'].shape[1:]}")
    print(f"{'Gaussians':>9} | {'part':<28} | {'s':>7}")
    for n in args.gaussians:
        config = HairConfig(init_on_scalp=n // 3, init_off_scalp=n - n // 3)
        hair = initial_hair(face, frames, int(rigid_file["canonical_timestep"]), config)
        with torch.no_grad():  # opaque enough to render like trained hair
            hair.params["opacities"].fill_(2.0)
        avatar = Avatar(face, hair, None, config)
        batch = collate_samples([onef[i] for i in range(args.batch)])
        flame = frames(batch["timestep_index"])
        R, t = rigid(batch["timestep_index"])
        with torch.no_grad():
            face_out = face(flame, batch["camera"])
        rows = []
        rows.append(("face render (no grad)", timed(lambda: torch.no_grad()(face)(flame, batch["camera"]),
                                                    args.repeats)[0]))
        seconds, out = timed(lambda: avatar(flame, batch["camera"], R, t, face=face_out), args.repeats)
        rows.append(("hair render + blend", seconds))
        rows.append(("hair losses", timed(lambda: hair_losses(out, batch, config), args.repeats)[0]))

        def hair_step():
            o = avatar(flame, batch["camera"], R, t, face=face_out)
            sum(hair_losses(o, batch, config).values()).backward()

        rows.append(("hair step (fwd + bwd)", timed(hair_step, args.repeats)[0]))
        avatar.deformation = DeformationField()
        stage = JointStage(avatar, frames, rigid, config)
        joint_batch = collate_samples([train[i] for i in range(args.batch)])

        def joint_step():
            total, _, _ = stage.step(joint_batch)
            total.backward()

        rows.append(("joint step (fwd + bwd)", timed(joint_step, args.repeats)[0]))
        for part, s in rows:
            print(f"{n:>9} | {part:<28} | {s:7.3f}")


if __name__ == "__main__":
    main()
