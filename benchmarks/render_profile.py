"""Where one Gaussian render's time goes: forward + backward of the hair's path (SH colours of
degree 3, early stop, near-z) under torch's profiler, per backend: wall time, the number of
kernels launched (on a GPU each launch costs tens of microseconds whatever its work) and the
operators and kernels that take the most time.

    python benchmarks/render_profile.py --device cuda [--backends torch triton] [--gaussians 100000]
    python benchmarks/render_profile.py --device cpu --gaussians 2000 --width 69 --height 100   # dry run

On the CPU the triton backend runs in Triton's interpreter (TRITON_INTERPRET=1 is set here):
its operator counts are the GPU's, its times are not.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

from render import hair_gaussians, head_mesh

from mega.data.rig import nersemble_like_rig
from mega.render.gaussians import rasterize_gaussians
from mega.render.sh import num_sh_coefficients, rgb_to_sh_dc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", nargs="+", default=["torch", "triton"], choices=["torch", "triton", "numba"])
    parser.add_argument("--gaussians", type=int, default=100_000)
    parser.add_argument("--width", type=int, default=550)
    parser.add_argument("--height", type=int, default=802)
    parser.add_argument("--sh-degree", type=int, default=3)
    parser.add_argument("--rows", type=int, default=12, help="operators listed per backend")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")

    vertices, faces, scalp = head_mesh()
    means, quats, scales, opacities, colors = hair_gaussians(args.gaussians, vertices, faces, scalp)
    sh = torch.zeros(args.gaussians, num_sh_coefficients(args.sh_degree), 3)
    sh[:, 0] = rgb_to_sh_dc(colors)
    sh[:, 1:] = 0.05 * torch.randn(args.gaussians, sh.shape[1] - 1, 3, generator=torch.Generator().manual_seed(0))
    scene = [t.to(device).requires_grad_() for t in (means, quats, scales, opacities, sh)]
    camera = nersemble_like_rig(550, 802)[8].resized(args.width, args.height).to(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"machine: {name}, torch {torch.__version__}; {args.gaussians:,} Gaussians, SH degree {args.sh_degree}, "
          f"{args.width} × {args.height}")

    def step(backend: str) -> None:
        out = rasterize_gaussians(*scene[:4], camera, sh=scene[4], sh_degree=args.sh_degree, backend=backend)
        (out["color"].sum() + out["alpha"].sum() + out["depth"].sum()).backward()
        for t in scene:
            t.grad = None

    for backend in args.backends:
        step(backend)  # warm-up: compiles the kernels
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        step(backend)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - started) * 1000
        with profile(activities=activities) as prof:
            step(backend)
            if device.type == "cuda":
                torch.cuda.synchronize()
        events = prof.events()
        launches = sum(1 for e in events if e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx",
                                                       "cudaLaunchKernelExC"))
        syncs = sum(1 for e in events if e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                    "cudaMemcpyAsync"))
        operators = sum(1 for e in events if e.name.startswith("aten::"))
        print(f"\n## {backend}: {wall_ms:.1f} ms forward + backward (unprofiled); {launches} kernel launches, "
              f"{syncs} synchronising copies/waits, {operators} aten operators")
        sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort_by, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
