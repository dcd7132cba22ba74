"""Losses of the hair and joint stages (paper eqs. 12–15) against brute force, OpenCV and the
authors' formulas, on small masks and point sets."""

import cv2
import numpy as np
import pytest
import torch

from mega import losses
from mega.render.gaussians import quaternion_to_matrix


def brute_force_distance_sq(mask: torch.Tensor) -> torch.Tensor:
    """[H, W] bool → squared distance of every pixel to the nearest True pixel (0 if none)."""
    H, W = mask.shape
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    grid = torch.stack([ys, xs], -1).view(-1, 2)
    hair = grid[mask.view(-1)]
    if hair.shape[0] == 0:
        return torch.zeros(H, W, dtype=torch.float64)
    # Integer arithmetic: the reference itself is exact.
    return ((grid[:, None] - hair[None]) ** 2).sum(-1).amin(1).view(H, W).double()


def random_rotation(seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def random_gaussians(n: int, seed: int = 0):
    """Means [n, 3] in a 10 cm box, covariances [n, 3, 3] of 1–3 mm Gaussians, float64."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g, dtype=torch.float64) * 0.1
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = 1e-3 + 2e-3 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    return means, losses.covariances(quaternion_to_matrix(quats), scales)


# ---- distance weights

@pytest.mark.parametrize("shape", [(13, 9), (9, 13), (1, 7), (16, 16)])
def test_distance_weights_equal_brute_force(shape):
    g = torch.Generator().manual_seed(sum(shape))
    masks = torch.rand((3, 1) + shape, generator=g) < torch.tensor([0.05, 0.3, 0.0]).view(3, 1, 1, 1)
    masks[0, 0, 0, 0] = True  # at least one hair pixel in the sparse image
    weights_sq = losses.hair_distance_weights(masks, pair_budget=64)  # many small chunks
    weights = losses.hair_distance_weights(masks, squared=False)
    for b in range(3):
        expected = brute_force_distance_sq(masks[b, 0])
        torch.testing.assert_close(weights_sq[b, 0].double(), expected, rtol=0, atol=0)
        torch.testing.assert_close(weights[b, 0].double(), expected.sqrt(), rtol=0, atol=1e-5)
    assert weights_sq.shape == masks.shape and weights_sq.dtype == torch.float32


def test_distance_weights_zero_on_hair_and_growing_away():
    mask = torch.zeros(1, 1, 20, 30, dtype=torch.bool)
    mask[0, 0, 5:9, 4:7] = True
    weights = losses.hair_distance_weights(mask, squared=False)[0, 0]
    assert (weights[mask[0, 0]] == 0).all() and (weights[~mask[0, 0]] > 0).all()
    row = weights[7, 6:]  # from the hair's right edge to the image border
    assert (row[1:] > row[:-1]).all()
    assert row[5].item() == 5.0


def test_no_hair_gives_zero_weight():
    assert (losses.hair_distance_weights(torch.zeros(2, 1, 8, 6, dtype=torch.bool)) == 0).all()


def test_distance_weights_reject_a_channel_dimension():
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        losses.hair_distance_weights(torch.zeros(1, 3, 8, 8, dtype=torch.bool))


# ---- silhouette

def test_silhouette_zero_for_perfect_alpha_and_heavier_far_from_the_hair():
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    mask[0, 0, 10:20, 10:20] = True
    weights = losses.hair_distance_weights(mask)
    perfect = mask.float()
    assert losses.silhouette_loss(perfect, mask, weights).item() == 0.0
    near, far = perfect.clone(), perfect.clone()
    near[0, 0, 15, 21] = 1.0  # 2 px right of the hair
    far[0, 0, 15, 30] = 1.0  # 11 px right of the hair
    loss_near = losses.silhouette_loss(near, mask, weights)
    loss_far = losses.silhouette_loss(far, mask, weights)
    assert loss_near.item() == pytest.approx(2.0 ** 2 / 32 ** 2)  # squared pixels, mean over all pixels
    assert loss_far.item() == pytest.approx(11.0 ** 2 / 32 ** 2)


def test_silhouette_ignores_uncovered_hair_and_sends_gradient_to_alpha_only():
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    mask[:, :, 4:12, 4:12] = True
    weights = losses.hair_distance_weights(mask).requires_grad_()
    alpha = torch.zeros(2, 1, 16, 16, requires_grad=True)  # no hair rendered at all
    loss = losses.silhouette_loss(alpha, mask, weights)
    assert loss.item() == 0.0
    alpha_spilled = alpha + 0.5 * (~mask).float()
    losses.silhouette_loss(alpha_spilled, mask, weights).backward()
    assert weights.grad is None
    assert (alpha.grad[~mask] > 0).all() and (alpha.grad[mask] == 0).all()


# ---- solid hair

def test_erosion_matches_opencv_5x5():
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(1, 1, 40, 31, generator=g) < 0.8
    mask[0, 0, :, :5] = True  # hair cut by the frame edge
    expected = cv2.erode(mask[0, 0].numpy().astype(np.float32), np.ones((5, 5), np.uint8), iterations=1) > 0
    assert np.array_equal(losses.erode(mask, 5)[0, 0].numpy(), expected)


def test_solid_loss_ignores_the_border_and_costs_holes_inside():
    mask = torch.zeros(1, 1, 20, 20, dtype=torch.bool)
    mask[0, 0, 5:15, 5:15] = True
    opaque = mask.float()
    assert losses.solid_hair_loss(opaque, mask).item() == 0.0
    border_hole, interior_hole = opaque.clone(), opaque.clone()
    border_hole[0, 0, 5:15, 5:7] = 0.0  # the two outer columns of the hair: eroded away
    interior_hole[0, 0, 9, 9] = 0.0
    assert losses.solid_hair_loss(border_hole, mask).item() == 0.0
    assert losses.solid_hair_loss(interior_hole, mask).item() == pytest.approx(1 / 400)


def test_solid_loss_gradient_pushes_interior_alpha_up():
    mask = torch.ones(1, 1, 9, 9, dtype=torch.bool)
    alpha = torch.full((1, 1, 9, 9), 0.5, requires_grad=True)
    losses.solid_hair_loss(alpha, mask).backward()
    assert (alpha.grad < 0).all()  # the whole frame is hair: nothing is eroded at the image border


# ---- photometric

def test_hair_photometric_sees_only_the_hair():
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    mask[0, 0, 4:12, 4:12] = True
    target = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pred = target.clone()
    pred[:, :, ~mask[0, 0]] = torch.rand(3, 1)  # anything outside the hair
    l2, d_ssim = losses.hair_photometric(pred, target, mask)
    assert l2.item() < 1e-5 and abs(d_ssim.item()) < 1e-5
    pred[0, :, 8, 8] += torch.tensor([0.3, 0.4, 0.0])
    l2, d_ssim = losses.hair_photometric(pred, target, mask)
    assert l2.item() == pytest.approx(0.5 / 256, abs=1e-5)  # Euclidean RGB error over all pixels
    assert d_ssim.item() > 0


def test_hair_photometric_gradient_only_on_hair_pixels():
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    mask[0, 0, 4:12, 4:12] = True
    pred = torch.rand(1, 3, 16, 16, requires_grad=True)
    l2, d_ssim = losses.hair_photometric(pred, torch.rand(1, 3, 16, 16), mask)
    (l2 + d_ssim).backward()
    assert (pred.grad[:, :, ~mask[0, 0]] == 0).all()
    assert (pred.grad[:, :, mask[0, 0]] != 0).any()


# ---- offsets

def test_offset_regulariser_zero_at_zero_with_finite_gradient():
    offsets = {"quats": torch.zeros(2, 5, 4, requires_grad=True), "opacities": torch.zeros(2, 5, 1, requires_grad=True)}
    terms = losses.offset_regulariser(offsets)
    assert set(terms) == {"quats", "opacities"} and all(v.item() == 0 for v in terms.values())
    sum(terms.values()).backward()
    assert all(torch.isfinite(o.grad).all() and (o.grad == 0).all() for o in offsets.values())


def test_offset_regulariser_is_the_mean_norm():
    scales = torch.zeros(1, 2, 3)
    scales[0, 0] = torch.tensor([3.0, 4.0, 0.0])  # norm 5, the other Gaussian 0
    assert losses.offset_regulariser({"scales": scales})["scales"].item() == pytest.approx(2.5)


# ---- neighbours

def test_knn_matches_brute_force_and_excludes_self():
    points = torch.rand(200, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    nn = losses.knn_indices(points, k=7, pair_budget=1000)  # 5 rows per chunk
    assert nn.shape == (200, 7) and nn.dtype == torch.long
    assert not (nn == torch.arange(200)[:, None]).any()
    d = torch.cdist(points, points)
    d.fill_diagonal_(float("inf"))
    expected = d.sort(1).values[:, :7]
    torch.testing.assert_close(torch.gather(d, 1, nn), expected)
    assert torch.equal(nn, losses.knn_indices(points, k=7))


def test_knn_of_few_points_takes_all_the_others_and_of_none_is_empty():
    points = torch.rand(5, 3, generator=torch.Generator().manual_seed(2))
    nn = losses.knn_indices(points, k=7)
    assert nn.shape == (5, 4)
    assert all(sorted(row) == [j for j in range(5) if j != i] for i, row in enumerate(nn.tolist()))
    assert losses.knn_indices(torch.zeros(0, 3), k=7).shape == (0, 7)
    with pytest.raises(ValueError, match=r"expected \[N, 3\]"):
        losses.knn_indices(torch.rand(5, 2), k=7)


def test_the_regularisers_of_a_hair_without_gaussians_are_zero_not_nan():
    """A hairless avatar's hair has no Gaussian: its offset and AIAP terms add nothing to the
    joint loss (a mean over no element would be NaN and stop the training)."""
    means = torch.zeros(0, 3, requires_grad=True)
    cov = torch.zeros(0, 3, 3)
    offsets = {"quats": torch.zeros(2, 0, 4, requires_grad=True), "sh0": torch.zeros(2, 0, 3)}
    terms = losses.offset_regulariser(offsets)
    assert all(float(v) == 0.0 for v in terms.values())
    xyz, cov_term = losses.aiap_losses(means, means[None].expand(2, -1, -1), cov, cov[None].expand(2, -1, -1, -1),
                                       losses.knn_indices(means.detach()), torch.eye(3).expand(2, 3, 3))
    assert float(xyz) == 0.0 and float(cov_term) == 0.0
    (xyz + terms["quats"]).backward()
    assert means.grad.shape == (0, 3)


# ---- AIAP

def test_aiap_zero_for_a_rigid_motion():
    means, cov = random_gaussians(300)
    nn = losses.knn_indices(means)
    R = torch.stack([random_rotation(1), random_rotation(2)])
    t = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.05, 0.0]], dtype=torch.float64)
    moved_means = torch.einsum("bij,nj->bni", R, means) + t[:, None]
    moved_cov = R[:, None] @ cov @ R[:, None].transpose(-1, -2)
    xyz, cov_term = losses.aiap_losses(means, moved_means, cov, moved_cov, nn, rotation=R)
    assert xyz.item() < 1e-15 and cov_term.item() < 1e-18
    # Without the rotation the authors' upper-triangle distance sees the turn.
    _, unrotated = losses.aiap_losses(means, moved_means, cov, moved_cov, nn)
    assert unrotated.item() > 1e-9


def test_aiap_positive_for_a_stretch_and_matches_the_authors_formula():
    means, cov = random_gaussians(300)
    stretch = torch.diag(torch.tensor([1.5, 1.0, 1.0], dtype=torch.float64))
    deformed_means = (means @ stretch)[None]
    deformed_cov = (stretch @ cov @ stretch)[None]
    xyz, cov_term = losses.aiap_losses(means, deformed_means, cov, deformed_cov, losses.knn_indices(means))
    assert xyz.item() > 1e-3 and cov_term.item() > 1e-7
    # The authors' own computation: K = 8 neighbours counting the point itself, dropped after.
    self_first = torch.cdist(means, means).topk(8, largest=False).indices

    def authors(canonical, deformed):
        d_c = torch.cdist(canonical.unsqueeze(1), canonical[self_first])[:, 0, 1:]
        d_d = torch.cdist(deformed.unsqueeze(1), deformed[self_first])[:, 0, 1:]
        return torch.nn.functional.l1_loss(d_c, d_d)

    rows, cols = torch.triu_indices(3, 3)
    torch.testing.assert_close(xyz, authors(means, deformed_means[0]))
    torch.testing.assert_close(cov_term, authors(cov[:, rows, cols], deformed_cov[0][:, rows, cols]))


def test_aiap_gradient_reaches_the_deformed_gaussians_even_with_identical_neighbours():
    means, cov = random_gaussians(50)
    cov = cov[:1].expand(50, 3, 3).clone()  # every neighbour's covariance identical: zero distances
    nn = losses.knn_indices(means)
    deformed_means = (means * 1.1)[None].requires_grad_()
    deformed_cov = (cov * 1.2)[None].requires_grad_()
    xyz, cov_term = losses.aiap_losses(means, deformed_means, cov, deformed_cov, nn)
    (1000 * xyz + 1e5 * cov_term).backward()
    assert torch.isfinite(deformed_means.grad).all() and deformed_means.grad.abs().sum() > 0
    assert torch.isfinite(deformed_cov.grad).all()


def test_covariances_are_rotated_squared_scales():
    R = random_rotation(4)
    s = torch.tensor([1e-3, 2e-3, 3e-3], dtype=torch.float64)
    torch.testing.assert_close(losses.covariances(R[None], s[None])[0], R @ torch.diag(s ** 2) @ R.T)
