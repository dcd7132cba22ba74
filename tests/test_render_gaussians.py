import math

import pytest
import torch

from gaussian_reference import reference_render
from mega.data.camera import Camera
from mega.render.gaussians import rasterize_gaussians
from mega.render.sh import eval_sh, rgb_to_sh_dc

H, W = 12, 16


def off_centre_camera(dtype=torch.float64) -> Camera:
    K = torch.tensor([[20.0, 0, 9.3], [0, 20.0, 5.1], [0, 0, 1]], dtype=dtype)
    return Camera(K, torch.eye(4, dtype=dtype), W, H)


def random_scene(n=40, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = torch.cat([torch.rand(n, 2, generator=g) * 0.6 - 0.3, 1.0 + torch.rand(n, 1, generator=g) * 0.3], 1)
    means[n // 2:, 2] += 0.12  # a second layer behind, so the early stop has work to do
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.03 + 0.01
    opacities = torch.rand(n, generator=g) * 0.8 + 0.1
    colors = torch.rand(n, 3, generator=g)
    return [t.to(dtype) for t in (means, quats, scales, opacities, colors)]


def on_centre_pixel(z):
    """A point at depth z that projects exactly onto the centre of pixel (5, 9) of off_centre_camera."""
    return [0.01 * z, 0.02 * z, z]


CENTRE = (5, 9)


def single_gaussians(points, opacities, colors, sigma_m=0.02, dtype=torch.float64):
    n = len(points)
    means = torch.tensor(points, dtype=dtype)
    quats = torch.tensor([[1.0, 0, 0, 0]] * n, dtype=dtype)
    scales = torch.full((n, 3), sigma_m, dtype=dtype)
    return means, quats, scales, torch.tensor(opacities, dtype=dtype), torch.tensor(colors, dtype=dtype)


def loss_of(out):
    weights = torch.linspace(0.2, 1.0, out["color"].shape[-1], dtype=out["color"].dtype, device=out["color"].device)
    return (out["color"] * weights).sum() + 0.3 * out["alpha"].sum() + out["depth"].sum()


@pytest.mark.parametrize("options", [
    {},
    {"early_stop_gap_m": None},
    {"min_transmittance": None, "early_stop_gap_m": None},
    {"mesh_depth": "plane"},
    {"pair_budget": 7},  # many chunks: the per-pixel state is carried across them
])
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_matches_sequential_reference_forward_and_gradients(options, backend):
    camera = off_centre_camera()
    if options.get("mesh_depth") == "plane":
        mesh = torch.full((H, W), 1.2, dtype=torch.float64)
        mesh[:, :5] = math.inf  # no mesh there
        options = {**options, "mesh_depth": mesh}
    ours = [t.clone().requires_grad_() for t in random_scene()]
    theirs = [t.clone().requires_grad_() for t in random_scene()]
    out = rasterize_gaussians(*ours[:4], camera, colors=ours[4], backend=backend, **options)
    ref = reference_render(*theirs, camera, **{k: v for k, v in options.items() if k != "pair_budget"})
    assert 0.05 < float(ref["alpha"].detach().mean()) < 0.95
    for key in ("color", "alpha", "depth"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-10, atol=1e-10)
    assert torch.equal(out["near_z"], ref["near_z"])
    loss_of(out).backward()
    loss_of(ref).backward()
    for mine, expected in zip(ours, theirs):
        torch.testing.assert_close(mine.grad, expected.grad, rtol=1e-8, atol=1e-10)


def test_transmittance_cutoff_stops_compositing():
    """Twenty opaque layers: the cut-off at T < 1e-4 ends the pixel after a few of them."""
    camera = off_centre_camera()
    points = [[0.0, 0.0, 1.0 + 0.001 * k] for k in range(20)]
    scene = single_gaussians(points, [0.9] * 20, [[1.0, 0, 0]] * 20, sigma_m=0.05)
    cut = rasterize_gaussians(*scene[:4], camera, colors=scene[4], early_stop_gap_m=None)
    full = rasterize_gaussians(*scene[:4], camera, colors=scene[4], early_stop_gap_m=None, min_transmittance=None)
    ref = reference_render(*scene, camera, early_stop_gap_m=None)
    torch.testing.assert_close(cut["alpha"], ref["alpha"], rtol=1e-12, atol=1e-12)
    centre = CENTRE
    assert 1 - cut["alpha"][centre] > 1e-4 > 1 - full["alpha"][centre]
    assert int(cut["num_significant"][centre]) < 20 == int(full["num_significant"][centre])


@pytest.mark.parametrize("gap_mm, back_kept", [(150, False), (50, True)])
def test_early_stop_gap_drops_the_far_layer(gap_mm, back_kept):
    camera = off_centre_camera()
    front, back = 1.0, 1.0 + gap_mm / 1000
    scene = single_gaussians([on_centre_pixel(front), on_centre_pixel(back)], [0.6, 0.8], [[1.0, 0, 0], [0, 0, 1.0]],
                             sigma_m=0.08)
    out = rasterize_gaussians(*scene[:4], camera, colors=scene[4])
    off = rasterize_gaussians(*scene[:4], camera, colors=scene[4], early_stop_gap_m=None)
    centre = CENTRE
    assert out["near_z"][0][centre] == pytest.approx(front)
    if back_kept:
        assert out["near_z"][1][centre] == pytest.approx(back)
        assert out["color"][centre][2] > 0.1
        torch.testing.assert_close(out["color"], off["color"])
    else:
        assert out["near_z"][1][centre] == math.inf
        assert out["color"][centre][2] == 0
        assert off["color"][centre][2] > 0.1  # switched off, the back layer shows through
        assert out["alpha"][centre] == pytest.approx(0.6, abs=1e-6)
    assert out["near_z"][2][centre] == math.inf


def test_near_z_skips_faint_gaussians():
    camera = off_centre_camera()
    scene = single_gaussians([on_centre_pixel(1.0), on_centre_pixel(1.02), on_centre_pixel(1.04)], [0.03, 0.5, 0.5],
                             [[1.0, 0, 0]] * 3, sigma_m=0.08)
    out = rasterize_gaussians(*scene[:4], camera, colors=scene[4])
    centre = CENTRE
    # The first Gaussian (α = 0.03 < 0.05) is composited but is not a near-z candidate.
    assert out["alpha"][centre] == pytest.approx(1 - 0.97 * 0.5 * 0.5, abs=1e-6)
    assert out["near_z"][:, centre[0], centre[1]].tolist() == pytest.approx([1.02, 1.04, math.inf])
    assert int(out["num_significant"][centre]) == 2


def test_mesh_depth_hides_gaussians_behind_it():
    camera = off_centre_camera()
    scene = single_gaussians([on_centre_pixel(1.0), on_centre_pixel(1.05)], [0.5, 0.5], [[1.0, 0, 0], [0, 1.0, 0]],
                             sigma_m=0.08)
    mesh = torch.full((H, W), 1.03, dtype=torch.float64)
    out = rasterize_gaussians(*scene[:4], camera, colors=scene[4], mesh_depth=mesh)
    assert torch.all(out["color"][..., 1] == 0)
    assert out["alpha"][CENTRE] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_gradcheck_float64_tiny(backend):
    camera = Camera(torch.tensor([[8.0, 0, 3.7], [0, 8.0, 2.6], [0, 0, 1]], dtype=torch.float64),
                    torch.eye(4, dtype=torch.float64), 6, 5)
    means, quats, scales, opacities, colors = random_scene(n=5, seed=3)
    means[:, :2] *= 0.5
    opacities = opacities.clamp(max=0.85)  # away from the 0.99 clamp, where α has a kink

    def render(m, q, s, o, c):
        out = rasterize_gaussians(m, q, s, o, camera, colors=c, pair_budget=9, backend=backend)
        return out["color"], out["alpha"], out["depth"]

    inputs = [t.clone().requires_grad_() for t in (means, quats, scales, opacities, colors)]
    assert torch.autograd.gradcheck(render, inputs, eps=1e-7, atol=1e-6, rtol=1e-4)


def test_means2d_gradient_and_radii_for_densification():
    camera = off_centre_camera(torch.float32)
    scene = [t.float().requires_grad_() for t in random_scene()]
    out = rasterize_gaussians(*scene[:4], camera, colors=scene[4])
    loss_of(out).backward()
    grad = out["means2d"].grad
    assert grad is not None and grad.shape == (40, 2)
    drawn = out["radii"] > 0
    assert drawn.any() and (grad[drawn].norm(dim=1) > 0).any()
    assert torch.all(grad[~drawn] == 0)
    pixels, depth = camera.project(scene[0].detach())
    torch.testing.assert_close(out["means2d"].detach(), pixels)
    torch.testing.assert_close(out["depths"].detach(), depth)


def test_gaussians_behind_the_camera_or_off_screen_are_not_drawn():
    camera = off_centre_camera()
    scene = single_gaussians([[0.0, 0.0, -1.0], [5.0, 0.0, 1.0], [0.0, 0.0, 1.0]], [0.9] * 3, [[1.0, 1, 1]] * 3)
    out = rasterize_gaussians(*scene[:4], camera, colors=scene[4])
    assert out["radii"].tolist()[:2] == [0, 0] and out["radii"][2] > 0


def test_gaussian_lands_on_the_projected_pixel_with_off_centre_principal_point():
    K = torch.tensor([[300.0, 0, 71.3], [0, 310.0, 40.6], [0, 0, 1]], dtype=torch.float64)
    camera = Camera(K, torch.eye(4, dtype=torch.float64), 120, 90)
    point = [[0.013, -0.021, 0.9]]
    scene = single_gaussians(point, [0.9], [[1.0, 1, 1]], sigma_m=0.0005)
    out = rasterize_gaussians(*scene[:4], camera, colors=scene[4])
    (x, y), = camera.project(scene[0])[0].tolist()
    peak = int(torch.argmax(out["alpha"]))
    assert (peak // 120, peak % 120) == (int(y), int(x))
    row, col = int(y), int(x)
    assert out["near_z"][0, row, col] == pytest.approx(0.9)
    assert out["depth"][row, col] / out["alpha"][row, col] == pytest.approx(0.9)


def test_spherical_harmonics_colours():
    camera = off_centre_camera()
    means, quats, scales, opacities, colors = random_scene(n=10)
    sh = torch.zeros(10, 16, 3, dtype=torch.float64)
    sh[:, 0] = rgb_to_sh_dc(colors)
    a = rasterize_gaussians(means, quats, scales, opacities, camera, sh=sh, sh_degree=3)
    b = rasterize_gaussians(means, quats, scales, opacities, camera, colors=colors)
    torch.testing.assert_close(a["color"], b["color"])
    # A degree-1 term makes the colour depend on the view direction.
    directions = torch.nn.functional.normalize(torch.tensor([[0.0, 0, 1], [1.0, 0, 0]], dtype=torch.float64), dim=1)
    coefficients = torch.zeros(2, 4, 3, dtype=torch.float64)
    coefficients[:, 2] = 1.0
    values = eval_sh(1, coefficients, directions)
    assert values[0, 0] > values[1, 0]


def test_bad_inputs_name_the_argument():
    camera = off_centre_camera()
    means, quats, scales, opacities, colors = random_scene(n=4)
    with pytest.raises(ValueError, match="scales"):
        rasterize_gaussians(means, quats, scales[:, :2], opacities, camera, colors=colors)
    with pytest.raises(ValueError, match="exactly one"):
        rasterize_gaussians(means, quats, scales, opacities, camera)
    with pytest.raises(ValueError, match="mesh_depth"):
        rasterize_gaussians(means, quats, scales, opacities, camera, colors=colors, mesh_depth=torch.ones(3, 3))


def test_float32_matches_float64():
    camera64 = off_centre_camera()
    scene = random_scene()
    out64 = rasterize_gaussians(*scene[:4], camera64, colors=scene[4])
    out32 = rasterize_gaussians(*[t.float() for t in scene[:4]], camera64.to(dtype=torch.float32),
                                colors=scene[4].float())
    torch.testing.assert_close(out32["color"].double(), out64["color"], atol=1e-5, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    camera = off_centre_camera(torch.float32)
    cpu = [t.float().requires_grad_() for t in random_scene()]
    gpu = [t.detach().cuda().requires_grad_() for t in cpu]
    a = rasterize_gaussians(*cpu[:4], camera, colors=cpu[4])
    b = rasterize_gaussians(*gpu[:4], camera.to("cuda"), colors=gpu[4])
    for key in ("color", "alpha", "depth", "near_z"):
        torch.testing.assert_close(b[key].cpu(), a[key], atol=1e-5, rtol=1e-4)
    loss_of(a).backward()
    loss_of(b).backward()
    for x, y in zip(cpu, gpu):
        torch.testing.assert_close(y.grad.cpu(), x.grad, atol=1e-4, rtol=1e-3)


def test_antialiased_opacities_keep_thin_strands_equally_covering_at_any_resolution():
    """Strands 0.2 px thick, about a pixel apart: with 3DGS's dilation as is they cover far more of
    a small image than of a 4× larger one box-filtered down; with the mass-preserving opacities both
    agree."""
    from mega.render.gaussians import antialiased_opacities

    g = torch.Generator().manual_seed(3)
    n = 24
    K = torch.tensor([[100.0, 0, 20.0], [0, 100.0, 15.0], [0, 0, 1]], dtype=torch.float64)
    small = Camera(K, torch.eye(4, dtype=torch.float64), 40, 30)
    large = small.resized(160, 120)
    # Vertical strands 8 px long, 0.2 px thick (at z = 1 m and f = 100 px, 1 px = 1 cm), apart.
    means = torch.stack([torch.linspace(-0.15, 0.15, n), (torch.rand(n, generator=g) - 0.5) * 0.1,
                         torch.ones(n)], 1).double()
    angle = torch.full((n,), math.pi / 4, dtype=torch.float64)  # x axis turned onto the image's y
    quats = torch.stack([angle.cos(), torch.zeros(n), torch.zeros(n), angle.sin()], 1).double()
    scales = torch.tensor([0.04, 0.002, 0.002], dtype=torch.float64).expand(n, 3)
    opacities = torch.full((n,), 0.9, dtype=torch.float64)

    def coverage(camera, antialiased, factor):
        o = antialiased_opacities(means, quats, scales, opacities, camera) if antialiased else opacities
        alpha = rasterize_gaussians(means, quats, scales, o, camera, colors=torch.ones(n, 1, dtype=torch.float64),
                                    backend="torch")["alpha"]
        return torch.nn.functional.avg_pool2d(alpha[None, None], factor)[0, 0]

    classic_small, classic_large = coverage(small, False, 1), coverage(large, False, 4)
    aa_small, aa_large = coverage(small, True, 1), coverage(large, True, 4)
    assert classic_small.sum() > 1.8 * classic_large.sum()
    assert float(aa_small.sum()) == pytest.approx(float(aa_large.sum()), rel=0.1)
    # Per pixel too, not only in total.
    assert (aa_small - aa_large).abs().max() < 0.5 * (classic_small - classic_large).abs().max()
    # A Gaussian much wider than a pixel keeps its opacity.
    wide = antialiased_opacities(means, quats, scales * 20, opacities, small)
    assert torch.allclose(wide, opacities, rtol=0.05)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_the_antialiased_mode_draws_what_antialiased_opacities_draw_in_one_projection(backend):
    """rasterize_mode="antialiased" scales the opacities inside the render's own projection: the
    same images and gradients as antialiased_opacities' opacities drawn classic, and a mode that
    does not exist is refused by name."""
    from mega.render.gaussians import antialiased_opacities

    means, quats, scales, opacities, colors = random_scene(60, seed=5)
    scales = scales * 0.15  # thin enough for the factor to matter (0.3–1.5 px)
    camera = off_centre_camera()
    weights = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def run(fused):
        leaves = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities)]
        m, q, s, o = leaves
        if fused:
            out = rasterize_gaussians(m, q, s, o, camera, colors=colors, backend=backend, rasterize_mode="antialiased")
        else:
            out = rasterize_gaussians(m, q, s, antialiased_opacities(m, q, s, o, camera), camera, colors=colors,
                                      backend=backend)
        ((out["color"] * weights).sum() + out["alpha"].sum()).backward()
        return out, [t.grad for t in leaves]

    (fused, fused_grads), (apart, apart_grads) = run(True), run(False)
    classic = rasterize_gaussians(means, quats, scales, opacities, camera, colors=colors, backend=backend)
    assert fused["alpha"].sum() < 0.8 * classic["alpha"].sum()  # the factor did something
    for key in ("color", "alpha", "depth", "near_z"):
        torch.testing.assert_close(fused[key], apart[key])
    for got, expected in zip(fused_grads, apart_grads):
        torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="rasterize_mode must be one of classic, antialiased, got 'mip'"):
        rasterize_gaussians(means, quats, scales, opacities, camera, colors=colors, rasterize_mode="mip")
