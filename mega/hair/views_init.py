"""What the canonical frame's views say about where the hair is and what colour it has, for
initialising the canonical Gaussians (docs/hair.md, "Initialisation from the views").

The authors start the hair within 2 cm of the scalp with random colours, and rely on 3000 GS
epochs of densification to grow it out and recolour it. Long hair hangs 10–20 cm below the scalp,
so a short schedule leaves its ends empty or speckled with the random colours. Two optional
departures use the one-frame split's own images instead:

* **colours from the views** (3DGS's practice: its points come with the colours of the images
  they were reconstructed from): each initial point takes the mean colour of the hair pixels it
  projects to in the views that see it, the mean hair colour where none does;
* **points in the hair's visual hull**: points drawn in a box around the head and kept where
  every view that sees them agrees they are hair. A view sees a point when it projects inside
  the image; it agrees when the pixel is hair, or when the point lies behind the stage-1 mesh
  there (the face hides it, as it hides the back hair from the front cameras). A kept point must
  also be seen, unhidden, on hair by at least one view, which keeps the inside of the head out.
  With few views the hull has ghosts: regions off the head that every view's hair silhouette
  covers by chance. Hair grows from the scalp, so :func:`connected_to_scalp` keeps only the hull
  points joined to the scalp's points through the hull.

:class:`CanonicalViews` holds what both need: cameras [V], images [V, 3, H, W] in [0, 1], hair
masks [V, H, W] bool and the mesh's camera depth [V, H, W] metres (``inf`` off the mesh).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mega.data.camera import Camera

NEAR_PLANE_M = 0.01
BEHIND_MESH_TOLERANCE_M = 0.005
"""A point this far behind the mesh still counts as on its surface (the paper's 5 mm depth gate)."""
LINK_SPACINGS = 4.0
"""Hull points closer than this many times the hull's median nearest-neighbour spacing are joined
(uniform samples of a solid leave gaps of up to about three spacings; a ghost lies farther)."""


def connected_to_scalp(scalp: Tensor, hull: Tensor, link_spacings: float = LINK_SPACINGS) -> Tensor:
    """[M] bool: which ``hull`` points [M, 3] are joined to the ``scalp`` points [S, 3] (metres)
    through the hull: connected components (scipy's) of the graph linking hull points within
    ``link_spacings`` × the hull's median nearest-neighbour spacing, kept where one of their points
    lies that close to a scalp point. The scalp's own points only anchor (they are not linked to
    each other), so the graph stays the hull's size however densely the scalp is sampled."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    M = hull.shape[0]
    if M == 0 or scalp.shape[0] == 0:
        return torch.zeros(M, dtype=torch.bool, device=hull.device)
    hull_np = hull.detach().cpu().double().numpy()
    scalp_tree = cKDTree(scalp.detach().cpu().double().numpy())
    hull_tree = cKDTree(hull_np)
    if M > 1:
        spacing = float(np.median(hull_tree.query(hull_np, k=2)[0][:, 1]))
    else:  # one point: joined where it lies within the link of the scalp as its own spacing
        spacing = float(scalp_tree.query(hull_np, k=1)[0][0])
    radius = link_spacings * spacing
    pairs = hull_tree.query_pairs(radius, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(M, M))
    _, component = connected_components(graph, directed=False)
    to_scalp, _ = scalp_tree.query(hull_np, k=1, distance_upper_bound=radius)
    anchored = np.unique(component[np.isfinite(to_scalp)])
    return torch.from_numpy(np.isin(component, anchored)).to(hull.device)


@dataclass
class CanonicalViews:
    cameras: Camera
    images: Tensor
    hair: Tensor
    mesh_depth: Tensor

    def __post_init__(self) -> None:
        V, H, W = self.hair.shape
        if self.images.shape != (V, 3, H, W) or self.mesh_depth.shape != (V, H, W):
            raise ValueError(f"canonical views: images {tuple(self.images.shape)}, hair {tuple(self.hair.shape)} and "
                             f"mesh depth {tuple(self.mesh_depth.shape)} must be [V, 3, H, W], [V, H, W], [V, H, W]")
        if (self.cameras.width, self.cameras.height) != (W, H):
            raise ValueError(f"canonical views: cameras of {self.cameras.width} × {self.cameras.height} pixels for "
                             f"images of {W} × {H}")

    def classify(self, points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For points [N, 3] metres, per view: (pixel [V, N] flat index, clamped; on_hair [V, N]:
        seen, not hidden by the mesh, on a hair pixel; agrees [V, N]: not seen, or hidden by the
        mesh, or on hair)."""
        V, H, W = self.hair.shape
        cameras = self.cameras.to(device=points.device, dtype=points.dtype)
        pixels, z = cameras.project(points.expand(V, -1, -1))
        x, y = pixels.unbind(-1)
        seen = (z > NEAR_PLANE_M) & (x >= 0) & (x < W) & (y >= 0) & (y < H)
        column = x.floor().clamp(0, W - 1).long()
        row = y.floor().clamp(0, H - 1).long()
        pixel = row * W + column
        hair = torch.gather(self.hair.reshape(V, -1).to(points.device), 1, pixel)
        surface = torch.gather(self.mesh_depth.reshape(V, -1).to(points.device, points.dtype), 1, pixel)
        hidden = seen & (z > surface + BEHIND_MESH_TOLERANCE_M)
        on_hair = seen & ~hidden & hair
        agrees = ~seen | hidden | hair
        return pixel, on_hair, agrees

    def colours(self, points: Tensor, chunk: int = 65_536) -> tuple[Tensor, Tensor]:
        """(colours [N, 3]: mean image colour over the views that see each point on hair, the mean
        hair colour of all views where none does; seen [N] bool: some view saw it on hair)."""
        V = self.hair.shape[0]
        images = self.images.reshape(V, 3, -1).to(points.device, points.dtype)
        hair_pixels = images.permute(1, 0, 2)[:, self.hair.reshape(V, -1).to(points.device)]
        fallback = hair_pixels.mean(1) if hair_pixels.shape[1] else points.new_full((3,), 0.5)
        out, seen = [], []
        for start in range(0, points.shape[0], chunk):
            pixel, on_hair, _ = self.classify(points[start:start + chunk])
            picked = torch.gather(images, 2, pixel[:, None].expand(-1, 3, -1))  # [V, 3, n]
            weight = on_hair[:, None].to(points.dtype)
            count = weight.sum(0)  # [1, n]
            mean = (picked * weight).sum(0) / count.clamp_min(1)
            out.append(torch.where(count > 0, mean, fallback[:, None]).T)
            seen.append(count[0] > 0)
        return torch.cat(out), torch.cat(seen)

    def hull_points(self, n: int, low: Tensor, high: Tensor, generator: torch.Generator,
                    candidates_per_round: int = 200_000, max_rounds: int = 50) -> Tensor:
        """n points [n, 3] drawn uniformly in the box [low, high] (metres) and kept where every view
        agrees they are hair and at least one sees them on hair. Fewer than n if the hull is
        too small to fill within ``max_rounds`` rounds of candidates (an empty hull gives none)."""
        kept, total = [], 0
        for _ in range(max_rounds):
            if total >= n:
                break
            u = torch.rand(candidates_per_round, 3, generator=generator, dtype=low.dtype)
            candidates = low.cpu() + u * (high - low).cpu()
            candidates = candidates.to(low.device)
            _, on_hair, agrees = self.classify(candidates)
            inside = agrees.all(0) & on_hair.any(0)
            kept.append(candidates[inside])
            total += int(inside.sum())
        points = torch.cat(kept) if kept else low.new_zeros(0, 3)
        return points[:n]
