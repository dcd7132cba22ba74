"""Losses of the face stage on hand-built inputs with known answers."""

import math

import torch

from mega import losses
from mega.face.mesh import adjacent_face_pairs
from mega.flame.geometry import mesh_edges
from mega.train.face import erode


def grid_mesh(n: int = 5, bump: float = 0.0):
    """An n × n vertex grid in the z = 1 m plane, 1 cm spacing; the centre vertex raised by ``bump``."""
    ys, xs = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    vertices = torch.stack([xs * 0.01, ys * 0.01, torch.zeros_like(xs)], -1).view(-1, 3)
    vertices[(n * n) // 2, 2] += bump
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            faces += [[a, b, c], [b, d, c]]
    return vertices[None], torch.tensor(faces)


def test_depth_l1_is_in_millimetres_and_gated():
    target = torch.full((1, 1, 4, 4), 1.0, dtype=torch.float64)
    pred = target.clone()
    pred[..., :2, :] += 0.002  # 2 mm off on half the pixels
    pred[..., 3, 3] += 0.5  # one outlier, beyond the 5 mm gate
    mask = torch.ones_like(target, dtype=torch.bool)
    # 8 pixels at 2 mm, 7 at 0, the outlier left out.
    assert math.isclose(float(losses.depth_l1_mm(pred, target, mask, 5.0)), 16 / 15, rel_tol=1e-9)
    target[..., 0, 0] = 0  # unknown depth is left out too
    assert math.isclose(float(losses.depth_l1_mm(pred, target, mask, 5.0)), 14 / 14, rel_tol=1e-9)


def test_depth_normals_of_a_slanted_plane():
    H, W, f = 12, 10, 50.0
    K = torch.tensor([[[f, 0, 4.7], [0, f, 6.2], [0, 0, 1]]], dtype=torch.float64)
    n_true = torch.nn.functional.normalize(torch.tensor([0.3, -0.2, -1.0], dtype=torch.float64), dim=0)
    # Plane n·X = d through (0, 0, 1): depth z at pixel (x, y) from the ray (x', y', 1) z.
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    ray = torch.stack([(xs + 0.5 - 4.7) / f, (ys + 0.5 - 6.2) / f, torch.ones_like(xs)], 0)
    d = float(n_true[2])
    z = d / (n_true[:, None, None] * ray).sum(0)
    normals, valid = losses.depth_normals(z[None, None], K)
    assert valid[0, 0, :-1, :-1].all() and not valid[0, 0, -1].any()
    got = normals[0][:, valid[0, 0]]
    # Facing the camera (negative z), either orientation convention up to sign.
    assert torch.allclose(got * torch.sign(got[2:3]) * torch.sign(n_true[2]), n_true[:, None].expand_as(got), atol=1e-9)


def test_mesh_regularisers_vanish_on_a_flat_grid_and_grow_with_a_bump():
    flat, faces = grid_mesh()
    bumped, _ = grid_mesh(bump=0.005)
    pairs = torch.as_tensor(adjacent_face_pairs(faces.numpy()))
    edges = torch.as_tensor(mesh_edges(faces.numpy())[0])
    assert float(losses.normal_consistency(flat, faces, pairs)) < 1e-12
    assert float(losses.normal_consistency(bumped, faces, pairs)) > 1e-3
    assert float(losses.edge_length(flat, flat, edges)) == 0.0
    assert float(losses.edge_length(bumped, flat, edges)) > 0.0
    # Interior vertices of a flat grid sit at their neighbours' weighted mean; the border does not,
    # so compare a bump against the flat grid.
    assert float(losses.laplacian_smoothing(bumped, faces)) > float(losses.laplacian_smoothing(flat, faces))
    # The raised vertex is pulled back down by the Laplacian's gradient.
    bumped.requires_grad_(True)
    losses.laplacian_smoothing(bumped, faces).backward()
    assert float(bumped.grad[0, 12, 2]) > 0


def test_scalp_shrink_is_the_mean_distance_to_the_reference_centroid():
    reference = torch.tensor([[[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, 0, 5.0]]])
    selected = torch.tensor([[True, True, True, False]])
    centroid = reference[0, :3].mean(0)
    expected = (reference[0, :3] - centroid).norm(dim=1).mean()
    assert torch.isclose(losses.scalp_shrink(reference, reference, selected), expected)
    assert float(losses.scalp_shrink(reference, reference, torch.zeros_like(selected))) == 0.0


def test_erode_drops_the_rim():
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[2:7, 2:7] = True
    inner = erode(mask)
    assert int(inner.sum()) == 9 and bool(inner[3:6, 3:6].all())
