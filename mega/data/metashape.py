"""Depth maps from Agisoft Metashape into MeGA's per-image depth format (metres, subject world).

The export (docs/preprocess.md), one Metashape chunk per frame of a sequence:

    <export>/<sequence>/<frame>/cameras.xml          File > Export > Export Cameras (Agisoft XML)
    <export>/<sequence>/<frame>/depth/<label>.tif    each aligned camera's depth map, 32-bit float

``<sequence>`` is the subject's sequence folder name, ``<frame>`` any name, and each camera's
``label`` the stem of its image (``00000_08``). In cameras.xml a camera's ``<transform>`` is its
camera-to-chunk matrix (OpenCV axes: x right, y down, z forward) in the chunk's internal units,
and the chunk's ``<transform>`` (rotation, translation, scale) maps internal units to
Metashape's world. A depth map holds each pixel's camera z in internal units (``depth_units:
internal``, what ``chunk.depth_maps[camera].image()`` gives) or in world units (``world``).

Per chunk, a similarity transform is fitted from Metashape's camera centres to the subject's
(the rig's calibration, transforms_*.json), so depth in metres = depth × chunk scale (internal
units only) × the fitted scale. A chunk whose cameras do not fit the subject's within
``tolerance_mm`` is an error naming its cameras.xml. Depth maps smaller than the images (a
downscaled reconstruction) are resized with nearest sampling; 0 stays "unknown".
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mega.data.camera import opengl_to_opencv_c2w
from mega.data.depth import write_depth
from mega.data.gaussian_avatars import SubjectFrames
from mega.errors import DataError
from mega.geometry import fit_similarity

MIN_CAMERAS = 3


@dataclass
class MetashapeChunk:
    """Cameras of one chunk: label → camera-to-chunk [4, 4] (internal units), and the chunk's
    internal → world similarity (scale, rotation [3, 3], translation [3])."""

    path: Path
    cameras: dict[str, np.ndarray]
    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def world_centres(self, labels: list[str]) -> np.ndarray:
        """[N, 3] the cameras' centres in Metashape's world."""
        internal = np.stack([self.cameras[label][:3, 3] for label in labels])
        return self.scale * internal @ self.rotation.T + self.translation


def _numbers(element, path: Path, what: str, count: int) -> np.ndarray:
    try:
        values = np.array([float(v) for v in (element.text or "").split()])
    except ValueError:
        raise DataError(f"{path}: {what} holds something that is not a number") from None
    if values.size != count:
        raise DataError(f"{path}: {what} has {values.size} numbers, expected {count}")
    return values


def read_cameras_xml(path: str | Path) -> MetashapeChunk:
    """The aligned cameras and the chunk transform of a Metashape cameras.xml."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (export it with File > Export > Export Cameras, Agisoft XML)")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise DataError(f"{path}: not valid XML ({error})") from None
    chunk = root.find("chunk") if root.tag != "chunk" else root
    if chunk is None:
        raise DataError(f"{path}: no <chunk> element (expected Metashape's Agisoft XML camera export)")
    cameras = {}
    for camera in chunk.iter("camera"):
        transform = camera.find("transform")
        if transform is None or camera.get("enabled", "true") == "false":
            continue  # not aligned
        label = camera.get("label")
        if not label:
            raise DataError(f"{path}: a <camera> has no label (expected the image's file stem)")
        cameras[label] = _numbers(transform, path, f"camera '{label}' <transform>", 16).reshape(4, 4)
    scale, rotation, translation = 1.0, np.eye(3), np.zeros(3)
    chunk_transform = chunk.find("transform")
    if chunk_transform is not None:
        if chunk_transform.find("rotation") is not None:
            rotation = _numbers(chunk_transform.find("rotation"), path, "chunk <rotation>", 9).reshape(3, 3)
        if chunk_transform.find("translation") is not None:
            translation = _numbers(chunk_transform.find("translation"), path, "chunk <translation>", 3)
        if chunk_transform.find("scale") is not None:
            scale = float(_numbers(chunk_transform.find("scale"), path, "chunk <scale>", 1)[0])
    return MetashapeChunk(path, cameras, scale, rotation, translation)


