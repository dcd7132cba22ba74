"""The triton Gaussian backend against the torch backend: on a GPU compiled, on a CPU in Triton's
interpreter (the same kernels, run element by element), so these run in CI without a GPU."""

import ast
import math
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before the kernels are defined (mega.render.gaussians_triton is imported lazily).
    os.environ["TRITON_INTERPRET"] = "1"

from mega.data.camera import Camera  # noqa: E402
from mega.render.gaussians import rasterize_gaussians, resolve_gaussian_backend  # noqa: E402
from test_render_gaussians import loss_of, random_scene  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
H, W = 20, 36  # 2 × 3 tiles, the last row and column of tiles partly outside the image


def camera() -> Camera:
    K = torch.tensor([[30.0, 0, 17.3], [0, 30.0, 9.1], [0, 0, 1]])
    return Camera(K, torch.eye(4), W, H)


def dense_scene(n: int, seed: int) -> list[torch.Tensor]:
    """Opaque, overlapping Gaussians: most pixels stop on the transmittance cut-off."""
    scene = [t.float() for t in random_scene(n, seed=seed)]
    scene[3] = scene[3] * 0.2 + 0.8
    return scene


SCENES = {"sparse": lambda: [t.float() for t in random_scene(60)], "dense": lambda: dense_scene(150, 3)}


def mesh_plane() -> torch.Tensor:
    mesh = torch.full((H, W), 1.2)
    mesh[:, :5] = math.inf  # no mesh there
    mesh[:3, 10:20] = 0.0  # nor there
    return mesh


