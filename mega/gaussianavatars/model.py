"""The Gaussians of a GaussianAvatars head: local parameters bound to mesh triangles.

Parameters are raw, under gsplat's names as the hair's are (``means`` [N, 3] local, in units of
the bound triangle's size; ``quats`` [N, 4] (w, x, y, z) local; ``scales`` [N, 3] log of local
scales; ``opacities`` [N] logits; ``sh0`` [N, 1, 3], ``shN`` [N, K − 1, 3]); ``binding`` [N] is
the triangle each Gaussian belongs to. :meth:`BoundGaussians.world` poses them on meshes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mega.gaussianavatars.binding import bound_to_world, triangle_frames
from mega.hair.model import GaussianParameters, ResizableState
from mega.render.sh import num_sh_coefficients


class BoundGaussians(ResizableState):
    """Gaussians bound to the triangles of a mesh of ``n_faces`` faces (a checkpoint of any
    number of Gaussians loads into a freshly built one)."""

    def __init__(self, n: int, n_faces: int, sh_degree: int = 3):
        super().__init__()
        self.sh_degree = sh_degree
        self.n_faces = n_faces
        k = num_sh_coefficients(sh_degree)
        self.params = GaussianParameters({
            "means": nn.Parameter(torch.zeros(n, 3)),
            "quats": nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1)),
            "scales": nn.Parameter(torch.zeros(n, 3)),
            "opacities": nn.Parameter(torch.zeros(n)),
            "sh0": nn.Parameter(torch.zeros(n, 1, 3)),
            "shN": nn.Parameter(torch.zeros(n, k - 1, 3)),
        })
        self.register_buffer("binding", torch.zeros(n, dtype=torch.long))
        self.register_buffer("active_degree", torch.zeros((), dtype=torch.long))

    @property
    def n(self) -> int:
        return self.params["means"].shape[0]

    @classmethod
    def one_per_triangle(cls, n_faces: int, sh_degree: int = 3, opacity: float = 0.1,
                         generator: torch.Generator | None = None) -> "BoundGaussians":
        """The authors' start (``create_from_pcd`` without points): one Gaussian at each triangle's
        centroid, local scale 1 (the triangle's size), the triangle's orientation, ``opacity``,
        and degree-0 coefficients uniform in [0, 1/255) (a grey of about 0.5, their random colour
        taken as a coefficient)."""
        gaussians = cls(n_faces, n_faces, sh_degree)
        with torch.no_grad():
            gaussians.params["opacities"].fill_(math.log(opacity / (1 - opacity)))
            gaussians.params["sh0"].copy_(torch.rand(n_faces, 1, 3, generator=generator) / 255.0)
            gaussians.binding.copy_(torch.arange(n_faces))
        return gaussians

    def per_triangle_count(self) -> Tensor:
        """How many Gaussians each triangle holds [n_faces] (the authors' ``binding_counter``)."""
        return torch.bincount(self.binding, minlength=self.n_faces)

    def world(self, vertices: Tensor, faces: Tensor) -> dict[str, Tensor]:
        """The Gaussians posed on B meshes: vertices [B, V, 3] metres, faces [F, 3].

        Returns means [B, N, 3] metres, quats [B, N, 4] unit, scales [B, N, 3] metres, opacities
        [B, N], sh [B, N, K, 3], and ``size`` [B, N] metres (each Gaussian's triangle size k).
        """
        if faces.shape[0] != self.n_faces:
            raise ValueError(f"the Gaussians are bound to a mesh of {self.n_faces} faces, got one of {faces.shape[0]}")
        centroid, orientation, size = triangle_frames(vertices, faces)
        p, binding = self.params, self.binding
        means, quats, scales = bound_to_world(p["means"], p["quats"], p["scales"], binding, centroid, orientation, size)
        B = vertices.shape[0]
        return {"means": means, "quats": quats, "scales": scales,
                "opacities": torch.sigmoid(p["opacities"])[None].expand(B, -1),
                "sh": torch.cat([p["sh0"], p["shN"]], 1)[None].expand(B, -1, -1, -1),
                "size": size[:, binding]}

    def raise_degree(self, step: int, every: int) -> None:
        """The active degree at ``step``: one more every ``every`` steps, up to ``sh_degree``."""
        self.active_degree.fill_(min(step // every, self.sh_degree))
