"""Videos of a trained avatar (MP4, H.264, through imageio-ffmpeg's bundled ffmpeg):

- turntable: an orbit of novel views around the head at one fixed expression (the first frame
  of the val split), swinging ± ``degrees`` about the frontal camera's vertical axis;
- novel expression: the test split (the held-out sequence) seen from one camera, in time order.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mega.atomic import atomic_path
from mega.avatar import RigidTable
from mega.data.camera import Camera
from mega.data.gaussian_avatars import SubjectDataset, collate_samples, to_device
from mega.errors import ConfigError, DataError
from mega.eval.face import driving_parameters


def axis_angle_matrix(axis: torch.Tensor, angle_rad: float) -> torch.Tensor:
    """[3, 3] rotation by ``angle_rad`` about the unit vector ``axis`` [3] (Rodrigues)."""
    x, y, z = axis.tolist()
    k = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=axis.dtype)
    return torch.eye(3, dtype=axis.dtype) + math.sin(angle_rad) * k + (1 - math.cos(angle_rad)) * (k @ k)


def orbit_cameras(reference: Camera, n_frames: int, degrees: float) -> list[Camera]:
    """``n_frames`` cameras swinging once left and right by ``degrees`` around the world origin
    (the head; the data's world is centred on it), about the reference camera's up axis."""
    c2w = reference.camera_to_world.double().cpu()
    up = -c2w[:3, 1] / c2w[:3, 1].norm()  # OpenCV: y points down in the image
    cameras = []
    for i in range(n_frames):
        angle = math.radians(degrees) * math.sin(2 * math.pi * i / n_frames)
        turn = torch.eye(4, dtype=torch.float64)
        turn[:3, :3] = axis_angle_matrix(up, angle)
        w2c = torch.linalg.inv(turn @ c2w).to(reference.world_to_camera.dtype)
        cameras.append(Camera(reference.intrinsics.cpu(), w2c, reference.width, reference.height))
    return cameras


def write_mp4(frames, path: str | Path, fps: int, size: tuple[int, int]) -> Path:
    """Encode frames ([H, W, 3] uint8 arrays; ``size`` = (W, H)) as H.264 MP4, atomically. The
    frame is padded with white to even sides, which yuv420p needs."""
    import imageio_ffmpeg

    width, height = size
    padded = (width + width % 2, height + height % 2)
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ConfigError(f"{path}: videos are written as H.264 MP4; name the file .mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(str(tmp), padded, fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                             macro_block_size=1, quality=8, ffmpeg_log_level="error")
        writer.send(None)
        for frame in frames:
            canvas = np.full((padded[1], padded[0], 3), 255, np.uint8)
            canvas[:height, :width] = frame
            writer.send(np.ascontiguousarray(canvas))
        writer.close()
        if tmp.stat().st_size == 0:  # ffmpeg wrote nothing (it says why on stderr)
            raise DataError(f"{path}: ffmpeg wrote no video")
    return path


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """image [3, H, W] in [0, 1] → [H, W, 3] uint8 (rounded), on the CPU."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def turntable_frames(avatar, frames, rigid: RigidTable, union_dir: str | Path, n_frames: int, degrees: float,
                     device: torch.device, progress: bool = True):
    """Yields the orbit's rendered frames [H, W, 3] uint8."""
    dataset = SubjectDataset(union_dir, "val", parsing="off", depth="off")
    if len(dataset) == 0:
        raise DataError(f"{union_dir}: the val split is empty; the turntable needs one of its frames")
    batch = to_device(collate_samples([dataset[0]]), device)
    flame = driving_parameters(frames, batch, refined=False)
    rotation, translation = rigid(batch["timestep_index"])
    reference = Camera(batch["camera"].intrinsics[0], batch["camera"].world_to_camera[0], batch["camera"].width,
                       batch["camera"].height)
    for camera in tqdm(orbit_cameras(reference, n_frames, degrees), desc="turntable", unit="frame",
                       disable=not progress):
        out = avatar(flame, Camera.stack([camera]).to(device), rotation, translation, evaluation=True)
        yield to_uint8(out["rgb"][0])


@torch.no_grad()
def expression_frames(avatar, frames, rigid: RigidTable, union_dir: str | Path, camera_index: int,
                      device: torch.device, progress: bool = True):
    """Yields the test split's frames from camera ``camera_index``, rendered, in time order, with
    the ground truth on the left."""
    dataset = SubjectDataset(union_dir, "test", parsing="off", depth="off")
    indices = [i for i in range(len(dataset)) if int(dataset.frames.camera_index[i]) == camera_index]
    if not indices:
        raise DataError(f"{union_dir}: the test split has no image of camera {camera_index} (videos.camera)")
    indices.sort(key=lambda i: int(dataset.frames.timestep[i]))
    for i in tqdm(indices, desc="novel expression", unit="frame", disable=not progress):
        batch = to_device(collate_samples([dataset[i]]), device)
        rotation, translation = rigid(batch["timestep_index"])
        out = avatar(driving_parameters(frames, batch, refined=False), batch["camera"], rotation, translation,
                     evaluation=True)
        yield np.concatenate([to_uint8(batch["image"][0]), to_uint8(out["rgb"][0])], axis=1)
