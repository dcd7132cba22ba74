"""What the interactive viewer renders, without the server: a trained avatar posed by a tracked
frame with the viewer's expression, jaw, neck and eye offsets, seen from any camera, as one of
its layers (the blend, the face, the hair, the occlusion mask, depth, normals), with the
blending settings live. Everything goes through the project's own render path (the face model,
:func:`mega.avatar.Avatar.hair_of`, :func:`mega.hair.render.render_hair`,
:func:`mega.blend.blend_renders`), as evaluation renders.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps

from mega.avatar import Avatar, RigidTable
from mega.blend import blend_renders
from mega.data.camera import Camera
from mega.data.gaussian_avatars import SubjectDataset
from mega.errors import DataError
from mega.eval.face import driving_parameters
from mega.face.frames import FrameParameters
from mega.flame.lbs import axis_angle_to_matrix
from mega.flame.model import POSE_PARTS
from mega.hair.deform import posed_hair
from mega.hair.render import render_hair
from mega.report.videos import to_uint8
from mega.train.joint import load_avatar

LAYERS = ("blended", "face", "hair", "hair alpha", "occlusion", "depth", "normals")
EXPRESSION_SLIDERS = 10
"""How many of the first FLAME expression components the viewer drives."""
NECK_JOINT = 1  # FLAME's joints: root (global rotation), neck, jaw, left eye, right eye


@dataclass(frozen=True)
class ViewSettings:
    """The viewer's controls. Offsets are added to the tracked frame's parameters (radians for
    the poses, FLAME's units for the expression)."""

    timestep_index: int = 0
    expression: tuple[float, ...] = (0.0,) * EXPRESSION_SLIDERS
    jaw_open_rad: float = 0.0
    neck_yaw_rad: float = 0.0
    neck_pitch_rad: float = 0.0
    eyes_yaw_rad: float = 0.0
    eyes_pitch_rad: float = 0.0
    layer: str = "blended"
    evaluation_near_z: int = 1  # 0: the 1st near-z, 1: the 2nd (the authors' evaluation)
    early_stop: bool = True
    soft_blending: bool = True

    def replace(self, **changes) -> "ViewSettings":
        return dataclasses.replace(self, **changes)


class AvatarScene:
    """A trained avatar with its per-frame FLAME parameters, rigid hair table (anything that maps
    timesteps [B] to rotations [B, 3, 3] and translations [B, 3]: a swap's too) and the subject's
    cameras (the presets), ready to render single views. ``default_near_z`` is the near-z the
    avatar is evaluated with (the 2nd; the 1st for a swapped hairstyle, as `mega swap-hair`)."""

    def __init__(self, avatar: Avatar, frames: FrameParameters, rigid, cameras: list[Camera],
                 tracked: dict[int, dict[str, torch.Tensor]], device: torch.device,
                 camera_indices: list[int] | None = None):
        if not tracked:
            raise DataError("the viewer needs at least one tracked frame")
        if not cameras:
            raise DataError("the viewer needs at least one camera of the subject")
        self.avatar, self.frames, self.rigid, self.cameras = avatar, frames, rigid, cameras
        self.camera_indices = list(range(len(cameras))) if camera_indices is None else camera_indices
        self.tracked, self.device = tracked, device
        self.timesteps = sorted(tracked)
        self.default_near_z = int(avatar.evaluation_near_z)
        self._offsets_key: tuple | None = None
        self._offsets: dict | None = None

    @classmethod
    def from_run(cls, run_dir: str | Path, head, union_dir: str | Path, rigid_path: str | Path,
                 device: torch.device, split: str = "train") -> "AvatarScene":
        """The avatar of ``run_dir`` (joint.pt, hair.pt), the tracked frames of the subject's
        ``split`` and every camera of the subject (each split's, by camera index)."""
        avatar, frames, _ = load_avatar(run_dir, head, device)
        rigid = RigidTable.from_file(rigid_path).to(device)
        tracked, cameras = subject_views(union_dir, split, frames, device)
        return cls(avatar, frames, rigid, list(cameras.values()), tracked, device, camera_indices=list(cameras))

    @classmethod
    def from_swap(cls, face_run: str | Path, face_union: str | Path, face_rigid: str | Path, hair_run: str | Path,
                  hair_union: str | Path, head, device: torch.device, split: str = "train") -> "AvatarScene":
        """Subject A (face_*) wearing B's trained hair (hair_*), aligned by their scalps as
        `mega swap-hair` aligns them, driven by A's frames and seen by A's cameras."""
        from mega.edit.hairswap import load_swap

        swap = load_swap(face_run, face_union, face_rigid, hair_run, hair_union, head, device)
        tracked, cameras = subject_views(face_union, split, swap.frames, device)
        return cls(swap.swapped, swap.frames, swap.rigid, list(cameras.values()), tracked, device,
                   camera_indices=list(cameras))

    def flame(self, settings: ViewSettings) -> dict[str, torch.Tensor]:
        """The FLAME parameters [1, …] of ``settings``: its tracked frame plus the offsets."""
        if settings.timestep_index not in self.tracked:
            raise DataError(f"timestep {settings.timestep_index} is not a tracked frame of this subject "
                            f"(have {self.timesteps[0]}…{self.timesteps[-1]})")
        flame = {k: v[None].clone() for k, v in self.tracked[settings.timestep_index].items()}
        n = min(len(settings.expression), flame["expr"].shape[1])
        flame["expr"][0, :n] += torch.as_tensor(settings.expression[:n], dtype=flame["expr"].dtype,
                                                device=self.device)
        flame["jaw_pose"][0, 0] += settings.jaw_open_rad
        flame["neck_pose"][0, 0] += settings.neck_pitch_rad
        flame["neck_pose"][0, 1] += settings.neck_yaw_rad
        for eye in range(flame["eyes_pose"].shape[1] // 3):  # both eyes turn together
            flame["eyes_pose"][0, 3 * eye] += settings.eyes_pitch_rad
            flame["eyes_pose"][0, 3 * eye + 1] += settings.eyes_yaw_rad
        return flame

    def hair_offsets(self, settings: ViewSettings, flame: dict[str, torch.Tensor]) -> dict | None:
        """The deformation field's offsets for the frame's expression, kept while the
        expression stays (orbiting the camera, turning the neck: the field is most of a CPU
        frame's time)."""
        if self.avatar.deformation is None:
            return None
        key = (settings.timestep_index, settings.expression)
        if self._offsets_key != key:
            self._offsets = self.avatar.deformation(self.avatar.hair.params["means"], flame["expr"])
            self._offsets_key = key
        return self._offsets

    def head_motion(self, settings: ViewSettings, flame: dict[str, torch.Tensor], rotation: torch.Tensor,
                    translation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The hair's rigid transform [1, 3, 3], [1, 3] with the viewer's neck offsets (``flame``
        = :meth:`flame` of ``settings``): the table's (eq. 5) turned as the neck turns the head,
        about the posed neck joint, so that the hair stays on the head."""
        if settings.neck_yaw_rad == 0 and settings.neck_pitch_rad == 0:
            return rotation, translation
        tracked_neck = self.tracked[settings.timestep_index]["neck_pose"][None]
        _, joints = self.avatar.face.mesh.flame(**{k: flame[k] for k in ("shape", "expr", *POSE_PARTS, "translation")},
                                                return_joints=True)
        pivot = joints[0, NECK_JOINT]
        global_rotation = axis_angle_to_matrix(flame["rotation"])[0]
        turn = (global_rotation @ axis_angle_to_matrix(flame["neck_pose"])[0]
                @ axis_angle_to_matrix(tracked_neck)[0].T @ global_rotation.T)
        return turn @ rotation, ((translation - pivot) @ turn.T) + pivot

    @torch.no_grad()
    def render(self, camera: Camera, settings: ViewSettings) -> tuple[np.ndarray, float]:
        """One view: (image [H, W, 3] uint8 of ``settings.layer``, milliseconds it took)."""
        if settings.layer not in LAYERS:
            raise ValueError(f"layer must be one of {', '.join(LAYERS)}, got {settings.layer!r}")
        started = time.perf_counter()
        avatar, config = self.avatar, self.avatar.config
        cameras = Camera.stack([camera]).to(self.device)
        flame = self.flame(settings)
        rotation, translation = self.head_motion(
            settings, flame, *self.rigid(torch.tensor([settings.timestep_index], device=self.device)))
        face = avatar.face(flame, cameras)
        gaussians = posed_hair(avatar.hair, rotation, translation, self.hair_offsets(settings, flame))
        gap_m = config.early_stop_gap_m if settings.early_stop else float("inf")
        hair = render_hair(gaussians, cameras, int(avatar.hair.active_degree), gap_m, config.near_z_alpha,
                           config.gaussian_backend, config.hair_supersample,
                           config.hair_rasterize_mode)
        kernel = config.blur_kernel if settings.soft_blending else 1
        blended = blend_renders(face, hair, config.occlusion_depth, True, kernel, config.blur_sigma,
                                settings.evaluation_near_z, config.occlusion_open_px, config.occlusion_close_px,
                                config.hair_compositing)
        image = _layer(settings.layer, face, hair, blended, camera)
        return image, (time.perf_counter() - started) * 1000


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [0, 1], C = 1 or 3 → [H, W, 3] uint8 (a mask shown grey)."""
    return to_uint8(image.expand(3, -1, -1))


def _layer(name: str, face: dict, hair: dict, blended: dict, camera: Camera) -> np.ndarray:
    if name == "blended":
        return _to_uint8(blended["rgb"][0])
    if name == "face":
        return _to_uint8(face["rgb"][0])
    if name == "hair":
        return _to_uint8(hair["rgb"][0])
    if name == "hair alpha":
        return _to_uint8(hair["alpha"][0])
    if name == "occlusion":
        return _to_uint8(blended["occlusion"][0].float())
    depth = _front_depth(face, hair)
    if name == "depth":
        return _depth_colours(depth)
    return _normal_colours(depth, camera)


def _front_depth(face: dict, hair: dict) -> torch.Tensor:
    """[H, W] metres of the nearest of the face and the hair's first near-z (inf = nothing)."""
    face_depth = torch.where(face["mask"][0, 0] > 0.5, face["depth"][0, 0], torch.full_like(face["depth"][0, 0],
                                                                                           float("inf")))
    hair_depth = hair["near_z"][0, 0]
    return torch.minimum(face_depth, torch.where(hair_depth > 0, hair_depth, torch.full_like(hair_depth, float("inf"))))


def _depth_colours(depth: torch.Tensor) -> np.ndarray:
    """Depth [H, W] as turbo colours over its own finite range, white where nothing is."""
    finite = torch.isfinite(depth)
    out = np.full(depth.shape + (3,), 255, np.uint8)
    if bool(finite.any()):
        values = depth[finite]
        near, far = float(values.min()), float(values.max())
        scaled = ((depth - near) / max(far - near, 1e-6)).clamp(0, 1).cpu().numpy()
        colours = (colormaps["turbo"](scaled)[..., :3] * 255 + 0.5).astype(np.uint8)
        out[finite.cpu().numpy()] = colours[finite.cpu().numpy()]
    return out


def _normal_colours(depth: torch.Tensor, camera: Camera) -> np.ndarray:
    """Camera-space normals from the depth map's back-projected points, as (n + 1) / 2 colours
    (x right, y down, z towards the camera flipped), white where nothing is."""
    H, W = depth.shape
    K = camera.intrinsics.to(depth)
    ys, xs = torch.meshgrid(torch.arange(H, device=depth.device, dtype=depth.dtype) + 0.5,
                            torch.arange(W, device=depth.device, dtype=depth.dtype) + 0.5, indexing="ij")
    z = torch.where(torch.isfinite(depth), depth, torch.zeros_like(depth))
    points = torch.stack([(xs - K[0, 2]) / K[0, 0] * z, (ys - K[1, 2]) / K[1, 1] * z, z], -1)
    dx = torch.zeros_like(points)
    dy = torch.zeros_like(points)
    dx[:, :-1] = points[:, 1:] - points[:, :-1]
    dy[:-1] = points[1:] - points[:-1]
    normals = torch.nn.functional.normalize(torch.cross(dy, dx, dim=-1), dim=-1)
    valid = torch.isfinite(depth)
    valid[:, :-1] &= torch.isfinite(depth[:, 1:])
    valid[:-1] &= torch.isfinite(depth[1:])
    colours = ((normals * torch.tensor([1.0, -1.0, -1.0], device=depth.device) + 1) / 2).clamp(0, 1)
    out = np.full((H, W, 3), 255, np.uint8)
    mask = valid.cpu().numpy()
    out[mask] = (colours.cpu().numpy()[mask] * 255 + 0.5).astype(np.uint8)
    return out


def subject_views(union_dir: str | Path, split: str, frames: FrameParameters, device: torch.device
                  ) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, Camera]]:
    """The tracked frames of a subject's ``split`` (timestep → FLAME parameters: the refined
    shape with the tracked expression and pose, as evaluation renders) and every camera of the
    subject (camera index → camera, each split's, in index order). Reads no image."""
    dataset = SubjectDataset(union_dir, split, parsing="off", depth="off")
    if len(dataset) == 0:
        raise DataError(f"{union_dir}: the {split} split is empty; the viewer takes its tracked frames from it")
    tracked: dict[int, dict[str, torch.Tensor]] = {}
    for i in range(len(dataset)):
        timestep = int(dataset.frames.timestep[i])
        if timestep not in tracked:
            batch = {"flame": {k: v[None].to(device) for k, v in dataset.flame(i).items()},
                     "timestep_index": torch.tensor([timestep], device=device)}
            tracked[timestep] = {k: v[0] for k, v in driving_parameters(frames, batch, refined=False).items()}
    cameras: dict[int, Camera] = {}
    for name in ("train", "val", "test"):
        if name != split and not (Path(union_dir) / f"transforms_{name}.json").is_file():
            continue
        other = dataset if name == split else SubjectDataset(union_dir, name, parsing="off", depth="off")
        for i in range(len(other)):
            cameras.setdefault(int(other.frames.camera_index[i]), other.camera(i).to(device))
    return tracked, {k: cameras[k] for k in sorted(cameras)}


def look_at_camera(position: np.ndarray, rotation_c2w: np.ndarray, fov_y_rad: float, width: int, height: int
                   ) -> Camera:
    """A pinhole camera (principal point at the centre) at ``position`` [3] metres with the
    OpenCV camera-to-world rotation ``rotation_c2w`` [3, 3] and vertical field of view."""
    focal = 0.5 * height / np.tan(0.5 * fov_y_rad)
    K = np.array([[focal, 0.0, 0.5 * width], [0.0, focal, 0.5 * height], [0.0, 0.0, 1.0]])
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = rotation_c2w, position
    return Camera(torch.as_tensor(K, dtype=torch.float32), torch.as_tensor(np.linalg.inv(c2w), dtype=torch.float32),
                  int(width), int(height))
