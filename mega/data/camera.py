"""The one camera type of the package: pinhole intrinsics with an off-centre principal point,
an OpenCV world-to-camera transform (x right, y down, z forward) and an image size.

Pixel convention: pixel (row i, column j) covers [j, j+1) × [i, i+1) on the image plane, so its
centre is at (j + 0.5, i + 0.5), as in 3D Gaussian Splatting and nvdiffrast. A principal point
``cx = width / 2`` is therefore the image centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def opengl_to_opencv_c2w(c2w_gl: np.ndarray) -> np.ndarray:
    """OpenGL/Blender camera-to-world [..., 4, 4] (x right, y up, z back) → OpenCV (y down, z forward)."""
    c2w = np.array(c2w_gl, dtype=np.float64, copy=True)
    c2w[..., :3, 1:3] *= -1
    return c2w


def opencv_to_opengl_c2w(c2w_cv: np.ndarray) -> np.ndarray:
    """The inverse of :func:`opengl_to_opencv_c2w` (the same column flip)."""
    return opengl_to_opencv_c2w(c2w_cv)


@dataclass
class Camera:
    """A pinhole camera, possibly batched over leading dimensions.

    intrinsics       [..., 3, 3] pixels: [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
    world_to_camera  [..., 4, 4] OpenCV, metres
    width, height    image size in pixels (shared by a batch)
    """

    intrinsics: Tensor
    world_to_camera: Tensor
    width: int
    height: int

    @classmethod
    def from_opengl(cls, fl_x: float, fl_y: float, cx: float, cy: float, c2w_opengl: np.ndarray,
                    width: int, height: int, dtype=torch.float32) -> "Camera":
        """Build from the fields of a GaussianAvatars/NeRF ``transforms_*.json`` frame."""
        w2c = np.linalg.inv(opengl_to_opencv_c2w(c2w_opengl))
        K = np.array([[fl_x, 0.0, cx], [0.0, fl_y, cy], [0.0, 0.0, 1.0]])
        return cls(torch.as_tensor(K, dtype=dtype), torch.as_tensor(w2c, dtype=dtype), int(width), int(height))

    # ---- derived quantities
    @property
    def camera_to_world(self) -> Tensor:
        """[..., 4, 4] OpenCV camera-to-world."""
        return torch.linalg.inv(self.world_to_camera)

    @property
    def center(self) -> Tensor:
        """Camera centre in world coordinates [..., 3], metres."""
        R = self.world_to_camera[..., :3, :3]
        t = self.world_to_camera[..., :3, 3]
        return -(R.transpose(-1, -2) @ t[..., None])[..., 0]

    @property
    def fov_x_rad(self) -> Tensor:
        return 2 * torch.atan(self.width / (2 * self.intrinsics[..., 0, 0]))

    @property
    def fov_y_rad(self) -> Tensor:
        return 2 * torch.atan(self.height / (2 * self.intrinsics[..., 1, 1]))

    def world_to_camera_points(self, points: Tensor) -> Tensor:
        """points [..., N, 3] world → [..., N, 3] camera (OpenCV), metres."""
        R = self.world_to_camera[..., :3, :3]
        t = self.world_to_camera[..., :3, 3]
        return points @ R.transpose(-1, -2) + t[..., None, :]

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points [..., N, 3] world → (pixels [..., N, 2] as (x, y) on the image plane, depth [..., N] metres).

        Depth is the camera-space z, the distance along the optical axis.
        """
        cam = self.world_to_camera_points(points)
        z = cam[..., 2]
        K = self.intrinsics
        x = K[..., None, 0, 0] * cam[..., 0] / z + K[..., None, 0, 2]
        y = K[..., None, 1, 1] * cam[..., 1] / z + K[..., None, 1, 2]
        return torch.stack([x, y], dim=-1), z

    def resized(self, width: int, height: int) -> "Camera":
        """The same camera imaging the same field of view at another resolution (intrinsics scaled)."""
        scale = self.intrinsics.new_tensor([[width / self.width], [height / self.height], [1.0]])
        return Camera(self.intrinsics * scale, self.world_to_camera, int(width), int(height))

    def to(self, device=None, dtype=None) -> "Camera":
        return Camera(self.intrinsics.to(device=device, dtype=dtype),
                      self.world_to_camera.to(device=device, dtype=dtype), self.width, self.height)

    @staticmethod
    def stack(cameras: list["Camera"]) -> "Camera":
        """Batch cameras of one image size into [B, ...] tensors."""
        sizes = {(c.width, c.height) for c in cameras}
        if len(sizes) != 1:
            raise ValueError(f"cannot batch cameras of different image sizes {sorted(sizes)}")
        width, height = sizes.pop()
        return Camera(torch.stack([c.intrinsics for c in cameras]),
                      torch.stack([c.world_to_camera for c in cameras]), width, height)