@pytest.mark.parametrize("scene", list(SCENES))
@pytest.mark.parametrize("options", [
    {},
    {"early_stop_gap_m": None},
    {"min_transmittance": None, "early_stop_gap_m": None},
    {"mesh_depth": "plane"},
])
def test_triton_matches_torch_outputs_and_gradients(scene, options):
    if options.get("mesh_depth") == "plane":
        options = {**options, "mesh_depth": mesh_plane()}
    reference = [t.clone().requires_grad_() for t in SCENES[scene]()]
    kernel = [t.detach().to(DEVICE).requires_grad_() for t in reference]
    on_device = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in options.items()}
    ref = rasterize_gaussians(*reference[:4], camera(), colors=reference[4], backend="torch", **options)
    out = rasterize_gaussians(*kernel[:4], camera().to(DEVICE), colors=kernel[4], backend="triton", **on_device)
    assert 0.05 < float(ref["alpha"].detach().mean()) < 0.95
    if scene == "dense" and options.get("min_transmittance", 1e-4) is not None:
        assert float(ref["alpha"].detach().max()) > 1 - 1e-3  # the cut-off is reached somewhere
    for key in ("color", "alpha", "depth", "near_z"):
        torch.testing.assert_close(out[key].detach().cpu(), ref[key].detach(), atol=2e-6, rtol=1e-5)
    assert torch.equal(out["num_significant"].cpu(), ref["num_significant"])
    assert torch.equal(out["radii"].cpu(), ref["radii"])
    loss_of(ref).backward()
    loss_of(out).backward()
    for name, mine, expected in zip(("means", "quats", "scales", "opacities", "colors"), kernel, reference):
        torch.testing.assert_close(mine.grad.cpu(), expected.grad, atol=1e-4, rtol=1e-4, msg=name)
    torch.testing.assert_close(out["means2d"].grad.cpu(), ref["means2d"].grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("n_colors, dtype", [(1, torch.float32), (6, torch.float64)])
def test_triton_renders_any_number_of_channels_and_float64_inputs(n_colors, dtype):
    scene = [t.to(dtype) for t in random_scene(30, seed=5)][:4] + [torch.rand(30, n_colors, dtype=dtype)]
    reference = [t.clone().requires_grad_() for t in scene]
    kernel = [t.detach().to(DEVICE).requires_grad_() for t in scene]
    ref = rasterize_gaussians(*reference[:4], camera().to(dtype=dtype), colors=reference[4], backend="torch")
    out = rasterize_gaussians(*kernel[:4], camera().to(DEVICE, dtype), colors=kernel[4], backend="triton")
    assert out["color"].dtype == dtype and out["color"].shape == (H, W, n_colors)
    torch.testing.assert_close(out["color"].detach().cpu(), ref["color"].detach(), atol=1e-5, rtol=1e-4)
    loss_of(ref).backward()
    loss_of(out).backward()
    for name, mine, expected in zip(("means", "quats", "scales", "opacities", "colors"), kernel, reference):
        assert mine.grad.dtype == dtype
        torch.testing.assert_close(mine.grad.cpu(), expected.grad, atol=1e-4, rtol=1e-4, msg=name)


def turned_camera(dtype=torch.float32) -> Camera:
    """An off-centre camera turned and moved off the world's axes, so that every entry of its
    rotation and translation reaches the projection."""
    from mega.render.gaussians import quaternion_to_matrix

    world_to_camera = torch.eye(4, dtype=torch.float64)
    world_to_camera[:3, :3] = quaternion_to_matrix(torch.tensor([[0.97, 0.1, -0.15, 0.12]], dtype=torch.float64))[0]
    world_to_camera[:3, 3] = torch.tensor([0.05, -0.03, 0.1], dtype=torch.float64)
    K = torch.tensor([[30.0, 0, 17.3], [0, 31.0, 9.1], [0, 0, 1]], dtype=torch.float64)
    return Camera(K, world_to_camera, W, H).to(dtype=dtype)


@pytest.mark.parametrize("antialiased", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_projection_matches_the_torch_projection(dtype, antialiased):
    """The fused kernel against _screen_space on Gaussians in front, behind the near plane, off
    the image, large ones centred off the image (the Jacobian's clamp), and too transparent ones:
    every output, and the gradients of a weighted sum of the drawn rows; classic, and antialiased
    (the opacity scaled in the kernel, thin Gaussians among them)."""
    from mega.render.gaussians import _screen_space
    from mega.render.projection_triton import project

    g = torch.Generator().manual_seed(7)
    n = 300
    means = torch.cat([(torch.rand(n, 2, generator=g) * 2.4 - 1.2), 0.8 + torch.rand(n, 1, generator=g) * 0.6], 1)
    means[:10, 2] = -0.2 + 0.02 * torch.rand(10, generator=g)  # behind the camera
    quats = torch.randn(n, 4, generator=g) * (1 + torch.rand(n, 1, generator=g))  # not unit
    scales = torch.rand(n, 3, generator=g) * 0.03 + 0.005
    scales[10:60] *= 12  # large: some are drawn with their centres off the image
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    opacities[60:70] = 0.002  # below 1/255 everywhere: never drawn
    scene = [t.to(dtype) for t in (means, quats, scales, opacities)]
    reference = [t.clone().requires_grad_() for t in scene]
    kernel = [t.detach().to(DEVICE).requires_grad_() for t in scene]
    cam = turned_camera(dtype)

    means2d, conic, depths, _, extent_x, extent_y, key, radii, drawn_opacities = _screen_space(*reference, cam, 0.01,
                                                                                               antialiased)
    means2d_k, rest_k, extent_x_k, extent_y_k, key_k, radii_k = project(*kernel, cam.to(DEVICE), 0.01, antialiased)
    if antialiased:  # the factor matters for many
        assert int((drawn_opacities < 0.8 * reference[3]).sum()) > 50
    geometry = torch.cat([means2d_k, rest_k], 1)
    drawn = torch.isfinite(key)
    clamped = (means2d[:, 0].detach() < -0.3 * W) | (means2d[:, 0].detach() > 1.3 * W)
    assert 50 < int(drawn.sum()) < n - 60 and bool((drawn & clamped).any())  # every case is there
    assert torch.equal(torch.isfinite(key_k).cpu(), drawn)
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-9, "rtol": 1e-9}
    torch.testing.assert_close(key_k.cpu()[drawn], key[drawn], **tol)
    torch.testing.assert_close(radii_k.cpu(), radii)
    expected = torch.cat([means2d, conic, drawn_opacities[:, None], depths[:, None]], 1)
    torch.testing.assert_close(geometry.detach().cpu()[drawn], expected.detach()[drawn], **tol)
    torch.testing.assert_close(extent_x_k.cpu()[drawn], extent_x[drawn], **tol)
    torch.testing.assert_close(extent_y_k.cpu()[drawn], extent_y[drawn], **tol)
    weights = torch.randn(n, 7, generator=g, dtype=dtype) * drawn[:, None]
    (expected * weights).sum().backward()
    (geometry * weights.to(DEVICE)).sum().backward()
    for name, mine, ref in zip(("means", "quats", "scales", "opacities"), kernel, reference):
        assert mine.grad.dtype == dtype
        scale = float(ref.grad.abs().max())
        torch.testing.assert_close(mine.grad.cpu() / scale, ref.grad / scale, msg=name, **tol)


def test_gradients_reach_the_front_of_a_deep_opaque_stack_without_the_cut_off():
    """40 nearly opaque layers on one pixel and no T cut-off: T falls below float32's range, yet
    the front layers' gradients must not vanish (the backward works from log T)."""
    z = torch.linspace(1.0, 1.39, 40)
    means = torch.stack([(8.5 - 17.3) / 30 * z, (8.5 - 9.1) / 30 * z, z], 1)  # on pixel (8, 8)
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(40, 1)
    scales = torch.full((40, 3), 0.02)
    opacities = torch.ones(40)
    colors = torch.rand(40, 3, generator=torch.Generator().manual_seed(1))
    reference = [t.clone().requires_grad_() for t in (means, quats, scales, opacities, colors)]
    kernel = [t.detach().to(DEVICE).requires_grad_() for t in reference]
    options = {"min_transmittance": None, "early_stop_gap_m": None}
    ref = rasterize_gaussians(*reference[:4], camera(), colors=reference[4], backend="torch", **options)
    out = rasterize_gaussians(*kernel[:4], camera().to(DEVICE), colors=kernel[4], backend="triton", **options)
    assert int(ref["num_significant"][8, 8]) == 40
    (ref["color"][8, 8].sum()).backward()
    (out["color"][8, 8].sum()).backward()
    assert float(reference[4].grad[0].abs().min()) > 0.5  # the front layer carries most of the pixel
    for name, mine, expected in zip(("means", "quats", "scales", "opacities", "colors"), kernel, reference):
        torch.testing.assert_close(mine.grad.cpu(), expected.grad, atol=1e-4, rtol=1e-3, msg=name)


def binning(name: str):
    """The torch binning, or the kernels' with every Gaussian of ``order`` drawn: (means2d,
    extent_x, extent_y, order, H, W) → (lists, ranges)."""
    from mega.render.gaussians_triton import bin_tiles, bin_tiles_fused

    if name == "torch":
        return bin_tiles
    return lambda means2d, ex, ey, order, h, w: [t.cpu() for t in bin_tiles_fused(
        means2d.to(DEVICE), ex.to(DEVICE), ey.to(DEVICE), order.to(DEVICE), torch.zeros(len(means2d), device=DEVICE),
        h, w)]


def test_the_binning_kernels_make_the_torch_binning_lists():
    """Gaussians that are not drawn (key ∞) may stand in the kernels' order: they get no pairs."""
    from mega.render.gaussians import _screen_space
    from mega.render.gaussians_triton import bin_tiles, bin_tiles_fused

    means, quats, scales, opacities, _ = [t.float() for t in random_scene(300, seed=9)]
    means[:, :2] *= 3  # many off the image
    scales[::7] *= 6  # some across many tiles
    means2d, _, _, _, extent_x, extent_y, key, _, _ = _screen_space(means, quats, scales, opacities, camera(), 0.01)
    order = torch.argsort(key)
    drawn = int(torch.isfinite(key).sum())
    assert 30 < drawn < 270
    expected = bin_tiles(means2d.detach(), extent_x, extent_y, order[:drawn], H, W)
    fused = bin_tiles_fused(*(t.detach().to(DEVICE) for t in (means2d, extent_x, extent_y, order, key)), H, W)
    assert int(expected[1][-1]) > 1.5 * drawn  # some Gaussians span several tiles
    for mine, reference in zip(fused, expected):
        assert mine.dtype == reference.dtype == torch.int32
        assert torch.equal(mine.cpu(), reference)
    empty = bin_tiles_fused(*(t.detach().to(DEVICE) for t in (means2d, extent_x, extent_y, order)),
                            torch.full_like(key, math.inf).to(DEVICE), H, W)
    assert empty[0].numel() == 0 and int(empty[1].abs().max()) == 0


@pytest.mark.parametrize("binner", ["torch", "kernels"])
def test_every_pixel_the_torch_backend_composites_is_in_its_tile_list(binner):
    from mega.render.gaussians import _row_spans, project_gaussians
    from mega.render.gaussians_triton import TILE

    bin_tiles = binning(binner)

    means, quats, scales, opacities, _ = [t.float() for t in random_scene(80, seed=4)]
    means2d, depths, cov2d, _ = project_gaussians(means, quats, scales, camera())
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = a * c - b * b
    conic = torch.stack([c / det, -b / det, a / det], 1)
    level = 2 * torch.log(opacities * 255)
    extent_x, extent_y = torch.sqrt(level * a), torch.sqrt(level * c)
    order = torch.argsort(depths)
    gaussians, ranges = bin_tiles(means2d, extent_x, extent_y, order, H, W)
    rank, row, col0, length = _row_spans(means2d[order], conic[order], level[order], extent_y[order], H, W)
    tiles_x = math.ceil(W / TILE)
    lists = [set(gaussians[ranges[t]:ranges[t + 1]].tolist()) for t in range(len(ranges) - 1)]
    checked = 0
    for r, y, x0, n in zip(rank.tolist(), row.tolist(), col0.tolist(), length.tolist()):
        for x in range(x0, x0 + n):
            assert int(order[r]) in lists[y // TILE * tiles_x + x // TILE]
            checked += 1
    assert checked > 1000


@pytest.mark.parametrize("binner", ["torch", "kernels"])
def test_every_pixel_a_gaussian_reaches_is_in_its_tile_list(binner):
    from mega.render.gaussians_triton import TILE

    bin_tiles = binning(binner)

    means2d = torch.tensor([[3.0, 4.0], [17.2, 15.9], [35.5, 19.5], [-3.0, 8.0], [20.0, 40.0]])
    extent = torch.tensor([2.0, 1.6, 3.0, 4.0, 2.0])
    order = torch.tensor([1, 0, 2, 3])  # the last one is not drawn
    gaussians, ranges = bin_tiles(means2d, extent, extent, order, H, W)
    tiles_x = math.ceil(W / TILE)
    lists = [gaussians[ranges[t]:ranges[t + 1]].tolist() for t in range(len(ranges) - 1)]
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    for g in order.tolist():
        reached = ((xs - means2d[g, 0]).abs() <= extent[g]) & ((ys - means2d[g, 1]).abs() <= extent[g])
        tiles = {int(y) // TILE * tiles_x + int(x) // TILE for y, x in torch.nonzero(reached).tolist()}
        assert tiles and all(g in lists[t] for t in tiles)
        assert sum(g in tile_list for tile_list in lists) == len(tiles)  # and no other tile
    assert 4 not in gaussians.tolist()
    # Each tile's list keeps the depth order (1 before 0 before 2 before 3).
    for tile_list in lists:
        assert tile_list == sorted(tile_list, key=order.tolist().index)
    # Tile (1, 1) holds Gaussian 1 (at pixel 17, 15: its bounding box crosses into tiles 0 and 1).
    assert 1 in lists[1 * tiles_x + 1] and 1 in lists[0 * tiles_x + 1]


def test_triton_backend_is_refused_where_it_cannot_run(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensors"):
        resolve_gaussian_backend("triton", torch.device("cpu"))
    assert resolve_gaussian_backend("auto", torch.device("cpu")) == "numba"  # the CPU's own fast path
    with pytest.raises(ValueError, match="one of auto, torch, triton, numba"):
        rasterize_gaussians(*[t.float() for t in random_scene(3)][:4], camera(), colors=torch.rand(3, 3),
                            backend="cuda")


@pytest.mark.parametrize("n_colors, flags", [(3, True), (1, False)])
def test_kernels_compile_for_an_h100_without_one(n_colors, flags):
    # In a process of its own: under the interpreter the kernels are not compilable objects.
    script = ("from mega.render.gaussians_triton import compile_for\n"
              f"cubins = compile_for(90, {n_colors}, {flags})\n"
              "print(sorted((name, len(cubin)) for name, cubin in cubins.items()))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = dict(ast.literal_eval(result.stdout.strip().splitlines()[-1]))
    assert set(sizes) == {"backward", "forward", "project_forward", "project_backward", "sh_forward", "sh_backward",
                          "count_pairs", "emit_pairs"}
    assert min(sizes.values()) > 1000


@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
def test_the_hair_renders_through_the_backend_its_config_names(monkeypatch, rasterize_mode):
    from mega.errors import ConfigError
    from mega.render import gaussians_triton
    from mega.hair.config import HairConfig
    from mega.hair.render import render_hair

    with pytest.raises(ConfigError, match="gaussian_backend"):
        HairConfig(gaussian_backend="cuda").check("hair settings")
    means, quats, scales, opacities, colors = [t.float() for t in random_scene(40, seed=2)]
    sh = torch.zeros(40, 16, 3)
    sh[:, 0] = (colors - 0.5) / 0.28209479177387814  # degree-0 SH of these colours
    hair = {"means": means[None], "quats": quats[None], "scales": scales[None], "opacities": opacities[None],
            "sh": sh[None]}
    cameras = camera()
    batched = Camera(cameras.intrinsics[None], cameras.world_to_camera[None], W, H)
    calls = []
    composite = gaussians_triton.composite
    monkeypatch.setattr(gaussians_triton, "composite", lambda *args: calls.append(1) or composite(*args))
    ref = render_hair(hair, batched, 3, backend="torch", rasterize_mode=rasterize_mode)
    assert not calls
    out = render_hair({k: v.to(DEVICE) for k, v in hair.items()}, batched.to(DEVICE), 3, backend="triton",
                      rasterize_mode=rasterize_mode)
    assert len(calls) == 1 and out["rgb"].shape == ref["rgb"].shape == (1, 3, H, W)
    for key in ("rgb", "alpha", "depth", "near_z"):
        torch.testing.assert_close(out[key].cpu(), ref[key], atol=2e-6, rtol=1e-5)


def test_nothing_drawn_renders_empty_and_has_zero_gradients():
    scene = [t.float() for t in random_scene(5)]
    scene[0][:, 2] = -1.0  # all behind the camera
    scene = [t.to(DEVICE).requires_grad_() for t in scene]
    out = rasterize_gaussians(*scene[:4], camera().to(DEVICE), colors=scene[4], backend="triton")
    assert float(out["alpha"].detach().abs().max()) == 0.0 and bool(torch.isinf(out["near_z"]).all())
    loss_of(out).backward()
    assert all(float(t.grad.abs().max()) == 0.0 for t in scene)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_sh_colours_match_the_torch_colours(degree, dtype):
    """Colours from 16 coefficients at each degree, some clamped at 0, against eval_sh + 0.5
    clamped: values and the gradients to the coefficients and to the means."""
    from mega.render.sh import eval_sh
    from mega.render.sh_triton import sh_colors

    g = torch.Generator().manual_seed(degree)
    n = 200
    means = (torch.randn(n, 3, generator=g) * 0.3).to(dtype)
    sh = (torch.randn(n, 16, 3, generator=g) * 1.5).to(dtype)
    center = torch.tensor([0.1, -0.2, -1.5], dtype=dtype)
    reference = [t.clone().requires_grad_() for t in (means, sh)]
    kernel = [t.detach().to(DEVICE).requires_grad_() for t in (means, sh)]
    directions = reference[0] - center
    expected = torch.clamp_min(eval_sh(degree, reference[1], directions / directions.norm(dim=-1, keepdim=True)) + 0.5,
                               0.0)
    colors = sh_colors(*kernel, center.to(DEVICE), degree)
    assert bool((expected == 0).any()) and bool((expected > 0).any())  # both sides of the clamp
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-10}
    torch.testing.assert_close(colors.detach().cpu(), expected.detach(), **tol)
    weights = torch.randn(n, 3, generator=g, dtype=dtype)
    (expected * weights).sum().backward()
    (colors * weights.to(DEVICE)).sum().backward()
    for name, mine, ref in zip(("means", "sh"), kernel, reference):
        expected_grad = torch.zeros_like(ref) if ref.grad is None else ref.grad  # degree 0: no direction
        torch.testing.assert_close(mine.grad.cpu(), expected_grad, msg=name, **tol)
    if degree < 3:
        assert float(kernel[1].grad[:, (degree + 1) ** 2:].abs().max()) == 0.0
