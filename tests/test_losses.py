"""Losses of the face stage against closed forms on hand-built meshes, depth maps and images."""

import math

import pytest
import torch

from mega import losses
from mega.eval.face_metrics import as_8bit, depth_mae_mm, erode_mask, psnr_frame, psnr_masked, unknown_fraction
from mega.face.mesh import adjacent_face_pairs
from mega.flame.geometry import mesh_edges


def grid_mesh(n: int = 5, bump: float = 0.0):
    """An n × n vertex grid in the z = 0 plane, 1 cm spacing; the centre vertex raised by ``bump``."""
    ys, xs = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    vertices = torch.stack([xs * 0.01, ys * 0.01, torch.zeros_like(xs)], -1).view(-1, 3)
    vertices[(n * n) // 2, 2] += bump
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            faces += [[a, b, c], [b, d, c]]
    return vertices[None], torch.tensor(faces)


def octahedron(radius: float):
    v = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float64)
    faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    return v[None] * radius, faces


# ----------------------------------------------------------------------------- mesh regularisers
def test_edge_length_is_the_l1_of_length_differences_with_masked_edges_counted():
    reference = torch.tensor([[[0.0, 0, 0], [0.01, 0, 0], [0, 0.01, 0]]], dtype=torch.float64)
    stretched = reference.clone()
    stretched[0, 1, 0] = 0.02  # edge 0-1: 1 cm → 2 cm; edge 1-2: √2 cm → √5 cm; edge 0-2 unchanged
    edges = torch.tensor([[0, 1], [1, 2], [0, 2]])
    keep = torch.tensor([True, True, True])
    expected = (0.01 + (math.sqrt(5) - math.sqrt(2)) * 0.01) / 3
    assert float(losses.edge_length(stretched, reference, edges, keep)) == pytest.approx(expected, rel=1e-12)
    # Shrinking by the same amounts costs the same (L1, not squared; metres, not m²).
    assert float(losses.edge_length(reference, stretched, edges, keep)) == pytest.approx(expected, rel=1e-12)
    # A masked edge adds 0 but stays in the mean.
    keep_mouth = torch.tensor([False, True, True])
    expected_masked = (math.sqrt(5) - math.sqrt(2)) * 0.01 / 3
    assert float(losses.edge_length(stretched, reference, edges, keep_mouth)) == pytest.approx(expected_masked)


@pytest.mark.parametrize("radius", [0.01, 0.1])
def test_laplacian_of_an_octahedron_is_its_radius(radius):
    # Every vertex's four neighbours are symmetric about the centre, so the cotangent-weighted
    # mean of the neighbours is the origin and each vertex is one radius away from it.
    vertices, faces = octahedron(radius)
    assert float(losses.laplacian_smoothing(vertices, faces)) == pytest.approx(radius, rel=1e-9)


def test_laplacian_vanishes_inside_a_flat_grid_and_pulls_a_bump_down():
    flat, faces = grid_mesh()
    bumped, _ = grid_mesh(bump=0.005)
    assert float(losses.laplacian_smoothing(bumped, faces)) > float(losses.laplacian_smoothing(flat, faces))
    bumped.requires_grad_(True)
    losses.laplacian_smoothing(bumped, faces).backward()
    assert float(bumped.grad[0, 12, 2]) > 0


@pytest.mark.parametrize("angle", [0.0, 0.3, 1.2])
def test_normal_consistency_of_a_hinge_is_one_minus_the_cosine_of_its_angle(angle):
    vertices = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -math.cos(angle), math.sin(angle)]]],
                            dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [1, 0, 3]])
    pairs = torch.as_tensor(adjacent_face_pairs(faces.numpy()))
    assert pairs.tolist() == [[0, 1]]
    assert float(losses.normal_consistency(vertices, faces, pairs)) == pytest.approx(1 - math.cos(angle), abs=1e-12)


def test_grid_regularisers_vanish_when_flat():
    flat, faces = grid_mesh()
    bumped, _ = grid_mesh(bump=0.005)
    pairs = torch.as_tensor(adjacent_face_pairs(faces.numpy()))
    edges = torch.as_tensor(mesh_edges(faces.numpy())[0])
    keep = torch.ones(len(edges), dtype=torch.bool)
    assert float(losses.normal_consistency(flat, faces, pairs)) < 1e-12
    assert float(losses.normal_consistency(bumped, faces, pairs)) > 1e-3
    assert float(losses.edge_length(flat, flat, edges, keep)) == 0.0


