"""Frame time of the interactive viewer (`mega view`): one view of a trained avatar rendered as
the viewer renders it (mega.view.scene.AvatarScene.render: face, posed and deformed hair,
blend), at the subject's own size and at 550 × 802, per layer, while the camera orbits and while
an expression slider moves.

    python benchmarks/viewer.py --run results/train/synthetic/mega --union <UNION> \\
        --rigid results/preprocess/synthetic/hair_rigid.npz [--device cuda] [--repeats 10]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics

import torch

from mega.data.camera import Camera
from mega.flame.head_model import load_head_model_folder
from mega.view.scene import AvatarScene, ViewSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder with joint.pt and hair.pt")
    parser.add_argument("--union", required=True)
    parser.add_argument("--rigid", required=True)
    parser.add_argument("--head-model", default="results/head_model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--layers", nargs="+", default=["blended", "depth"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    scene = AvatarScene.from_run(args.run, load_head_model_folder(args.head_model), args.union, args.rigid, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"machine: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{int(scene.avatar.hair.params['means'].shape[0]):,} hair Gaussians")
    print("| image | layer | interaction | ms per frame (median) | frames/s |")
    print("|---|---|---|---|---|")
    frontal = scene.cameras[min(8, len(scene.cameras) - 1)]
    base = ViewSettings(timestep_index=scene.timesteps[0])
    for camera in (frontal, frontal.resized(550, 802)):
        for layer in args.layers:
            # Orbit: the camera moves, the expression stays (the deformation field's offsets are
            # kept); expression slider: every frame a new expression (the field runs).
            for interaction in ("orbit", "expression slider"):
                times = []
                for k in range(args.repeats + 1):  # the first is a warm-up
                    settings = base.replace(layer=layer)
                    if interaction == "expression slider":
                        settings = settings.replace(expression=(0.1 * (k + 1),) + base.expression[1:])
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    _, ms = scene.render(orbited(camera, 2.0 * k), settings)
                    times.append(ms)
                median = statistics.median(times[1:])
                print(f"| {camera.width} × {camera.height} | {layer} | {interaction} | {median:.1f} | "
                      f"{1000 / median:.1f} |")


def orbited(camera: Camera, degrees: float) -> Camera:
    """The camera turned by ``degrees`` about the vertical axis through the world origin."""
    angle = math.radians(degrees)
    turn = torch.eye(4, dtype=camera.world_to_camera.dtype)
    turn[0, 0], turn[0, 2], turn[2, 0], turn[2, 2] = math.cos(angle), math.sin(angle), -math.sin(angle), math.cos(angle)
    return Camera(camera.intrinsics, camera.world_to_camera @ turn.to(camera.world_to_camera.device), camera.width,
                  camera.height)


if __name__ == "__main__":
    main()
