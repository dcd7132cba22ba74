"""Renderer speed and memory: the mesh primitives and the Gaussian rasterizer, at the real
802×550 resolution and at the default synthetic training size, on the torch backend (CPU or
CUDA), on the CPU the numba Gaussian backend, and where CUDA is present the triton Gaussian
kernels, nvdiffrast, and gsplat for comparison.

    python benchmarks/render.py [--repeats 5] [--device cpu|cuda] [--gaussians 50000]
        [--gaussian-backends torch triton numba gsplat] [--rasterize-modes classic antialiased apart]

Scenes: the procedural head's enhanced mesh, its largest faces split once more to reach the
paper's 40,212 faces, seen by the frontal camera of the NeRSemble-like rig (f = 1604 px, 1 m);
and "hair": strand-like Gaussians (2–5 mm long, 0.3–0.8 mm thick, opacity 0.3–1, random
orientations) in a 2 cm layer over the head's scalp, as dense as trained hair gets.

``--rasterize-modes``: the Gaussian rows in each mode, ``classic`` (the default), ``antialiased``
(the opacities scaled inside the render's projection) and ``apart`` (the same opacities made by
``antialiased_opacities`` first, a projection of their own, as ``render_hair`` made them until
2026-12-07).
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import numpy as np
import psutil
import torch
import trimesh

from mega.data.camera import Camera
from mega.data.rig import DEFAULT_SYNTHETIC_HEIGHT, DEFAULT_SYNTHETIC_WIDTH, nersemble_like_rig
from mega.flame import build_toy_head, enhance
from mega.flame.geometry import vertex_normals
from mega.render.gaussians import antialiased_opacities, rasterize_gaussians
from mega.render.mesh import interpolate, rasterize
from mega.render.projection import world_to_clip

PAPER_FACES = 40_212


def head_mesh(n_faces: int = PAPER_FACES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices [V, 3] m, faces [F, 3], scalp vertex mask [V] of a head mesh with ``n_faces`` faces."""
    head = enhance(build_toy_head())
    vertices, faces = head.v_template, head.faces
    scalp = head.region_mask("scalp")
    extra = (n_faces - len(faces)) // 3
    if extra > 0:
        area = trimesh.triangles.area(vertices[faces])
        largest = np.argsort(-area)[:extra]
        new_vertices, new_faces = trimesh.remesh.subdivide(vertices, faces, face_index=largest)
        scalp = np.concatenate([scalp, np.zeros(len(new_vertices) - len(vertices), bool)])
        vertices, faces = new_vertices, new_faces
    return vertices, faces, scalp


