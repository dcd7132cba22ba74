"""Where the time of a canonical-hair step and of a joint step goes, at the embedded subject's size,
with the workflow's synthetic settings (data, forward with the losses, backward, densification,
optimizer update), and the speed-up of the CPU path side by side in one run:

    python benchmarks/hair_speed.py --subject synthetic_long [--steps 40] [--threads 2] [--compare]

``MEGA_REUSE_FREED_MEMORY=0`` runs it with glibc's allocator as it is (mega/allocator.py);
``--composite-threads 1`` composites a batch's images one at a time, as before.

``--compare`` runs each stage twice from the same start with the same batches: as it ran before
(the torch compositing; the canonical-hair stage rendering the fixed face and the silhouette
weights again every step; the joint stage making the face's frozen geometry again every step; the
deformation field in float32 with torch's softplus; the frozen hair of every frame with all its
SH coefficients) and as it runs now (the numba compositing, the fixed face, its weights and the
face's geometry kept per image, the deformation field's CPU softplus at the settings'
``deform_precision``, the active degree's coefficients only, glibc keeping freed memory for reuse
as the ``mega`` command makes it), and prints seconds per step, the speed-up, and the two runs'
losses at the last step.

A step's seconds are the steps' alone: the split's images are decoded once before them and that
time printed apart, as a training run decodes them once for all its steps (until 2026-12-07 the
figures included it, spread over the few steps timed). So is the joint stage's making of the
face's geometry once per image, which a run's first epoch does: the "now" joint steps are those of
its later epochs, and the last column counts the one-off cost as its share of a step over the
settings' whole run. Needs the subject's data, face (results/train/<subject>/mega/face.pt) and
hair_rigid.npz; the joint rows start from the initial hair made opaque.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml

from mega.allocator import reuse_freed_memory
from mega.avatar import Avatar, RigidTable
from mega.data.gaussian_avatars import collate_samples
from mega.data.synth import synthesized_union
from mega.flame.head_model import load_head_model_folder
from mega.hair.config import HairConfig
from mega.hair.densify import Densifier, DensifyState
from mega.hair.rigid import read_hair_rigid
from mega.render.gaussians import resolve_gaussian_backend
from mega.settings import synthetic_stage_settings
from mega.train.face import load_face
from mega.train.hair import HairStage, canonical_views, initial_hair, open_hair_split, scene_extent_m
from mega.train.joint import JointStage, deformation_field_of
from mega.train.loop import batch_indices


class RecomputingHairStage(HairStage):
    """The canonical-hair stage as it was: the fixed face and the silhouette weights made again
    every step."""

    def fixed_inputs(self, flame, batch):
        self._fixed.clear()
        return super().fixed_inputs(flame, batch)


class RecomputingJointStage(JointStage):
    """The joint stage as it was: the face's frozen geometry made again in every step's forward."""

    def face_geometry(self, flame, batch):
        return None


class AllCoefficientsAvatar(Avatar):
    """The avatar as it was: the posed hair of every frame carries all its SH coefficients, even
    where the hair is frozen and the render reads only the active degree's."""

    def hair_of(self, flame, rotation, translation, sh_coefficients=None):
        return super().hair_of(flame, rotation, translation, None)


class Timer:
    """Wall seconds by part, summed over steps."""

    def __init__(self):
        self.seconds = defaultdict(float)

    def part(self, name):
        timer = self

        class _Part:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] += time.perf_counter() - self.t0

        return _Part()


def freeze_as_the_loop_does(stage) -> None:
    """Frozen groups take no gradient, as in the training loop."""
    for group in stage.parameter_groups():
        for p in group.params:
            p.requires_grad_(group.trainable)


def keep_face_geometry(stage: JointStage, samples: list, batch_size: int) -> int:
    """Makes the face's geometry of every image once, as a run's first epoch leaves it kept for
    the later ones; the number of images kept."""
    stage.begin_step(0)  # the displacement decoder's batch norm in eval mode, as at every step
    for start in range(0, len(samples), batch_size):
        batch = collate_samples(samples[start:start + batch_size])
        stage.face_geometry(stage.frames(batch["timestep_index"]), batch)
    return len(stage._rast)


