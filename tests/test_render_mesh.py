import math

import pytest
import torch
import trimesh

from mega.data.camera import Camera
from mega.render.gaussians import rasterize_gaussians
from mega.render.mesh import interpolate, rasterize, texture
from mega.render.projection import ndc_depth_to_metres, world_to_clip

H, W = 48, 64


def off_centre_camera(dtype=torch.float64, width=W, height=H) -> Camera:
    K = torch.tensor([[70.0, 0, 35.3], [0, 72.0, 21.1], [0, 0, 1]], dtype=dtype)
    return Camera(K, torch.eye(4, dtype=dtype), width, height)


def small_camera() -> Camera:
    K = torch.tensor([[9.0, 0, 4.3], [0, 9.0, 3.1], [0, 0, 1]], dtype=torch.float64)
    return Camera(K, torch.eye(4, dtype=torch.float64), 8, 6)


def square(x0, x1, y0, y1, z, dtype=torch.float64):
    vertices = torch.tensor([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=dtype)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    return vertices, faces


def render(vertices, faces, camera, **kwargs):
    rast = rasterize(world_to_clip(vertices, camera)[None], faces, (camera.height, camera.width), **kwargs)
    return rast[0]


def test_square_coverage_and_depth_are_exact():
    camera = off_centre_camera()
    vertices, faces = square(-0.113, 0.171, -0.052, 0.129, 2.0)
    rast = render(vertices, faces, camera)
    corners, _ = camera.project(vertices)
    (x0, y0), (x1, y1) = corners.amin(0).tolist(), corners.amax(0).tolist()
    cols = [j for j in range(W) if x0 <= j + 0.5 <= x1]
    rows = [i for i in range(H) if y0 <= i + 0.5 <= y1]
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
    assert torch.equal(rast[..., 3] > 0, expected)
    depth = ndc_depth_to_metres(rast[..., 2][expected])
    torch.testing.assert_close(depth, torch.full_like(depth, 2.0))
    z = interpolate(vertices[:, 2:], rast[None], faces)[0, ..., 0]
    torch.testing.assert_close(z[expected], torch.full_like(depth, 2.0))
    assert torch.all(z[~expected] == 0)


def test_nearest_triangle_wins_whatever_the_order():
    camera = off_centre_camera()
    near_v, near_f = square(-0.1, 0.1, -0.1, 0.1, 1.5)
    far_v, far_f = square(-0.2, 0.2, -0.2, 0.2, 2.5)
    for first_near in (True, False):
        parts = [(near_v, near_f), (far_v, far_f)] if first_near else [(far_v, far_f), (near_v, near_f)]
        vertices = torch.cat([parts[0][0], parts[1][0]])
        faces = torch.cat([parts[0][1], parts[1][1] + 4])
        rast = render(vertices, faces, camera)
        near_ids = {1, 2} if first_near else {3, 4}
        centre_id = int(rast[21, 35, 3])
        assert centre_id in near_ids
        assert ndc_depth_to_metres(rast[21, 35, 2]) == pytest.approx(1.5)


def test_sphere_silhouette_matches_the_analytic_disc():
    camera = off_centre_camera(torch.float32, 200, 160)
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.1)
    distance = 1.0
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32) + torch.tensor([0, 0, distance])
    faces = torch.tensor(sphere.faces)
    rast = render(vertices, faces, camera)
    # A sphere on the optical axis projects to a circle of radius f·r / sqrt(d² − r²).
    radius_px = 70.0 * 0.1 / math.sqrt(distance**2 - 0.1**2)
    area = float((rast[..., 3] > 0).sum())
    assert area == pytest.approx(math.pi * radius_px**2, rel=0.03)
    centre_depth = ndc_depth_to_metres(rast[21, 35, 2].double())
    assert centre_depth == pytest.approx(distance - 0.1, abs=1e-3)


