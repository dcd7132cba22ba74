"""Per-frame rigid alignment of the hair (paper §3.2, eq. 5).

The canonical hair is trained on one frame, the timestep of the one-frame split
``transforms_onef.json``. Every other frame ``i`` moves it first by a rigid transform that
carries the head's scalp from the canonical frame onto frame ``i``:

    (R_i, t_i) = ICP(V_scalp(canonical), V_scalp(frame i)),   x_i = R_i x_c + t_i

The scalp vertices come from the subject's tracked FLAME parameters. The posed mesh is the
base head model, not the enhanced one the face renders: subdivision and teeth only append
vertices, and a base vertex keeps its template, blendshapes, pose correctives and skinning
weights (the joints do not move either), so the base scalp vertices are exactly the first
vertices of the enhanced scalp, posed identically, at a fraction of the cost.

Departures from the authors' code (see docs/hair.md): they fit an affine 3×4 with RANSAC
(``cv2.estimateAffine3D``) on the known correspondences and move only the Gaussians'
positions; here the transform is rigid, from point-to-point ICP started at the Kabsch solution,
and it rotates the Gaussians' orientations too.

Units are metres; rotations act on column vectors (``R @ x + t``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mega.atomic import atomic_path
from mega.data.flame_params import read_flame_params
from mega.data.gaussian_avatars import SubjectFrames
from mega.errors import AssetError, DataError, shape_mismatch
from mega.flame.head_model import HeadModel
from mega.flame.model import FlameModel
from mega.geometry import fit_similarity, matrix_to_quaternion, quaternion_multiply

log = logging.getLogger(__name__)


SPLITS = ("train", "val", "test")
CANONICAL_SPLIT = "onef"
POSE_CHUNK = 64
"""Timesteps posed at once: [64, V, 4, 4] float64 skinning transforms are ~40 MB for FLAME."""
ROTATION_TOLERANCE = 1e-5
"""How far RᵀR may be from the identity in a stored rotation (float64 written, float64 read)."""


# ----------------------------------------------------------------------------- fitting
def rigid_icp(source: np.ndarray, target: np.ndarray, max_distance_m: float = 0.01,
              with_scaling: bool = False, max_iterations: int = 50) -> tuple[np.ndarray, np.ndarray, float]:
    """Point-to-point ICP (open3d) with ``R @ source + t ≈ target``.

    source, target [S, 3] metres, corresponding index by index (two posings of one vertex set).
    ``max_distance_m``: nearest neighbours farther than this are not matched (where none match,
    open3d keeps the start, the closed-form fit below).
    Returns R [3, 3] (with ``with_scaling``: scale × rotation, scale = cbrt(det R)),
    t [3] metres and the RMSE in metres of the known correspondences after alignment
    (what the rigid motion leaves unexplained: the scalp's non-rigid motion, or noise).
    """
    source = np.ascontiguousarray(source, dtype=np.float64)
    target = np.ascontiguousarray(target, dtype=np.float64)
    if source.ndim != 2 or source.shape[1] != 3 or source.shape != target.shape or len(source) < 3:
        raise ValueError(f"rigid_icp needs two [S, 3] point sets of equal size S >= 3, got {source.shape} "
                         f"and {target.shape}")
    o3d = _open3d()
    # ICP matches nearest neighbours, so from a poor start it can lock onto a wrong local optimum
    # (the scalp is a smooth dome: a slip along it costs little). The correspondences are known,
    # so their closed-form fit puts ICP at the right optimum from the first iteration; ICP then
    # only refines it, and with a rigid motion it stays there.
    A, t = fit_similarity(source, target, with_scaling)
    init = np.eye(4)
    init[:3, :3], init[:3, 3] = A, t
    cloud = lambda points: o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))  # noqa: E731
    reg = o3d.pipelines.registration
    result = reg.registration_icp(
        cloud(source), cloud(target), max_distance_m, init,
        reg.TransformationEstimationPointToPoint(with_scaling),
        reg.ICPConvergenceCriteria(relative_fitness=1e-10, relative_rmse=1e-10, max_iteration=max_iterations))
    T = np.asarray(result.transformation, dtype=np.float64)
    R, t = T[:3, :3].copy(), T[:3, 3].copy()
    rmse_m = float(np.sqrt(np.mean(np.sum((source @ R.T + t - target) ** 2, axis=1))))
    return R, t, rmse_m


def _open3d():
    # Imported on use: open3d takes seconds to import (it pulls in dash, plotly, flask).
    try:
        import open3d
    except ImportError as e:
        raise ImportError(f"the hair's rigid alignment needs open3d (pip install open3d-cpu): {e}") from e
    return open3d


# ----------------------------------------------------------------------------- the subject's scalp
def tracked_parameter_files(union_dir: str | Path) -> dict[int, Path]:
    """The FLAME parameter file of every timestep of every split (train, val, test)."""
    union_dir = Path(union_dir)
    files: dict[int, Path] = {}
    for split in SPLITS:
        if not (union_dir / f"transforms_{split}.json").is_file():
            continue
        frames = SubjectFrames(union_dir, split)
        for i, t in enumerate(frames.timestep):
            if int(t) not in files:
                files[int(t)] = frames.resolve(frames.flame_paths[i])
    if not files:
        raise DataError(f"{union_dir}: no transforms_{{train,val,test}}.json, so no timesteps to align the hair to")
    return files


def canonical_timestep_of(union_dir: str | Path) -> int:
    """The timestep of the one-frame split the canonical hair is trained on."""
    path = Path(union_dir) / f"transforms_{CANONICAL_SPLIT}.json"
    if not path.is_file():
        raise DataError(f"{path}: file not found; the canonical hair's frame is the one timestep of this split "
                        f"(all train cameras at one timestep). Write it, or name the frame with "
                        f"--canonical-timestep")
    timesteps = np.unique(SubjectFrames(union_dir, CANONICAL_SPLIT).timestep)
    if len(timesteps) != 1:
        raise DataError(f"{path}: field 'timestep_index' takes {len(timesteps)} values "
                        f"({', '.join(map(str, timesteps[:5]))}...), expected one timestep")
    return int(timesteps[0])


def _parameter_tables(files: dict[int, Path], timesteps: np.ndarray, model: FlameModel,
                      shape: np.ndarray) -> dict[str, Tensor]:
    """Per-timestep FLAME inputs as float64 tensors [T, n], with one shared identity."""
    per_frame = [read_flame_params(files[int(t)]) for t in timesteps]
    tables = {name: torch.as_tensor(np.stack([p[name] for p in per_frame]), dtype=torch.float64)
              for name in ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")}
    tables["expr"] = tables["expr"][:, : model.n_expr]
    tables["shape"] = torch.as_tensor(shape[: model.n_shape], dtype=torch.float64).expand(len(timesteps), -1)
    return tables


def pose_vertices(model: FlameModel, tables: dict[str, Tensor], index: np.ndarray,
                  chunk: int = POSE_CHUNK) -> np.ndarray:
    """Posed vertices ``index`` [S] of every row of ``tables`` (key → [T, n]): [T, S, 3] metres.

    Posed ``chunk`` timesteps at a time, so memory stays bounded on subjects with thousands."""
    n = next(iter(tables.values())).shape[0]
    out = np.empty((n, len(index), 3), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, n, chunk):
            rows = {k: v[start: start + chunk] for k, v in tables.items()}
            out[start: start + chunk] = model(**rows)[:, index].numpy()
    return out


def scalp_vertices(union_dir: str | Path, head: HeadModel, timesteps=None,
                   canonical_timestep: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The subject's scalp vertices, posed by the tracked FLAME parameters.

    head: the base head model (see the module's docstring); its ``scalp`` region is used.
    timesteps: which frames (default: every timestep of every split).
    canonical_timestep: the canonical frame (default: the one of ``transforms_onef.json``).
    Returns timesteps [T] int64 (sorted), canonical [S, 3] and frames [T, S, 3], in metres.
    Every frame takes the canonical frame's identity (shape) parameters, as the face stage
    shares one identity across frames, so a rigid transform never absorbs an identity change.
    """
    files = tracked_parameter_files(union_dir)
    if canonical_timestep is None:
        canonical_timestep = canonical_timestep_of(union_dir)
    wanted = np.asarray(sorted(files) if timesteps is None else sorted({int(t) for t in timesteps}), dtype=np.int64)
    missing = [int(t) for t in np.append(wanted, canonical_timestep) if int(t) not in files]
    if missing:
        raise DataError(f"{union_dir}: timesteps {missing} are in no split's transforms JSON "
                        f"(known: {min(files)}..{max(files)})")
    if "scalp" not in head.regions or len(head.regions["scalp"]) < 3:
        raise AssetError(f"the head model's masks have no 'scalp' region of at least 3 vertices (regions: "
                         f"{', '.join(sorted(head.regions))}); the hair is aligned by it")
    index = np.flatnonzero(head.region_mask("scalp"))
    model = FlameModel(head, persistent=False).to(torch.float64)
    shape = read_flame_params(files[canonical_timestep])["shape"]
    posed = pose_vertices(model, _parameter_tables(files, np.append(wanted, canonical_timestep), model, shape), index)
    return wanted, posed[-1], posed[:-1]


# ----------------------------------------------------------------------------- the table on disk
FIELDS = ("timestep", "rotation", "translation", "rmse_m", "canonical_timestep")


def compute_hair_rigid(union_dir: str | Path, head: HeadModel, out_path: str | Path,
                       canonical_timestep: int | None = None, max_distance_m: float = 0.01) -> dict[str, np.ndarray]:
    """Fit eq. 5 for every timestep of every split and write ``hair_rigid.npz`` atomically.

    Fields: timestep [T] int64 (sorted), rotation [T, 3, 3] float64, translation [T, 3] float64
    metres, rmse_m [T] float64 metres (scalp residual after alignment), canonical_timestep int64
    scalar. Row k maps canonical positions x to frame ``timestep[k]``: ``rotation[k] @ x +
    translation[k]``. Returns the arrays written.
    """
    if canonical_timestep is None:
        canonical_timestep = canonical_timestep_of(union_dir)
    timesteps, canonical, frames = scalp_vertices(union_dir, head, canonical_timestep=canonical_timestep)
    T = len(timesteps)
    table = {"timestep": timesteps, "rotation": np.empty((T, 3, 3)), "translation": np.empty((T, 3)),
             "rmse_m": np.empty(T), "canonical_timestep": np.int64(canonical_timestep)}
    for k in range(T):
        table["rotation"][k], table["translation"][k], table["rmse_m"][k] = rigid_icp(
            canonical, frames[k], max_distance_m)
    worst = int(np.argmax(table["rmse_m"]))
    log.info("hair rigid alignment: %d timesteps, %d scalp vertices, canonical timestep %d; worst scalp RMSE "
             "%.3f mm at timestep %d (median %.3f mm)", T, canonical.shape[0], canonical_timestep,
             table["rmse_m"][worst] * 1e3, timesteps[worst], np.median(table["rmse_m"]) * 1e3)
    with atomic_path(out_path) as tmp:
        np.savez(tmp, **table)
    return table


def read_hair_rigid(path: str | Path) -> dict:
    """Read and check ``hair_rigid.npz``: the fields of :func:`compute_hair_rigid`, with
    ``canonical_timestep`` as an int. Any missing field or wrong shape is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: hair rigid transforms not found (written by `mega hair-rigid`)")
    try:
        with np.load(path) as npz:
            found = {key: npz[key] for key in npz.files}
    except Exception as e:
        raise DataError(f"{path}: not a NumPy .npz of hair transforms ({type(e).__name__}); write it with "
                        f"`mega hair-rigid`") from e
    for key in FIELDS:
        if key not in found:
            raise DataError(f"{path}: field '{key}' is missing (expected fields: {', '.join(FIELDS)})")
    timestep = found["timestep"]
    if timestep.ndim != 1 or len(timestep) == 0 or not np.issubdtype(timestep.dtype, np.integer):
        raise DataError(f"{path}: field 'timestep' has shape {timestep.shape} and dtype {timestep.dtype}, "
                        f"expected a non-empty [T] integer array")
    if np.any(np.diff(timestep) <= 0):
        raise DataError(f"{path}: field 'timestep' is not strictly increasing (expected sorted, unique timesteps)")
    T = len(timestep)
    for key, shape in (("rotation", (T, 3, 3)), ("translation", (T, 3)), ("rmse_m", (T,))):
        if found[key].shape != shape:
            raise DataError(shape_mismatch(path, key, found[key].shape, f"{shape} (T = {T} timesteps)"))
        if not np.issubdtype(found[key].dtype, np.floating) or not np.isfinite(found[key]).all():
            raise DataError(f"{path}: field '{key}' must hold finite floats (dtype {found[key].dtype})")
    R = found["rotation"]
    error = np.abs(np.swapaxes(R, 1, 2) @ R - np.eye(3)).max(axis=(1, 2))
    bad = np.flatnonzero((error > ROTATION_TOLERANCE) | (np.linalg.det(R) <= 0))
    if len(bad):
        k = bad[0]
        raise DataError(f"{path}: field 'rotation' row {k} (timestep {timestep[k]}) is not a rotation "
                        f"(|RᵀR − I| = {error[k]:.2g}, det = {np.linalg.det(R[k]):.4g}), expected RᵀR = I, det = 1")
    canonical = found["canonical_timestep"]
    if canonical.shape != () or not np.issubdtype(canonical.dtype, np.integer):
        raise DataError(f"{path}: field 'canonical_timestep' has shape {canonical.shape} and dtype "
                        f"{canonical.dtype}, expected an integer scalar")
    if int(canonical) not in set(timestep.tolist()):
        raise DataError(f"{path}: field 'canonical_timestep' is {int(canonical)}, which is not in 'timestep'")
    return {"timestep": timestep.astype(np.int64), "rotation": R.astype(np.float64),
            "translation": found["translation"].astype(np.float64), "rmse_m": found["rmse_m"].astype(np.float64),
            "canonical_timestep": int(canonical)}


# ----------------------------------------------------------------------------- moving Gaussians
def apply_rigid_to_gaussians(means: Tensor, quats: Tensor, R, t) -> tuple[Tensor, Tensor]:
    """Move Gaussians rigidly: means [N, 3] metres → R means + t; quats [N, 4] (w, x, y, z) →
    q_R ⊗ q, so each covariance Σ becomes R Σ Rᵀ (the authors move positions only).

    R [3, 3] a rotation (a scaled one from scaled ICP must be divided by its scale first) and
    t [3] metres, tensors or arrays; they take the means' dtype and device. Differentiable in
    means, quats (and R, t when they are tensors); a quaternion keeps its norm, so raw
    (unnormalised) parameters stay raw.
    """
    R = torch.as_tensor(R, dtype=means.dtype, device=means.device)
    t = torch.as_tensor(t, dtype=means.dtype, device=means.device)
    if means.ndim != 2 or means.shape[1] != 3 or quats.shape != (means.shape[0], 4):
        raise ValueError(f"means [N, 3] and quats [N, 4] expected, got {tuple(means.shape)} and {tuple(quats.shape)}")
    if R.shape != (3, 3) or t.shape != (3,):
        raise ValueError(f"R [3, 3] and t [3] expected, got {tuple(R.shape)} and {tuple(t.shape)}")
    q_R = matrix_to_quaternion(R).to(quats.dtype)
    return means @ R.T + t, quaternion_multiply(q_R.expand_as(quats), quats)


__all__ = [
    "apply_rigid_to_gaussians", "canonical_timestep_of", "compute_hair_rigid", "fit_similarity",
    "matrix_to_quaternion", "pose_vertices", "quaternion_multiply", "read_hair_rigid", "rigid_icp",
    "scalp_vertices", "tracked_parameter_files",
]