# ----------------------------------------------------------------------------- scalp shrink
def test_vertices_seen_in_a_region_are_those_of_its_triangles():
    faces = torch.tensor([[0, 1, 2], [2, 3, 4], [4, 5, 6]])
    triangle_id = torch.tensor([[[0, 1, 1], [0, 3, 2]]])  # id + 1; 0 = no triangle
    hair = torch.tensor([[[[True, True, False], [True, True, False]]]])
    seen = losses.vertices_seen_in(hair, triangle_id, faces, 8)
    # Pixels parsed as hair see triangles 0 and 2 (and background): their vertices.
    assert seen[0].tolist() == [True, True, True, False, True, True, True, False]


def test_scalp_shrink_pulls_towards_the_centroid_of_the_whole_scalp():
    scalp = torch.tensor([[[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]]])  # centroid at the origin
    vertices = torch.tensor([[[2.0, 0, 0], [0, 3.0, 0], [5.0, 5.0, 5.0]], [[0, 0, 1.0], [0, 0, 0], [0, 0, 0]]])
    selected = torch.tensor([[True, True, False], [False, False, False]])
    # Image 0: mean distance (2 + 3) / 2 to the whole scalp's centroid, not to the selected
    # vertices' own; image 1 selects nothing and adds 0; mean over the two images.
    assert float(losses.scalp_shrink(vertices, scalp.expand(2, -1, -1), selected)) == pytest.approx(2.5 / 2)


# ----------------------------------------------------------------------------- depth and normals
def test_seams_of_the_head_region_are_dropped():
    triangle_id = torch.tensor([[[1, 1, 2, 2], [3, 3, 2, 0], [3, 3, 4, 0]]])
    head = torch.tensor([[[[True, True, True, False], [True, True, True, True], [True, True, False, False]]]])
    # Triangle 2 (id 2) lies partly outside the head, so do 4 and the empty pixels; 1 and 3 are inside.
    kept = losses.seam_free_mask(head, triangle_id, n_faces=4)
    assert kept[0, 0].tolist() == [[True, True, False, False], [True, True, False, True], [True, True, False, False]]


def test_depth_l1_averages_over_every_pixel_in_millimetres():
    target = torch.full((1, 1, 4, 4), 1.0, dtype=torch.float64)
    pred = target.clone()
    pred[..., :2, :] += 0.002  # 2 mm off on 8 pixels
    pred[..., 3, 3] += 0.5  # beyond the 5 mm gate
    supervised = torch.ones_like(target, dtype=torch.bool)
    supervised[..., 3, 0] = False  # the target is 0 there: 1000 mm off, gated out
    loss, gate = losses.depth_l1_mm(pred, target, supervised, 5.0)
    assert float(loss) == pytest.approx(8 * 2.0 / 16)
    assert int(gate.sum()) == 14
    # Off the mesh (depth 0) and off the region: no error, counted in the mean.
    pred[..., 3, 0] = 0.0
    loss, gate = losses.depth_l1_mm(pred, target, supervised, 5.0)
    assert float(loss) == pytest.approx(8 * 2.0 / 16) and int(gate.sum()) == 15


def plane_mm(a: float, b: float, c: float, H: int = 6, W: int = 7) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    return (a * xs + b * ys + c)[None, None]


def test_depth_normals_of_a_plane_follow_its_pixel_gradients():
    normals = losses.depth_normals_mm(plane_mm(0.5, -2.0, 1000.0))
    expected = torch.tensor([-0.5, 2.0, 1.0], dtype=torch.float64) / math.sqrt(0.25 + 4 + 1)
    assert torch.allclose(normals[0], expected[:, None, None].expand(3, 6, 7), atol=1e-12)
    # A constant map (an empty background) has the authors' (1, 1, 1).
    assert torch.equal(losses.depth_normals_mm(torch.zeros(1, 1, 3, 3)), torch.ones(1, 3, 3, 3))


