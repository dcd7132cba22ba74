"""Camera rigs placed like NeRSemble's: 16 cameras (9 to 64 for synthetic subjects) on an arc in
front of the head, about a metre away, in two rows, the frontal camera at index 8."""

from __future__ import annotations

import numpy as np
import torch

from mega.data.camera import Camera

# NeRSemble serials in the order VHAP exports them (index 8, 222200037, is frontal).
NERSEMBLE_SERIALS = (
    "222200042", "222200044", "222200046", "222200040", "222200036", "222200048", "220700191", "222200041",
    "222200037", "222200038", "222200047", "222200043", "222200049", "222200039", "222200045", "221501007",
)
FRONTAL_CAMERA = 8
# A synthetic rig may hold more cameras than NeRSemble's 16 (camera-count studies: how much of an
# avatar's error the views leave undetermined); the extra ones get serials of their own.
MAX_SYNTHETIC_CAMERAS = 64


def rig_serials(n_cameras: int) -> list[str]:
    """Camera ids of an ``n_cameras`` rig: NeRSemble's serials in VHAP's order, then, past its 16,
    nine-digit ids of the same form that no NeRSemble camera has (``229900016``, ...)."""
    extra = range(len(NERSEMBLE_SERIALS), n_cameras)
    return list(NERSEMBLE_SERIALS[:n_cameras]) + [f"2299{index:05d}" for index in extra]


def look_at_world_to_camera(eye: np.ndarray, target: np.ndarray, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenCV world-to-camera [4, 4] for a camera at ``eye`` looking at ``target`` (world y up)."""
    forward = np.asarray(target, float) - np.asarray(eye, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, forward], axis=1)
    c2w[:3, 3] = eye
    return np.linalg.inv(c2w)


def nersemble_like_rig(width: int, height: int, n_cameras: int = 16, distance_m: float = 1.0,
                       target=(0.0, -0.02, 0.0), focal_per_height: float = 2.0,
                       principal_offset_px: tuple[float, float] = (0.03, -0.02)) -> list[Camera]:
    """Cameras on a ±75° arc, alternating between two heights, frontal camera at index 8
    (the val camera, whenever there are 9 cameras or more; the middle one of a smaller rig). The
    principal point is off-centre by the given fractions of the image size, as in real
    calibrations."""
    frontal = FRONTAL_CAMERA if n_cameras > FRONTAL_CAMERA else n_cameras // 2
    others = n_cameras - 1
    azimuths = np.linspace(-75.0, 75.0, others) if others > 1 else np.zeros(others)
    elevations = np.where(np.arange(others) % 2 == 0, 12.0, -8.0)
    placements = [(a, e) for a, e in zip(azimuths, elevations)]
    placements.insert(frontal, (0.0, 0.0))
    fl = focal_per_height * height
    cx = width / 2 + principal_offset_px[0] * width
    cy = height / 2 + principal_offset_px[1] * height
    K = torch.tensor([[fl, 0.0, cx], [0.0, fl, cy], [0.0, 0.0, 1.0]], dtype=torch.float32)
    cameras = []
    for az_deg, el_deg in placements:
        az, el = np.deg2rad(az_deg), np.deg2rad(el_deg)
        eye = np.asarray(target) + distance_m * np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
        w2c = torch.as_tensor(look_at_world_to_camera(eye, target), dtype=torch.float32)
        cameras.append(Camera(K.clone(), w2c, width, height))
    return cameras


# The default synthetic subject's image size: the real 550×802 frames at a quarter of the
# resolution, so that the default workflow trains in minutes on two CPU cores.
DEFAULT_SYNTHETIC_WIDTH = 138
DEFAULT_SYNTHETIC_HEIGHT = 200
