"""Depth maps in MeGA's layout: ``depths/<ts>_<cam>.npz``, a sparse COO array in metres saved by
the ``sparse`` package's ``save_npz`` (keys ``coords`` [2, N], ``data`` [N], ``shape`` [2],
``fill_value``). Pixels without depth hold the fill value, 0. Read here with numpy alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mega.atomic import atomic_path
from mega.errors import DataError


def read_depth(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Dense depth [H, W] float32 in metres, 0 where unknown."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: depth map not found")
    try:
        with np.load(path) as npz:
            fields = {k: npz[k] for k in npz.files}
    except Exception as e:
        raise DataError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from e
    for key in ("coords", "data", "shape"):
        if key not in fields:
            raise DataError(f"{path}: key '{key}' is missing (expected a sparse COO depth map: coords, data, shape)")
    shape = tuple(int(s) for s in fields["shape"])
    coords, data = fields["coords"], fields["data"]
    if len(shape) != 2 or coords.shape != (2, data.shape[0]):
        raise DataError(f"{path}: 'coords' has shape {coords.shape} and 'shape' is {shape}, "
                        f"expected coords (2, {data.shape[0]}) for a 2-D map")
    if expected_hw is not None and shape != tuple(expected_hw):
        raise DataError(f"{path}: depth map is {shape[0]}x{shape[1]} (h x w), expected {expected_hw[0]}x{expected_hw[1]}")
    if coords.size and (not np.issubdtype(coords.dtype, np.integer) or coords.min() < 0
                        or (coords.max(axis=1) >= np.asarray(shape)).any()):
        raise DataError(f"{path}: 'coords' must be whole row/column indices inside the {shape[0]}x{shape[1]} map "
                        f"(found rows {coords[0].min()}..{coords[0].max()}, columns {coords[1].min()}..{coords[1].max()})")
    fill = float(fields.get("fill_value", 0.0))
    depth = np.full(shape, fill, dtype=np.float32)
    depth[coords[0], coords[1]] = data
    return depth


def write_depth(path: str | Path, depth_m: np.ndarray) -> None:
    """Write a dense depth map [H, W] (metres, 0 = unknown) in the sparse COO layout."""
    depth_m = np.asarray(depth_m, dtype=np.float32)
    coords = np.stack(np.nonzero(depth_m)).astype(np.int64)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, coords=coords, data=depth_m[coords[0], coords[1]],
                            shape=np.array(depth_m.shape, dtype=np.int64), fill_value=np.array(0.0, np.float32))
