"""A deliberately plain Gaussian compositor for tests: one pixel at a time, one Gaussian at a
time, the rules written as the authors' kernel runs them. Slow; differentiable by autograd."""

from __future__ import annotations

import math

import torch

from mega.render.gaussians import MAX_ALPHA, MIN_ALPHA, project_gaussians


def reference_render(means, quats, scales, opacities, colors, camera, mesh_depth=None, near_z_alpha=0.05,
                     early_stop_gap_m=0.1, min_transmittance=1e-4):
    means2d, depths, cov2d, in_front = project_gaussians(means, quats, scales, camera)
    conic = torch.linalg.inv(cov2d)
    order = [int(i) for i in torch.argsort(depths.detach()) if in_front[i]]
    H, W = camera.height, camera.width
    color_rows, alpha_rows, depth_rows, near_rows = [], [], [], []
    for i in range(H):
        for j in range(W):
            T = means.new_ones(())
            color = colors.new_zeros(colors.shape[1])
            depth = means.new_zeros(())
            last_significant = None
            near = []
            for g in order:
                d = torch.stack([j + 0.5 - means2d[g, 0], i + 0.5 - means2d[g, 1]])
                alpha = torch.clamp_max(opacities[g] * torch.exp(-0.5 * d @ conic[g] @ d), MAX_ALPHA)
                if alpha < MIN_ALPHA:
                    continue
                z = depths[g]
                if min_transmittance is not None and T * (1 - alpha) < min_transmittance:
                    break
                if early_stop_gap_m is not None and last_significant is not None and z - last_significant > early_stop_gap_m:
                    break
                if mesh_depth is not None and 0 < mesh_depth[i, j] < math.inf and z > mesh_depth[i, j]:
                    break
                color = color + colors[g] * alpha * T
                depth = depth + z * alpha * T
                if alpha > near_z_alpha:
                    last_significant = z.detach()
                    near.append(float(z.detach()))
                T = T * (1 - alpha)
            color_rows.append(color)
            alpha_rows.append(1 - T)
            depth_rows.append(depth)
            near_rows.append((near + [math.inf] * 3)[:3])
    return {
        "color": torch.stack(color_rows).view(H, W, -1),
        "alpha": torch.stack(alpha_rows).view(H, W),
        "depth": torch.stack(depth_rows).view(H, W),
        "near_z": torch.tensor(near_rows, dtype=means.dtype).T.reshape(3, H, W),
    }
