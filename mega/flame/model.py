"""FLAME as a torch module: per-frame parameters → posed vertices of any FLAME-format model."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from mega.flame.head_model import HeadModel
from mega.flame.lbs import linear_blend_skinning

# Per-frame parameters in the order and sizes of GaussianAvatars' flame_param files.
POSE_PARTS = {"rotation": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6}


class FlameModel(nn.Module):
    """Linear blend skinning of a :class:`HeadModel`.

    The model's arrays are float32 buffers; at call time they follow the parameters' device and
    dtype, so a float64 call (gradcheck) runs in float64. Move the module with ``.to(device)``
    to avoid copies on every call.
    """

    def __init__(self, head: HeadModel, persistent: bool = True):
        """``persistent=False`` keeps the model's arrays out of ``state_dict()`` (a trained
        model that rebuilds them from the head model need not save 60 MB of blendshapes)."""
        super().__init__()
        self.n_shape = head.n_shape
        self.n_expr = head.n_expr
        self.parents = [int(p) for p in head.parents]
        as_buffer = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
        self.register_buffer("v_template", as_buffer(head.v_template), persistent)
        self.register_buffer("shapedirs", as_buffer(head.shapedirs), persistent)
        self.register_buffer("posedirs", as_buffer(head.posedirs), persistent)
        self.register_buffer("J_regressor", as_buffer(head.J_regressor), persistent)
        self.register_buffer("lbs_weights", as_buffer(head.lbs_weights), persistent)
        self.register_buffer("faces", torch.as_tensor(head.faces, dtype=torch.int64), persistent)

    @property
    def n_vertices(self) -> int:
        return self.v_template.shape[0]

    def forward(
        self,
        shape: Tensor | None = None,  # [B, <= n_shape] identity coefficients
        expr: Tensor | None = None,  # [B, <= n_expr] expression coefficients
        rotation: Tensor | None = None,  # [B, 3] global axis-angle, radians
        neck_pose: Tensor | None = None,  # [B, 3]
        jaw_pose: Tensor | None = None,  # [B, 3]
        eyes_pose: Tensor | None = None,  # [B, 6] both eyes
        translation: Tensor | None = None,  # [B, 3] metres, added after skinning
        return_joints: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Posed vertices [B, V, 3] in metres (and posed joints [B, J, 3] if asked).

        Missing parameters are zero. Shorter shape or expression vectors use the leading
        components.
        """
        given = [t for t in (shape, expr, rotation, neck_pose, jaw_pose, eyes_pose, translation) if t is not None]
        if not given:
            raise ValueError("FlameModel needs at least one parameter tensor to know the batch size")
        ref = given[0]
        B, dtype, device = ref.shape[0], ref.dtype, ref.device
        zeros = lambda n: torch.zeros(B, n, dtype=dtype, device=device)  # noqa: E731

        coefficients = torch.cat([
            self._pad(shape, self.n_shape, "shape", zeros),
            self._pad(expr, self.n_expr, "expr", zeros),
        ], dim=1)
        parts = {"rotation": rotation, "neck_pose": neck_pose, "jaw_pose": jaw_pose, "eyes_pose": eyes_pose}
        pose = torch.cat([
            zeros(n) if parts[name] is None else self._check(parts[name], n, name, B)
            for name, n in POSE_PARTS.items()
        ], dim=1)

        buf = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        verts, joints = linear_blend_skinning(
            coefficients, pose, buf(self.v_template), buf(self.shapedirs), buf(self.posedirs),
            buf(self.J_regressor), self.parents, buf(self.lbs_weights))
        if translation is not None:
            translation = self._check(translation, 3, "translation", B)
            verts = verts + translation[:, None]
            joints = joints + translation[:, None]
        return (verts, joints) if return_joints else verts

    @staticmethod
    def _check(t: Tensor, n: int, name: str, batch: int) -> Tensor:
        if t.ndim != 2 or t.shape[0] != batch or t.shape[1] != n:
            raise ValueError(f"FLAME parameter '{name}' has shape {tuple(t.shape)}, expected ({batch}, {n})")
        return t

    def _pad(self, t: Tensor | None, n: int, name: str, zeros) -> Tensor:
        if t is None:
            return zeros(n)
        if t.ndim != 2 or t.shape[1] > n:
            raise ValueError(f"FLAME parameter '{name}' has shape {tuple(t.shape)}, expected (B, <= {n})")
        if t.shape[1] == n:
            return t
        return torch.cat([t, zeros(n - t.shape[1])], dim=1)
