"""Per-frame FLAME parameters, initialised from the tracking and refined in training."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from mega.errors import DataError

FRAME_GROUPS = ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")
LR_GROUP = {"shape": "lr_shape", "expr": "lr_expr", "rotation": "lr_pose", "neck_pose": "lr_pose",
            "jaw_pose": "lr_pose", "eyes_pose": "lr_pose", "translation": "lr_translation"}
"""Which learning rate of :class:`~mega.face.config.FaceConfig` each group trains with."""


class FrameParameters(nn.Module):
    """One shared shape [1, 300] and per-timestep expression and pose tables [T, n].

    ``forward(timestep [B])`` returns the dict :class:`~mega.flame.model.FlameModel` takes.
    """

    def __init__(self, per_timestep: dict[int, dict[str, np.ndarray]]):
        super().__init__()
        if not per_timestep:
            raise DataError("no FLAME parameters to initialise the frames from")
        n = max(per_timestep) + 1
        first = per_timestep[min(per_timestep)]
        self.shape = nn.Parameter(torch.as_tensor(np.asarray(first["shape"]), dtype=torch.float32)[None])
        self.tables = nn.ParameterDict()
        for name in FRAME_GROUPS:
            table = np.zeros((n, np.asarray(first[name]).reshape(-1).shape[0]), np.float32)
            for t, params in per_timestep.items():
                table[t] = np.asarray(params[name]).reshape(-1)
            self.tables[name] = nn.Parameter(torch.as_tensor(table))
        self.register_buffer("known", torch.zeros(n, dtype=torch.bool))
        self.known[list(per_timestep)] = True

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> "FrameParameters":
        """Rebuild saved parameters (``state_dict()`` of a trained instance)."""
        n = state["known"].shape[0]
        placeholder = {"shape": np.zeros(state["shape"].shape[1]),
                       **{k: np.zeros(state[f"tables.{k}"].shape[1]) for k in FRAME_GROUPS}}
        frames = cls({t: placeholder for t in range(n)})
        frames.load_state_dict(state)
        return frames

    def forward(self, timestep: Tensor) -> dict[str, Tensor]:
        timestep = timestep.to(self.known.device)
        if not bool(self.known[timestep].all()):
            missing = timestep[~self.known[timestep]].tolist()
            raise DataError(f"no FLAME parameters for timesteps {missing}")
        out = {name: self.tables[name][timestep] for name in FRAME_GROUPS}
        out["shape"] = self.shape.expand(len(timestep), -1)
        return out

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by group name (``shape`` and the per-frame tables)."""
        return {"shape": [self.shape], **{name: [self.tables[name]] for name in FRAME_GROUPS}}
