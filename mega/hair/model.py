"""The canonical Gaussian hair (paper §3.2): its parameters, their activations, and its
initialisation around the scalp of the canonical mesh.

Parameters are stored raw, under the names gsplat's densification edits (``means`` [N, 3]
metres, ``quats`` [N, 4] (w, x, y, z) of any norm, ``scales`` [N, 3] log metres,
``opacities`` [N] logits, ``sh0`` [N, 1, 3] and ``shN`` [N, K − 1, 3] spherical-harmonics
coefficients, K = (degree + 1)²); :meth:`GaussianHair.activated` is the one place that turns them
into what the renderer takes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mega.render.sh import num_sh_coefficients, rgb_to_sh_dc

PARAMETER_NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN")


class ResizableState(nn.Module):
    """A module whose parameters and buffers change length during training (densification):
    loading a state dict first gives every tensor the saved shape, so a checkpoint taken at any
    size loads into a freshly built module."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name, param in list(self._parameters.items()):
            saved = state_dict.get(prefix + name)
            if param is not None and saved is not None and saved.shape != param.shape:
                self._parameters[name] = nn.Parameter(param.new_empty(saved.shape), requires_grad=param.requires_grad)
        for name, buffer in list(self._buffers.items()):
            saved = state_dict.get(prefix + name)
            if buffer is not None and saved is not None and saved.shape != buffer.shape:
                self._buffers[name] = buffer.new_empty(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class GaussianParameters(ResizableState, nn.ParameterDict):
    """The per-Gaussian parameters by name (an ``nn.ParameterDict`` that loads any size)."""


class GaussianHair(nn.Module):
    """Canonical 3D Gaussians. ``active_degree`` (a buffer) is the spherical-harmonics degree in
    use; training raises it to ``sh_degree`` step by step, as 3DGS does."""

    def __init__(self, n: int, sh_degree: int = 3):
        super().__init__()
        self.sh_degree = sh_degree
        k = num_sh_coefficients(sh_degree)
        self.params = GaussianParameters({
            "means": nn.Parameter(torch.zeros(n, 3)),
            "quats": nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1)),
            "scales": nn.Parameter(torch.full((n, 3), math.log(1e-3))),
            "opacities": nn.Parameter(torch.zeros(n)),
            "sh0": nn.Parameter(torch.zeros(n, 1, 3)),
            "shN": nn.Parameter(torch.zeros(n, k - 1, 3)),
        })
        self.register_buffer("active_degree", torch.zeros((), dtype=torch.long))

    @property
    def n(self) -> int:
        return self.params["means"].shape[0]

    @classmethod
    def from_points(cls, points: Tensor, colors: Tensor, opacity: float, sh_degree: int) -> "GaussianHair":
        """Gaussians at ``points`` [N, 3] with RGB ``colors`` [N, 3], isotropic scales from the mean
        squared distance to the 3 nearest neighbours (3DGS), identity rotations, ``opacity``."""
        hair = cls(points.shape[0], sh_degree).to(points.device)
        with torch.no_grad():
            hair.params["means"].copy_(points)
            spacing = nearest_neighbour_spacing(points, k=3)
            hair.params["scales"].copy_(torch.log(spacing)[:, None].expand(-1, 3))
            hair.params["opacities"].fill_(math.log(opacity / (1 - opacity)))
            hair.params["sh0"].copy_(rgb_to_sh_dc(colors)[:, None])
        return hair

    def activated(self) -> dict[str, Tensor]:
        """means [N, 3], quats [N, 4] unit, scales [N, 3] metres, opacities [N] in (0, 1),
        sh [N, K, 3]."""
        p = self.params
        return {"means": p["means"], "quats": F.normalize(p["quats"], dim=-1), "scales": torch.exp(p["scales"]),
                "opacities": torch.sigmoid(p["opacities"]), "sh": torch.cat([p["sh0"], p["shN"]], 1)}

    def raise_degree(self, step: int, every: int) -> None:
        """The active degree at ``step``: one more every ``every`` steps, up to ``sh_degree``."""
        self.active_degree.fill_(min(step // every, self.sh_degree))


def nearest_neighbour_spacing(points: Tensor, k: int = 3, pair_budget: int = 1 << 26) -> Tensor:
    """sqrt of the mean squared distance [N] to the ``k`` nearest other points (3DGS's initial
    scale), in chunks of at most ``pair_budget`` point pairs (256 MB of float32) so that 150k
    points fit in memory; floored at 1e-7 m."""
    chunk = max(1, pair_budget // max(points.shape[0], 1))
    out = []
    for start in range(0, points.shape[0], chunk):
        d2 = torch.cdist(points[start:start + chunk], points).square_()
        d2[torch.arange(d2.shape[0]), torch.arange(start, start + d2.shape[0])] = math.inf
        nearest = torch.topk(d2, min(k, points.shape[0] - 1), dim=1, largest=False).values
        out.append(nearest.mean(1))
    return torch.sqrt(torch.cat(out).clamp_min(1e-14))


def sample_scalp_points(vertices: Tensor, faces: Tensor, scalp_faces: Tensor, n_on: int, n_off: int,
                        offset_m: float, generator: torch.Generator | None = None) -> Tensor:
    """Initial hair points [n_on + n_off, 3] around the scalp of one mesh (paper §3.2).

    vertices [V, 3] metres, faces [F, 3], scalp_faces [F] bool (the scalp's triangles,
    ``HeadModel.scalp_triangles``). Those triangles are sampled uniformly by area; the
    off-surface points add ``normal · u · offset_m`` with u uniform in [0, 1) drawn per axis, as
    the authors do (so not exactly along the normal).
    """
    triangles = faces[scalp_faces]
    if triangles.shape[0] == 0:
        raise ValueError("the mesh has no triangle with all three corners on the scalp")
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    cross = torch.linalg.cross(b - a, c - a)
    area = cross.norm(dim=-1)
    face_normals = cross / area[:, None].clamp_min(1e-20)
    device, dtype = vertices.device, vertices.dtype

    def on_surface(n: int) -> tuple[Tensor, Tensor]:
        pick = torch.multinomial(area, n, replacement=True, generator=generator) if n else area.new_zeros(0).long()
        r1, r2 = torch.rand(2, n, 1, generator=generator, dtype=dtype).to(device).unbind(0)
        s = torch.sqrt(r1)  # uniform over the triangle
        point = (1 - s) * a[pick] + s * (1 - r2) * b[pick] + s * r2 * c[pick]
        return point, face_normals[pick]

    on, _ = on_surface(n_on)
    base, normal = on_surface(n_off)
    push = torch.rand(n_off, 3, generator=generator, dtype=dtype).to(device) * offset_m
    return torch.cat([on, base + normal * push])