def test_normal_loss_is_the_mean_norm_of_the_normal_difference_inside_the_stencil():
    pred_m, target_m = plane_mm(0.5, 0.0, 1000.0) / 1000, plane_mm(0.0, 0.5, 1000.0) / 1000
    supervised = torch.ones(1, 1, 6, 7, dtype=torch.bool)
    supervised[..., 0, :] = False  # the top row: no ground truth there
    gate = torch.ones_like(supervised)
    n_pred = torch.tensor([-0.5, 0.0, 1.0], dtype=torch.float64) / math.sqrt(1.25)
    n_true = torch.tensor([0.0, -0.5, 1.0], dtype=torch.float64) / math.sqrt(1.25)
    # Kept: rows whose 4-neighbourhood lies in the supervised region (rows 2–4) and not on the
    # left or right border (columns 1–5): 3 × 5 of 42 pixels.
    expected = float((n_pred - n_true).norm()) * 15 / 42
    assert float(losses.normal_loss(pred_m, target_m, supervised, gate)) == pytest.approx(expected, rel=1e-9)
    assert float(losses.normal_loss(target_m, target_m, supervised, gate)) == 0.0


# ----------------------------------------------------------------------------- photometric
def test_photometric_terms_use_the_whole_frame_against_hair_set_white():
    image = torch.zeros(1, 3, 2, 2)
    hair = torch.tensor([[[[True, False], [False, False]]]])
    target = losses.target_without_hair(image, hair)
    assert target[0, :, 0, 0].tolist() == [1, 1, 1] and float(target[0, :, 1:, :].abs().sum()) == 0
    pred = torch.zeros(1, 3, 2, 2)
    pred[0, :, 1, 1] = torch.tensor([0.3, 0.4, 0.0])  # 0.5 off on one pixel, the hair pixel √3 off
    assert float(losses.photometric_l2(pred, target)) == pytest.approx((0.5 + math.sqrt(3)) / 4, rel=1e-5)
    frame = torch.rand(1, 3, 16, 16)
    assert float(losses.dssim(frame, frame)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.dssim(frame, 1 - frame)) > 0.5


# ----------------------------------------------------------------------------- metrics
def test_psnr_and_depth_metrics_on_known_cases():
    gt = torch.zeros(3, 4, 5)
    pred = gt.clone()
    pred[:, 0, 0] = 0.1  # squared error 0.01 on one pixel, in every channel
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:2, :2] = True
    assert psnr_masked(pred, gt, mask) == pytest.approx(10 * math.log10(4 / 0.01))
    assert psnr_frame(pred, gt, mask) == pytest.approx(10 * math.log10(20 / 0.01))
    outside = pred.clone()
    outside[:, 3, 4] = 1.0  # outside the mask: the paper's protocol zeroes it on both sides
    assert psnr_frame(outside, gt, mask) == pytest.approx(psnr_frame(pred, gt, mask))
    assert math.isnan(psnr_masked(pred, gt, torch.zeros_like(mask)))
    depth_gt = torch.full((4, 5), 1.0)
    depth_gt[0, 1] = 0.0  # unknown
    depth = depth_gt.clone()
    depth[0, 0] += 0.003
    assert depth_mae_mm(depth, depth_gt, mask) == pytest.approx(3.0 / 3, rel=1e-5)
    assert unknown_fraction(depth_gt, mask) == pytest.approx(0.25)


def test_renders_are_measured_as_8bit_images():
    image = torch.tensor([0.0, 0.5, 1.0, 0.1234, 1.2, -0.1])
    assert torch.allclose(as_8bit(image) * 255, torch.tensor([0.0, 128, 255, 31, 255, 0]))


def test_erode_drops_the_rim():
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[2:7, 2:7] = True
    inner = erode_mask(mask)
    assert int(inner.sum()) == 9 and bool(inner[3:6, 3:6].all())


def test_face_region_keeps_earrings_as_the_authors_do():
    from mega.data.parsing import LABEL, face_mask

    labels = torch.arange(19)
    inside = {int(i) for i in labels[face_mask(labels)]}
    assert inside == {1, 2, 3, 4, 5, 6, 7, 11, 12, LABEL["ear_r"]}