def run_steps(stage, samples: list, steps: int, batch_size: int, lr: float, timer: Timer, densify=None) -> float:
    """Train ``steps`` steps on the decoded ``samples``; the last step's loss."""
    freeze_as_the_loop_does(stage)
    params = [p for g in stage.parameter_groups() if g.trainable for p in g.params]
    groups = [{"name": g.name, "params": g.params, "lr": lr} for g in stage.parameter_groups() if g.trainable]
    optimizer = torch.optim.Adam(groups, eps=1e-15)
    for step in range(steps):
        with timer.part("data"):
            batch = collate_samples([samples[i] for i in batch_indices(step, len(samples), batch_size, 0)])
        if hasattr(stage, "begin_step"):
            stage.begin_step(step)
        torch.manual_seed(step)
        with timer.part("forward + losses"):
            total, _, _ = stage.step(batch)
        with timer.part("backward"):
            optimizer.zero_grad(set_to_none=True)
            total.backward()
        if densify is not None:
            with timer.part("densification"):
                if densify(step + 1, optimizer):
                    params = [p for g in optimizer.param_groups for p in g["params"]]
        with timer.part("optimizer"):
            optimizer.step()
    del params
    return float(total.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", default="synthetic")
    parser.add_argument("--results", default="results")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gaussians", type=int, default=0, help="initial Gaussians (0: the synthetic settings')")
    parser.add_argument("--settings", default="{}", help="JSON overrides of the hair settings")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's top operators")
    parser.add_argument("--compare", action="store_true", help="also run the stages as they ran before, side by side")
    parser.add_argument("--composite-threads", type=int, default=0,
                        help="threads that composite a batch's images (0: torch's, as the stages do; 1: one image "
                             "at a time, as before)")
    args = parser.parse_args()
    import json

    torch.set_num_threads(args.threads)
    if args.composite_threads:
        import functools

        import mega.hair.render

        mega.hair.render.rasterize_gaussians_batch = functools.partial(
            mega.hair.render.rasterize_gaussians_batch, threads=args.composite_threads)
    results = Path(args.results)
    config = yaml.safe_load(Path(args.config).read_text())
    settings = {**synthetic_stage_settings(config, "hair"), **json.loads(args.settings)}
    if args.gaussians:
        settings.update(init_on_scalp=args.gaussians // 3, init_off_scalp=args.gaussians - args.gaussians // 3)
    hair_config = HairConfig.from_dict(settings)
    union = synthesized_union(results / "data" / args.subject)
    head = load_head_model_folder(results / "head_model")
    face, frames = load_face(results / "train" / args.subject / "mega" / "face.pt", head)
    rigid_file = read_hair_rigid(results / "preprocess" / args.subject / "hair_rigid.npz")
    rigid = RigidTable(rigid_file["timestep"], rigid_file["rotation"], rigid_file["translation"])
    onef, train = open_hair_split(union, "onef"), open_hair_split(union, "train")
    timestep = int(rigid_file["canonical_timestep"])
    device = torch.device("cpu")
    views = canonical_views(face, frames, onef, device) if (hair_config.init_in_hull
                                                            or hair_config.init_colour == "views") else None
    print(f"subject {args.subject}, threads {args.threads}, image {onef[0]['image'].shape[2]} x "
          f"{onef[0]['image'].shape[1]}, {args.steps} steps each")

    setups = [("now", hair_config, HairStage)]
    if args.compare:
        setups.insert(0, ("before", hair_config.replace(gaussian_backend="torch", deform_precision="float32"),
                          RecomputingHairStage))
    table = {}
    # Every "before" run first, with glibc's allocator as it was; the allocator's settings are the
    # process's and cannot be undone, so they are made between the two (mega/allocator.py).
    for label, stage_config, hair_stage in setups:
        if label == "now":
            print(f"\nglibc keeps freed memory for reuse: {reuse_freed_memory()}")
        for name in ("hair", "joint"):
            hair = initial_hair(face, frames, timestep, stage_config, views)
            with torch.no_grad():  # opaque enough to render like trained hair
                hair.params["opacities"].fill_(2.0)
            timer = Timer()
            if name == "hair":
                extent = scene_extent_m(onef)
                steps_total = stage_config.hair_steps_for(len(onef))
                densifier = Densifier(stage_config, stage_config.hair_batch_size, extent, DensifyState(hair.n),
                                      steps_total)
                stage = hair_stage(Avatar(face, hair, None, stage_config), frames, rigid, stage_config, densifier,
                                   extent, steps_total)
                dataset, batch_size = onef, stage_config.hair_batch_size
                densify = stage.after_backward
            else:
                torch.manual_seed(0)
                field = deformation_field_of(stage_config)
                if label == "before":
                    field.activation = torch.nn.functional.softplus  # torch's CPU softplus, as before
                avatar_class = AllCoefficientsAvatar if label == "before" else Avatar
                joint_stage = RecomputingJointStage if label == "before" else JointStage
                stage = joint_stage(avatar_class(face, hair, field, stage_config), frames, rigid, stage_config,
                                    n_images=len(train))
                dataset, batch_size, densify = train, stage_config.joint_batch_size, None
            n0 = hair.n
            # Decoded once, as the training loop's memory cache does for a whole run, and timed
            # apart: over a run's hundreds of steps it is nothing a step costs, over a few here
            # it would weigh on every step's figure (and more on the faster one's).
            started = time.perf_counter()
            samples = [dataset[i] for i in range(len(dataset))]
            decoding = time.perf_counter() - started
            geometry_note, one_off_per_step = "", 0.0
            if name == "joint" and label == "now":
                # Timed apart too: at the synthetic settings a run's first epoch makes it (its
                # later epochs find it kept), so the steps timed here are those of the later epochs.
                freeze_as_the_loop_does(stage)
                started = time.perf_counter()
                kept = keep_face_geometry(stage, samples, batch_size)
                seconds = time.perf_counter() - started
                run = stage_config.joint_steps_for(len(samples))
                one_off_per_step = seconds / run
                geometry_note = (f"; the face's geometry of {kept} images made once before: {seconds:.1f} s, "
                                 f"{1000 * seconds / run:.0f} ms a step over the settings' {run} steps")
            started = time.perf_counter()
            if args.profile:
                with torch.profiler.profile() as prof:
                    loss = run_steps(stage, samples, args.steps, batch_size, 1e-3, timer, densify)
            else:
                loss = run_steps(stage, samples, args.steps, batch_size, 1e-3, timer, densify)
            wall = time.perf_counter() - started
            table[name, label] = (wall / args.steps, loss, one_off_per_step)
            backend = resolve_gaussian_backend(stage_config.gaussian_backend, device)
            print(f"\n{name} stage, {label} ({backend} compositing, deformation {stage_config.deform_precision}): "
                  f"{n0} → {hair.n} Gaussians, "
                  f"batch {batch_size}: {wall / args.steps:.3f} s / step, last loss {loss:.6f} "
                  f"(decoding the {len(samples)} images once before: {decoding:.1f} s{geometry_note})")
            for part, seconds in timer.seconds.items():
                print(f"  {part:<20} {seconds / args.steps:7.3f} s  ({100 * seconds / wall:4.1f} %)")
            if args.profile:
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    if args.compare:
        print("\n| stage | before (s / step) | now (s / step) | speed-up | last loss before | now "
              "| speed-up, one-off costs counted |")
        print("|---|---|---|---|---|---|---|")
        for name in ("hair", "joint"):
            (before, loss_before, _), (now, loss_now, one_off) = table[name, "before"], table[name, "now"]
            print(f"| {name} | {before:.3f} | {now:.3f} | {before / now:.2f}× | {loss_before:.6f} | {loss_now:.6f} "
                  f"| {before / (now + one_off):.2f}× |")


if __name__ == "__main__":
    main()
