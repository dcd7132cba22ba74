"""The numba Gaussian backend (the CPU's fast compositing) against the torch backend, the
reference: outputs to float32 rounding and gradients, on sparse and dense scenes, with every stop
on and off, across chunks, in any number of channels and in float64."""

import pytest
import torch

from mega.data.camera import Camera
from mega.render.gaussians import rasterize_gaussians, resolve_gaussian_backend
from test_render_gaussians import loss_of, random_scene
from test_render_triton import SCENES, H, W, camera, mesh_plane  # the scenes the triton backend is checked on


def both_backends(scene: list[torch.Tensor], cam: Camera, **options):
    """(torch outputs, numba outputs, torch leaves, numba leaves) after backward of one loss."""
    leaves = {name: [t.detach().clone().requires_grad_() for t in scene] for name in ("torch", "numba")}
    outs = {name: rasterize_gaussians(*leaves[name][:4], cam, colors=leaves[name][4], backend=name, **options)
            for name in leaves}
    for out in outs.values():
        loss_of(out).backward()
    return outs["torch"], outs["numba"], leaves["torch"], leaves["numba"]


def assert_same(ref, out, ref_leaves, leaves, atol=2e-6, grad_atol=1e-4):
    for key in ("color", "alpha", "depth", "near_z"):
        torch.testing.assert_close(out[key].detach(), ref[key].detach(), atol=atol, rtol=1e-5, msg=key)
    assert torch.equal(out["num_significant"], ref["num_significant"])
    assert torch.equal(out["radii"], ref["radii"])
    for name, mine, expected in zip(("means", "quats", "scales", "opacities", "colors"), leaves, ref_leaves):
        torch.testing.assert_close(mine.grad, expected.grad, atol=grad_atol, rtol=1e-4, msg=name)
    torch.testing.assert_close(out["means2d"].grad, ref["means2d"].grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scene", list(SCENES))
@pytest.mark.parametrize("options", [
    {},
    {"early_stop_gap_m": None},
    {"min_transmittance": None, "early_stop_gap_m": None},
    {"mesh_depth": "plane"},
    {"pair_budget": 50},  # many chunks: each pixel's state and the backward's sums cross them
])
def test_numba_matches_torch_outputs_and_gradients(scene, options):
    if options.get("mesh_depth") == "plane":
        options = {**options, "mesh_depth": mesh_plane()}
    ref, out, ref_leaves, leaves = both_backends(SCENES[scene](), camera(), **options)
    assert 0.05 < float(ref["alpha"].detach().mean()) < 0.95
    if scene == "dense" and options.get("min_transmittance", 1e-4) is not None:
        assert float(ref["alpha"].detach().max()) > 1 - 1e-3  # the cut-off is reached somewhere
    assert_same(ref, out, ref_leaves, leaves)


@pytest.mark.parametrize("n_colors, dtype", [(1, torch.float32), (6, torch.float64)])
def test_numba_renders_any_number_of_channels_and_float64_inputs(n_colors, dtype):
    scene = [t.to(dtype) for t in random_scene(30, seed=5)][:4] + [torch.rand(30, n_colors, dtype=dtype)]
    ref, out, ref_leaves, leaves = both_backends(scene, camera().to(dtype=dtype))
    assert out["color"].dtype == dtype and out["color"].shape == (H, W, n_colors)
    assert_same(ref, out, ref_leaves, leaves, atol=1e-9 if dtype == torch.float64 else 2e-6,
                grad_atol=1e-9 if dtype == torch.float64 else 1e-4)


def test_gradients_reach_the_front_of_a_deep_opaque_stack_without_the_cut_off():
    """40 nearly opaque layers on one pixel and no T cut-off: T falls below float32's range."""
    z = torch.linspace(1.0, 1.39, 40)
    means = torch.stack([(8.5 - 17.3) / 30 * z, (8.5 - 9.1) / 30 * z, z], 1)  # on pixel (8, 8)
    scene = [means, torch.tensor([[1.0, 0, 0, 0]]).repeat(40, 1), torch.full((40, 3), 0.02), torch.ones(40),
             torch.rand(40, 3, generator=torch.Generator().manual_seed(1))]
    ref, out, ref_leaves, leaves = both_backends(scene, camera(), min_transmittance=None, early_stop_gap_m=None)
    assert int(out["num_significant"][8, 8]) == 40
    assert_same(ref, out, ref_leaves, leaves)
    assert float(leaves[4].grad[0].abs().min()) > 0.5  # the front layer carries most of the pixel


def test_nothing_drawn_renders_empty_and_has_zero_gradients():
    scene = [t.float() for t in random_scene(10)]
    scene[0] = scene[0] * torch.tensor([1.0, 1.0, -1.0])  # every Gaussian behind the camera
    ref, out, ref_leaves, leaves = both_backends(scene, camera())
    assert float(out["alpha"].detach().abs().max()) == 0
    assert_same(ref, out, ref_leaves, leaves)


def test_auto_picks_numba_on_the_cpu_and_numba_is_refused_elsewhere():
    assert resolve_gaussian_backend("auto", torch.device("cpu")) == "numba"
    with pytest.raises(ValueError, match="numba Gaussian backend runs on the CPU"):
        resolve_gaussian_backend("numba", torch.device("cuda"))


def _shifted_camera(dx: float) -> Camera:
    cam = camera()
    world_to_camera = cam.world_to_camera.clone()
    world_to_camera[0, 3] = dx
    return Camera(cam.intrinsics, world_to_camera, W, H)


@pytest.mark.parametrize("mesh", [False, True])
def test_a_batch_composited_on_two_threads_is_each_image_rendered_alone(mesh):
    """rasterize_gaussians_batch shares the images' loops among threads (forward and backward):
    each image's outputs and gradients are those of its own rasterize_gaussians call."""
    from mega.render.gaussians import rasterize_gaussians_batch

    scenes = [SCENES["dense"](), SCENES["sparse"](), SCENES["dense"]()]
    n = min(s[0].shape[0] for s in scenes)
    stacked = [torch.stack([s[k][:n] for s in scenes]) for k in range(5)]
    cameras = [_shifted_camera(dx) for dx in (0.0, 0.05, -0.03)]
    options = {"mesh_depth": torch.stack([mesh_plane()] * 3)} if mesh else {}
    batch_leaves = [t.detach().clone().requires_grad_() for t in stacked]
    outs = rasterize_gaussians_batch(*batch_leaves[:4], cameras, colors=batch_leaves[4], threads=2,
                                     backend="numba", pair_budget=300, **options)
    sum(loss_of(o) for o in outs).backward()
    for i, out in enumerate(outs):
        leaves = [t[i].detach().clone().requires_grad_() for t in stacked]
        alone = rasterize_gaussians(*leaves[:4], cameras[i], colors=leaves[4], backend="numba", pair_budget=300,
                                    **({"mesh_depth": mesh_plane()} if mesh else {}))
        loss_of(alone).backward()
        for key in ("color", "alpha", "depth", "near_z", "num_significant", "radii"):
            assert torch.equal(out[key], alone[key]), key
        for name, batch_leaf, leaf in zip(("means", "quats", "scales", "opacities", "colors"), batch_leaves, leaves):
            assert torch.equal(batch_leaf.grad[i], leaf.grad), (i, name)
        assert torch.equal(out["means2d"].grad, alone["means2d"].grad)
    assert float(outs[0]["alpha"].detach().mean()) > 0.05
    assert not torch.equal(outs[0]["color"], outs[1]["color"])  # the images differ: each went to its own
    with pytest.raises(ValueError, match="one size"):
        rasterize_gaussians_batch(*stacked[:4], [camera(), Camera(camera().intrinsics, torch.eye(4), W + 1, H),
                                                 camera()], colors=stacked[4], threads=2, backend="numba")
