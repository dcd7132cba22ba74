"""Per-frame FLAME parameters as GaussianAvatars writes them (``flame_param/<ts>.npz``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mega.atomic import atomic_path
from mega.errors import DataError, shape_mismatch

# Key → number of values, in the files' own order. Files store (1, n) except 'shape' (n,).
FLAME_PARAM_SIZES = {
    "translation": 3, "rotation": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6, "shape": 300, "expr": 100,
}


def read_flame_params(path: str | Path) -> dict[str, np.ndarray]:
    """Read one frame's parameters as flat float32 arrays (key → [n]).

    Only the keys in :data:`FLAME_PARAM_SIZES` are read; ``static_offset`` and
    ``dynamic_offset`` (large, and not used by MeGA) are left on disk.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: FLAME parameter file not found")
    try:
        npz = np.load(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from e
    out = {}
    with npz:
        for key, n in FLAME_PARAM_SIZES.items():
            if key not in npz.files:
                raise DataError(f"{path}: key '{key}' is missing (expected keys: {', '.join(FLAME_PARAM_SIZES)})")
            try:
                value = npz[key]
            except Exception as e:
                raise DataError(f"{path}: key '{key}' cannot be read ({type(e).__name__}: {e})") from e
            if value.shape not in ((n,), (1, n)):
                raise DataError(shape_mismatch(path, key, value.shape, f"(1, {n}) or ({n},)"))
            out[key] = value.reshape(n).astype(np.float32)
    return out


def write_flame_params(path: str | Path, params: dict[str, np.ndarray], n_static_offset_vertices: int) -> None:
    """Write one frame's parameters with every key and shape of GaussianAvatars' files."""
    arrays = {}
    for key, n in FLAME_PARAM_SIZES.items():
        value = np.asarray(params.get(key, np.zeros(n)), dtype=np.float32).reshape(n)
        arrays[key] = value if key == "shape" else value[None]
    arrays["static_offset"] = np.zeros((1, n_static_offset_vertices, 3), dtype=np.float32)
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)
