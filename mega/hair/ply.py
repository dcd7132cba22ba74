"""The 3D Gaussian Splatting PLY: the file every 3DGS viewer reads (graphdeco-inria's ``save_ply``).

One ``vertex`` element, binary little-endian, float32 properties in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_{3(K-1)-1}  opacity
    scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3

Values are the raw (pre-activation) parameters: metres for x y z, log scales, opacity logits,
quaternions (w, x, y, z) of any norm, and spherical-harmonic coefficients with K = (d + 1)²
per colour channel. Normals are zero. ``f_rest`` holds the non-DC coefficients channel by
channel: every red coefficient, then every green, then every blue.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement
from torch import Tensor

from mega.atomic import atomic_path
from mega.errors import DataError

FIXED_BEFORE = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
FIXED_AFTER = ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
REQUIRED = tuple(name for name in FIXED_BEFORE + FIXED_AFTER if name not in ("nx", "ny", "nz"))
"""Properties a reader needs; normals carry nothing (some exporters, gsplat's, leave them out)."""


def property_names(n_coefficients: int) -> list[str]:
    """The 3DGS property order for K = ``n_coefficients`` SH coefficients per channel."""
    rest = [f"f_rest_{i}" for i in range(3 * (n_coefficients - 1))]
    return [*FIXED_BEFORE, *rest, *FIXED_AFTER]


def _as_float32(name: str, value, shape: tuple) -> np.ndarray:
    """A CPU float32 array of the expected shape (None: any size on that axis)."""
    array = torch.as_tensor(value).detach().to("cpu", torch.float32).numpy()
    if array.ndim != len(shape) or any(s is not None and a != s for a, s in zip(array.shape, shape)):
        expected = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"write_gaussian_ply: '{name}' has shape {tuple(array.shape)}, expected {expected}")
    return array


def _sh_degree(n_coefficients: int) -> int:
    degree = math.isqrt(n_coefficients) - 1
    if n_coefficients < 1 or (degree + 1) ** 2 != n_coefficients:
        raise ValueError(f"{n_coefficients} SH coefficients per channel is not (d + 1)² for any degree d")
    return degree


def write_gaussian_ply(path: str | Path, means: Tensor, quats: Tensor, log_scales: Tensor,
                       opacity_logits: Tensor, sh: Tensor) -> Path:
    """Write Gaussians as a 3DGS PLY, atomically; return the path.

    means           [N, 3] metres
    quats           [N, 4] (w, x, y, z), any norm (viewers normalise)
    log_scales      [N, 3] log of the standard deviations in metres
    opacity_logits  [N] pre-sigmoid opacity
    sh              [N, K, 3] SH coefficients, K = (d + 1)², sh[:, 0] the DC term
    """
    xyz = _as_float32("means", means, (None, 3))
    n = xyz.shape[0]
    rot = _as_float32("quats", quats, (n, 4))
    scale = _as_float32("log_scales", log_scales, (n, 3))
    opacity = _as_float32("opacity_logits", opacity_logits, (n,))
    coefficients = _as_float32("sh", sh, (n, None, 3))
    k = coefficients.shape[1]
    _sh_degree(k)
    f_dc = coefficients[:, 0, :]
    # Channel-major, as 3DGS flattens features_rest.transpose(1, 2).
    f_rest = coefficients[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (k - 1))
    columns = np.concatenate([xyz, np.zeros_like(xyz), f_dc, f_rest, opacity[:, None], scale, rot], axis=1)
    # One float32 field per column: the C-contiguous [N, P] block is the structured array's memory.
    dtype = np.dtype([(name, "<f4") for name in property_names(k)])
    records = np.ascontiguousarray(columns, dtype="<f4").view(dtype).reshape(n)
    ply = PlyData([PlyElement.describe(records, "vertex")], text=False, byte_order="<")
    path = Path(path)
    with atomic_path(path) as tmp:
        ply.write(str(tmp))
    return path


def _read_vertices(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such PLY file")
    try:
        ply = PlyData.read(str(path))
    except Exception as exc:  # noqa: BLE001 - plyfile raises several types for a file that is not a PLY
        raise DataError(f"{path}: not a readable PLY file ({type(exc).__name__}: {exc})") from exc
    if "vertex" not in ply:
        raise DataError(f"{path}: no 'vertex' element, expected a 3D Gaussian Splatting PLY")
    return ply["vertex"]


def _rest_names(path: Path, names: list[str]) -> list[str]:
    """f_rest_0 .. f_rest_{3(K-1)-1}, checked to be complete and a whole number of SH bands."""
    count = sum(name.startswith("f_rest_") for name in names)
    expected = [f"f_rest_{i}" for i in range(count)]
    missing = [name for name in expected if name not in names]
    if missing:
        raise DataError(f"{path}: vertex property '{missing[0]}' is missing (found {count} f_rest_* properties)")
    bands_ok = count % 3 == 0 and math.isqrt(count // 3 + 1) ** 2 == count // 3 + 1
    if not bands_ok:
        raise DataError(f"{path}: {count} f_rest_* properties is not 3 · ((d + 1)² − 1) for any SH degree d "
                        "(expected 0, 9, 24 or 45)")
    return expected


def read_gaussian_ply(path: str | Path) -> dict[str, Tensor]:
    """Read a 3DGS PLY into float32 CPU tensors, the arguments of :func:`write_gaussian_ply`:
    ``means [N, 3]``, ``quats [N, 4]`` (w, x, y, z), ``log_scales [N, 3]``, ``opacity_logits [N]``,
    ``sh [N, K, 3]``. Properties are found by name, so their order in the file does not matter.

    Raises :class:`~mega.errors.DataError` naming the file and the missing property.
    """
    path = Path(path)
    vertices = _read_vertices(path)
    names = [p.name for p in vertices.properties]
    for name in REQUIRED:
        if name not in names:
            raise DataError(f"{path}: vertex property '{name}' is missing, expected a 3D Gaussian Splatting PLY "
                            f"({' '.join(REQUIRED[:5])} ... rot_3)")
    rest = _rest_names(path, names)

    def stack(*columns: str) -> np.ndarray:
        return np.stack([np.asarray(vertices[c], dtype=np.float32) for c in columns], axis=1)

    n = len(vertices.data)
    f_dc = stack("f_dc_0", "f_dc_1", "f_dc_2")
    f_rest = stack(*rest) if rest else np.zeros((n, 0), np.float32)
    # The SH bands' count from the names: an empty file (a hairless avatar's) has no row to infer it.
    sh = np.concatenate([f_dc[:, None, :], f_rest.reshape(n, 3, len(rest) // 3).transpose(0, 2, 1)], axis=1)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return {
        "means": as_tensor(stack("x", "y", "z")),
        "quats": as_tensor(stack("rot_0", "rot_1", "rot_2", "rot_3")),
        "log_scales": as_tensor(stack("scale_0", "scale_1", "scale_2")),
        "opacity_logits": as_tensor(np.asarray(vertices["opacity"], dtype=np.float32)),
        "sh": as_tensor(sh),
    }