def test_interpolated_points_project_back_onto_pixel_centres():
    """Perspective-correct barycentrics on a steeply slanted triangle: the surface point seen at
    each pixel centre projects back onto that centre."""
    camera = off_centre_camera()
    vertices = torch.tensor([[-0.3, -0.2, 1.0], [0.4, -0.1, 3.0], [0.0, 0.3, 1.5]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    rast = render(vertices, faces, camera)
    covered = rast[..., 3] > 0
    assert covered.sum() > 200
    points = interpolate(vertices, rast[None], faces)[0][covered]
    pixels, depth = camera.project(points)
    rows, cols = torch.nonzero(covered).unbind(1)
    torch.testing.assert_close(pixels, torch.stack([cols + 0.5, rows + 0.5], 1).double(), atol=1e-9, rtol=0)
    torch.testing.assert_close(depth, ndc_depth_to_metres(rast[..., 2][covered]), atol=1e-9, rtol=1e-9)


def test_mesh_and_gaussians_agree_on_pixel_and_depth():
    camera = off_centre_camera()
    vertices = torch.tensor([[-0.3, -0.2, 1.0], [0.4, -0.1, 1.6], [0.0, 0.3, 1.2]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    rast = render(vertices, faces, camera)
    for row, col in [(20, 30), (25, 40)]:
        assert rast[row, col, 3] > 0
        point = interpolate(vertices, rast[None], faces)[0, row, col]
        mesh_depth = ndc_depth_to_metres(rast[row, col, 2])
        one = lambda *values: torch.tensor([values], dtype=torch.float64)  # noqa: E731
        out = rasterize_gaussians(point[None], one(1.0, 0, 0, 0), one(0.0004, 0.0004, 0.0004),
                                  torch.tensor([0.9], dtype=torch.float64), camera, colors=one(1.0, 1, 1))
        torch.testing.assert_close(out["means2d"][0], torch.tensor([col + 0.5, row + 0.5], dtype=torch.float64))
        peak = int(torch.argmax(out["alpha"]))
        assert (peak // W, peak % W) == (row, col)
        assert out["near_z"][0, row, col] == pytest.approx(float(mesh_depth), abs=1e-9)


def test_chunking_does_not_change_the_result():
    camera = off_centre_camera(torch.float32)
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.1)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32) + torch.tensor([0.02, 0, 0.6])
    faces = torch.tensor(sphere.faces)
    whole = render(vertices, faces, camera)
    chunked = render(vertices, faces, camera, pair_budget=50)
    assert torch.equal(whole, chunked)


def test_batched_rasterize_and_interpolate():
    camera = off_centre_camera()
    v1, faces = square(-0.1, 0.1, -0.1, 0.1, 1.5)
    v2, _ = square(-0.2, 0.05, -0.1, 0.2, 2.5)
    pos = torch.stack([world_to_clip(v1, camera), world_to_clip(v2, camera)])
    rast = rasterize(pos, faces, (H, W))
    assert rast.shape == (2, H, W, 4)
    assert torch.equal(rast[1], render(v2, faces, camera))
    colours = torch.stack([torch.ones(4, 1), 2 * torch.ones(4, 1)]).double()
    out = interpolate(colours, rast, faces)
    for b, value in [(0, 1.0), (1, 2.0)]:
        inside = out[b][rast[b, ..., 3] > 0]
        torch.testing.assert_close(inside, torch.full_like(inside, value))
        assert torch.all(out[b][rast[b, ..., 3] == 0] == 0)


def test_gradcheck_interpolate():
    camera = small_camera()
    vertices = torch.tensor([[-0.3, -0.2, 1.0], [0.4, -0.1, 1.6], [0.0, 0.3, 1.2]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    rast = render(vertices, faces, camera)[None]
    assert (rast[..., 3] > 0).sum() >= 4
    attr = torch.randn(1, 3, 2, dtype=torch.float64, requires_grad=True)
    uv = rast[..., :2].clone().requires_grad_()

    def f(a, barycentrics):
        return interpolate(a, torch.cat([barycentrics, rast[..., 2:]], -1), faces)

    assert torch.autograd.gradcheck(f, (attr, uv))


def test_gradients_reach_vertex_positions():
    camera = small_camera()
    vertices = torch.tensor([[-0.3, -0.2, 1.0], [0.4, -0.1, 1.6], [0.0, 0.3, 1.2]], dtype=torch.float64,
                            requires_grad=True)
    faces = torch.tensor([[0, 1, 2]])
    assert (render(vertices.detach(), faces, camera)[..., 3] > 0).sum() >= 4
    attr = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)

    def f(v):
        rast = render(v, faces, camera)
        return interpolate(attr, rast[None], faces), rast[..., 2]

    # Small steps keep coverage fixed; the barycentrics and z/w vary smoothly with the vertices.
    assert torch.autograd.gradcheck(f, (vertices,), eps=1e-7, atol=1e-5)


@pytest.mark.parametrize("mode", ["wrap", "clamp", "zero"])
def test_texture_matches_bilinear_by_hand_and_gradcheck(mode):
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(1, 4, 5, 2, generator=g, dtype=torch.float64, requires_grad=True)
    uv = torch.rand(1, 3, 7, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    uv.requires_grad_()
    out = texture(tex, uv, boundary_mode=mode)
    expected = _bilinear_by_hand(tex[0].detach(), uv[0].detach(), mode)
    torch.testing.assert_close(out[0], expected)
    assert torch.autograd.gradcheck(lambda t, c: texture(t, c, boundary_mode=mode), (tex, uv))


def _bilinear_by_hand(tex, uv, mode):
    Ht, Wt, _ = tex.shape
    out = torch.zeros(uv.shape[:-1] + (tex.shape[-1],), dtype=tex.dtype)
    for index in torch.cartesian_prod(torch.arange(uv.shape[0]), torch.arange(uv.shape[1])):
        i, j = index.tolist()
        x = float(uv[i, j, 0]) * Wt - 0.5
        y = float(uv[i, j, 1]) * Ht - 0.5
        x0, y0 = math.floor(x), math.floor(y)
        for dx, dy in [(0, 0), (1, 0), (0, 1), (1, 1)]:
            weight = (1 - abs(x - (x0 + dx))) * (1 - abs(y - (y0 + dy)))
            xi, yi = x0 + dx, y0 + dy
            if mode == "wrap":
                value = tex[yi % Ht, xi % Wt]
            elif mode == "clamp":
                value = tex[min(max(yi, 0), Ht - 1), min(max(xi, 0), Wt - 1)]
            else:
                value = tex[yi, xi] if 0 <= yi < Ht and 0 <= xi < Wt else torch.zeros_like(tex[0, 0])
            out[i, j] += weight * value
    return out


def test_texel_centres_return_texels():
    tex = torch.arange(12, dtype=torch.float64).view(1, 3, 4, 1)
    uv = torch.tensor([[[[(1 + 0.5) / 4, (2 + 0.5) / 3]]]], dtype=torch.float64)
    assert float(texture(tex, uv)) == 9.0  # row 2, column 1


def test_bad_inputs_and_backend_choice():
    camera = off_centre_camera()
    vertices, faces = square(-0.1, 0.1, -0.1, 0.1, 1.5)
    with pytest.raises(ValueError, match=r"pos_clip must be \[B, V, 4\]"):
        rasterize(world_to_clip(vertices, camera), faces, (H, W))
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        rasterize(world_to_clip(vertices, camera)[None], faces, (H, W), backend="cuda")
    with pytest.raises(ValueError, match="backend must be"):
        rasterize(world_to_clip(vertices, camera)[None], faces, (H, W), backend="opengl")
    rast = render(vertices, faces, camera)
    with pytest.raises(ValueError, match="attr batch"):
        interpolate(torch.ones(3, 4, 1), rast[None], faces)


def test_triangles_behind_the_camera_are_dropped():
    camera = off_centre_camera()
    vertices = torch.tensor([[-0.1, -0.1, -1.0], [0.1, -0.1, 1.0], [0.0, 0.1, 1.0]], dtype=torch.float64)
    rast = render(vertices, torch.tensor([[0, 1, 2]]), camera)
    assert torch.all(rast == 0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvdiffrast_matches_torch_backend():
    pytest.importorskip("nvdiffrast.torch")
    camera = off_centre_camera(torch.float32, 200, 160)
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.1)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32) + torch.tensor([0.01, 0, 0.7])
    faces = torch.tensor(sphere.faces, dtype=torch.int32)
    pos = world_to_clip(vertices, camera)[None]
    a = rasterize(pos, faces, (160, 200), backend="torch")
    b = rasterize(pos.cuda(), faces.cuda(), (160, 200), backend="cuda").cpu()
    same = (a[..., 3] == b[..., 3])
    assert same.float().mean() > 0.995  # edge pixels may differ by tie-breaking
    both = same & (a[..., 3] > 0)
    # nvdiffrast snaps vertices to its sub-pixel grid: barycentrics move by about 1e-4 (seen 1.2e-4 on an H200).
    torch.testing.assert_close(a[both], b[both], atol=5e-4, rtol=1e-4)
    attr = vertices[None]
    torch.testing.assert_close(interpolate(attr.cuda(), b.cuda(), faces.cuda(), backend="cuda").cpu()[both],
                               interpolate(attr, a, faces, backend="torch")[both], atol=1e-4, rtol=1e-4)
    tex = torch.rand(1, 16, 16, 3)
    uv = torch.rand(1, 8, 8, 2)
    torch.testing.assert_close(texture(tex.cuda(), uv.cuda(), backend="cuda").cpu(), texture(tex, uv, backend="torch"),
                               atol=1e-5, rtol=1e-4)


def test_expand_ranges():
    from mega.render.ranges import expand_ranges

    owner, offset = expand_ranges(torch.tensor([2, 0, 3]))
    assert owner.tolist() == [0, 0, 2, 2, 2]
    assert offset.tolist() == [0, 1, 0, 1, 2]


def test_texture_at_matches_texture_at_covered_pixels():
    from mega.render.mesh import texture, texture_at
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(2, 5, 7, 9, dtype=torch.float64, generator=g)  # [B, C, Ht, Wt]
    uv = torch.rand(2, 4, 6, 2, dtype=torch.float64, generator=g) * 1.2 - 0.1  # some off the border
    covered = torch.rand(2, 4, 6, generator=g) > 0.4
    full = texture(tex.permute(0, 2, 3, 1), uv, boundary_mode="clamp")
    points = texture_at(tex, uv[covered], torch.nonzero(covered)[:, 0])
    torch.testing.assert_close(points, full[covered])
    tex.requires_grad_(True)
    uv_pts = uv[covered].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, u: texture_at(t, u, torch.nonzero(covered)[:, 0]),
                                    (tex, uv_pts), eps=1e-6, atol=1e-5)


def test_auto_falls_back_once_where_nvdiffrast_cannot_be_built(monkeypatch):
    from mega.render import mesh

    attempts = []

    def failing_build(device):
        attempts.append(device)
        raise RuntimeError("nvcc failed")

    monkeypatch.setattr(mesh, "_cuda_context", failing_build)
    monkeypatch.setattr(mesh, "_nvdiffrast_unavailable", {})
    device = torch.device("cuda", 0)  # only its type is read: no GPU needed
    with pytest.warns(UserWarning, match="nvdiffrast unavailable on cuda:0 .*nvcc failed"):
        assert mesh.resolve_backend("auto", device) == "torch"
    for _ in range(3):  # the failed build is not tried again on every call
        assert mesh.resolve_backend("auto", device) == "torch"
    assert attempts == [device]
    assert mesh.resolve_backend("auto", torch.device("cpu")) == "torch"