def read_depth_tiff(path: Path) -> np.ndarray:
    """[H, W] float32 depth from a single-channel float TIFF."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("F", "I;16", "I"):
                raise DataError(f"{path}: depth maps must be one-channel float images (32-bit TIFF), got mode "
                                f"{image.mode}")
            return np.asarray(image, dtype=np.float32)
    except FileNotFoundError:
        raise DataError(f"{path}: depth map not found") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read the depth map ({error})") from None


def resize_nearest(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    if depth.shape == (height, width):
        return depth
    rows = np.minimum((np.arange(height) + 0.5) * depth.shape[0] / height, depth.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * depth.shape[1] / width, depth.shape[1] - 1).astype(int)
    return depth[rows][:, cols]


def import_metashape_depth(union_dir: str | Path, export_dir: str | Path, out_dir: str | Path,
                           depth_units: str = "internal", tolerance_mm: float = 5.0,
                           progress: bool = True) -> dict:
    """Write ``<out>/<sequence>/<stem>.npz`` for every image with a depth map in the export.
    Returns per-chunk fit residuals and counts."""
    if depth_units not in ("internal", "world"):
        raise DataError(f"depth_units must be internal or world, got {depth_units!r}")
    union_dir, export_dir, out_dir = Path(union_dir), Path(export_dir), Path(out_dir)
    if not export_dir.is_dir():
        raise DataError(f"{export_dir}: the Metashape export folder is missing (subjects.<id>.metashape)")
    images = {}  # (sequence, stem) → (camera-to-world OpenCV [4, 4], height, width)
    for split in ("train", "val", "test"):
        frames = SubjectFrames(union_dir, split)
        for i in range(len(frames)):
            image = frames.resolve(frames.image_paths[i])
            width, height = (int(v) for v in frames.size_wh[i])
            images[(image.parent.parent.name, image.stem)] = (opengl_to_opencv_c2w(frames.c2w_opengl[i]), height, width)
    chunks = sorted(export_dir.glob("*/*/cameras.xml"))
    if not chunks:
        raise DataError(f"{export_dir}: no <sequence>/<frame>/cameras.xml inside (see docs/preprocess.md)")
    report = {"chunks": [], "images": 0}
    for xml in tqdm(chunks, desc="import depth", unit="chunk", disable=not progress):
        sequence = xml.parent.parent.name
        chunk = read_cameras_xml(xml)
        labels = [label for label in chunk.cameras if (sequence, label) in images]
        if len(labels) < MIN_CAMERAS:
            raise DataError(f"{xml}: {len(labels)} of its cameras match images of sequence '{sequence}' by label "
                            f"(labels {sorted(chunk.cameras)[:4]}...; expected image stems such as 00000_08)")
        source = chunk.world_centres(labels)
        target = np.stack([images[(sequence, label)][0][:3, 3] for label in labels])
        A, t = fit_similarity(source, target, with_scaling=True)
        residual_mm = float(np.sqrt(((source @ A.T + t - target) ** 2).sum(1).mean())) * 1000
        if residual_mm > tolerance_mm:
            raise DataError(f"{xml}: its cameras do not match the subject's: after the best similarity transform "
                            f"their centres are {residual_mm:.1f} mm RMS from the rig's (tolerance {tolerance_mm} mm); "
                            f"is it the export of sequence '{sequence}'?")
        fitted_scale = float(np.cbrt(np.linalg.det(A)))
        to_metres = fitted_scale * (chunk.scale if depth_units == "internal" else 1.0)
        written = 0
        for label in labels:
            tiff = xml.parent / "depth" / f"{label}.tif"
            if not tiff.is_file():
                continue
            _, height, width = images[(sequence, label)]
            depth = resize_nearest(read_depth_tiff(tiff), height, width) * to_metres
            depth[~np.isfinite(depth) | (depth < 0)] = 0.0
            target_path = out_dir / sequence / f"{label}.npz"
            target_path.parent.mkdir(parents=True, exist_ok=True)
            write_depth(target_path, depth)
            written += 1
        report["chunks"].append({"cameras_xml": str(xml), "cameras": len(labels), "depth_maps": written,
                                 "residual_mm": round(residual_mm, 3), "metres_per_unit": to_metres})
        report["images"] += written
    return report