def hair_gaussians(n: int, vertices: np.ndarray, faces: np.ndarray, scalp: np.ndarray, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    normals = torch.as_tensor(vertex_normals(vertices, faces), dtype=torch.float32)
    roots = torch.as_tensor(np.nonzero(scalp)[0])
    pick = roots[torch.randint(len(roots), (n,), generator=g)]
    height = torch.rand(n, 1, generator=g) * 0.02
    means = torch.as_tensor(vertices, dtype=torch.float32)[pick] + normals[pick] * height
    means += torch.randn(n, 3, generator=g) * 0.002
    quats = torch.randn(n, 4, generator=g)
    scales = torch.stack([torch.rand(n, generator=g) * 0.003 + 0.002, torch.rand(n, generator=g) * 0.0005 + 0.0003,
                          torch.rand(n, generator=g) * 0.0005 + 0.0003], 1)
    opacities = torch.rand(n, generator=g) * 0.7 + 0.3
    colors = torch.rand(n, 3, generator=g) * 0.3 + 0.1
    return means, quats, scales, opacities, colors


def timed(fn, repeats: int, device: str) -> float:
    """Median wall time of ``fn`` in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gaussians", type=int, nargs="+", default=None,
                        help="Gaussian counts at 802×550 (default: 50k on CPU, 100k on CUDA)")
    parser.add_argument("--gaussian-backends", nargs="+", choices=["torch", "triton", "numba", "gsplat"], default=None,
                        help="Gaussian rows (default: torch and numba on CPU; torch, triton and gsplat on CUDA, where gsplat "
                             "compiles its CUDA sources on first use: minutes)")
    parser.add_argument("--rasterize-modes", nargs="+", choices=["classic", "antialiased", "apart"], default=["classic"],
                        help="the Gaussian rows' rasterize modes (apart: antialiased with the opacities made first)")
    args = parser.parse_args()
    device = args.device
    counts = args.gaussians or ([50_000] if device == "cpu" else [100_000])
    gaussian_backends = args.gaussian_backends or (["torch", "numba"] if device == "cpu" else ["torch", "triton", "gsplat"])

    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    print(f"machine: {name}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []

    vertices, faces, scalp = head_mesh()
    camera = nersemble_like_rig(550, 802)[8].to(device)
    v = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    f = torch.as_tensor(faces, dtype=torch.int32, device=device)
    backends = ["torch"] + (["cuda"] if device == "cuda" else [])
    for backend in backends:
        pos = world_to_clip(v, camera)[None]

        def mesh_forward():
            rast = rasterize(pos, f, (802, 550), backend=backend)
            return interpolate(v[None], rast, f, backend=backend)

        try:
            seconds = timed(mesh_forward, args.repeats, device)
            covered = int((rasterize(pos, f, (802, 550), backend=backend)[..., 3] > 0).sum())
            rows.append((f"mesh {len(faces):,} faces, rasterize + interpolate, fwd", backend, "550×802",
                         f"{seconds * 1000:.1f} ms", f"{covered:,} px covered"))
        except Exception as exc:  # noqa: BLE001 - a missing optional backend is reported, not fatal
            rows.append((f"mesh {len(faces):,} faces", backend, "550×802", "n/a", f"{type(exc).__name__}: {exc}"))

    sizes = [(550, 802, n) for n in counts] + [(DEFAULT_SYNTHETIC_WIDTH, DEFAULT_SYNTHETIC_HEIGHT, 20_000)]
    for width, height, n in sizes:
        cam = nersemble_like_rig(550, 802)[8].resized(width, height).to(device)
        scene = [t.to(device).requires_grad_() for t in hair_gaussians(n, vertices, faces, scalp)]

        for gaussian_backend in (b for b in gaussian_backends if b != "gsplat"):
            for mode in args.rasterize_modes:
                try:
                    rows.append(_gaussian_row(scene, cam, n, width, height, gaussian_backend, args.repeats, device,
                                              mode))
                except Exception as exc:  # noqa: BLE001 - a failing backend is reported, the others still run
                    rows.append((f"{n:,} Gaussians", gaussian_backend, f"{width}×{height}", "n/a",
                                 f"{type(exc).__name__}: {exc}"))
        if "gsplat" in gaussian_backends:
            rows.append(_gsplat_row(scene, cam, n, width, height, args.repeats))

    print()
    print("| work | backend | image | time | notes |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _gaussian_row(scene, cam: Camera, n: int, width: int, height: int, backend: str, repeats: int,
                  device: str, mode: str = "classic") -> tuple:
    """Forward and forward + backward times of our rasterizer on ``backend`` in ``mode`` (a
    rasterize mode, or ``apart``: antialiased opacities made first), memory and coverage."""

    def gaussians_forward():
        means, quats, scales, opacities = scene[:4]
        if mode == "apart":
            opacities = antialiased_opacities(means, quats, scales, opacities, cam)
        return rasterize_gaussians(means, quats, scales, opacities, cam, colors=scene[4], backend=backend,
                                   rasterize_mode="classic" if mode == "apart" else mode)

    def gaussians_forward_backward():
        out = gaussians_forward()
        (out["color"].sum() + out["alpha"].sum() + out["depth"].sum()).backward()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = psutil.Process().memory_info().rss / 2**30
    forward = timed(gaussians_forward, repeats, device)
    both = timed(gaussians_forward_backward, repeats, device)
    if device == "cuda":
        memory = f"peak CUDA {torch.cuda.max_memory_allocated() / 2**30:.2f} GB"
    else:
        memory = f"peak RSS {peak_rss_gb():.2f} GB (was {rss_before:.2f} before)"
    with torch.no_grad():
        out = gaussians_forward()
    coverage = float((out["alpha"] > 0.5).float().mean())
    label = "" if mode == "classic" else f" ({mode})"
    return (f"{n:,} Gaussians{label}, fwd / fwd + bwd", backend, f"{width}×{height}",
            f"{forward * 1000:.1f} / {both * 1000:.1f} ms", f"{memory}; {coverage:.0%} px α>0.5")


def _gsplat_row(scene, camera: Camera, n: int, width: int, height: int, repeats: int):
    """gsplat's plain rasterization of the same Gaussians (no near-z, no early stop): the speed reference."""
    try:
        from gsplat import rasterization  # noqa: PLC0415 - optional, CUDA machines only
    except ImportError as exc:
        return (f"{n:,} Gaussians (gsplat)", "gsplat", f"{width}×{height}", "n/a", str(exc))
    means, quats, scales, opacities, colors = scene

    def run():  # compiles gsplat's CUDA sources on the first call (the warm-up)
        out, alpha, _ = rasterization(means, quats, scales, opacities, colors, camera.world_to_camera[None],
                                      camera.intrinsics[None], width, height, render_mode="RGB+ED")
        (out.sum() + alpha.sum()).backward()

    try:
        seconds = timed(run, repeats, "cuda")
    except Exception as exc:  # noqa: BLE001 - e.g. its CUDA sources failed to compile
        return (f"{n:,} Gaussians (gsplat)", "gsplat", f"{width}×{height}", "n/a", f"{type(exc).__name__}: {exc}")
    return (f"{n:,} Gaussians, fwd + bwd (gsplat)", "gsplat", f"{width}×{height}", f"{seconds * 1000:.2f} ms",
            "plain 3DGS, the speed reference")


if __name__ == "__main__":
    main()
