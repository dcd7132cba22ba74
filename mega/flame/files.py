"""Reading and writing the three files of a FLAME-format head model.

* the model pickle (``flame2023.pkl`` / ``generic_model.pkl``): template, blendshapes, joint
  regressor, skinning weights, kinematic tree. The licensed files were written under Python 2
  with chumpy arrays inside; they are read here without chumpy installed.
* the masks pickle (``FLAME_masks.pkl``): region name → vertex indices.
* the template OBJ with UVs (``head_template_mesh.obj``): ``v``, ``vt`` and ``f v/vt``.

Every reader checks keys and shapes and raises :class:`~mega.errors.AssetError` naming the file,
the key, the shape found and the shape expected.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import scipy.sparse

from mega.atomic import atomic_path
from mega.errors import AssetError, shape_mismatch

# FLAME has five joints: 0 global (root), 1 neck, 2 jaw, 3 and 4 the eyes.
N_JOINTS = 5
JOINT_NAMES = ("root", "neck", "jaw", "left_eye", "right_eye")


# --------------------------------------------------------------------------------------------
# Model pickle, chumpy-free


class _ChumpyStandIn:
    """Receives the pickled state of a chumpy object in place of the real class.

    chumpy's ``Ch.__getstate__`` pickles the instance ``__dict__``; a plain array wrapper keeps
    its value under ``'x'``. Expression nodes (sums, products) have no ``'x'`` and cannot be
    evaluated without chumpy.
    """

    chumpy_class = "chumpy.ch.Ch"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"x": state}


class _ChumpyFreeUnpickler(pickle.Unpickler):
    _stand_ins: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if module == "chumpy" or module.startswith("chumpy."):
            qualified = f"{module}.{name}"
            if qualified not in self._stand_ins:
                self._stand_ins[qualified] = type(name, (_ChumpyStandIn,), {"chumpy_class": qualified})
            return self._stand_ins[qualified]
        if module.startswith("scipy.sparse") and name.endswith(("_matrix", "_array")):
            # Old pickles name private modules (scipy.sparse.csc) that newer scipy removed.
            return getattr(scipy.sparse, name)
        if module == "numpy.core" or module.startswith("numpy.core."):
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def _plain(value, path: Path, key: str):
    """Turn chumpy stand-ins and sparse matrices into numpy arrays."""
    if isinstance(value, _ChumpyStandIn):
        if "x" not in value.state:
            raise AssetError(
                f"{path}: '{key}' holds a chumpy expression ({value.chumpy_class}) rather than an "
                "array; it cannot be evaluated without chumpy. Re-save the file with plain arrays."
            )
        return np.asarray(value.state["x"])
    if scipy.sparse.issparse(value):
        return np.asarray(value.toarray())
    return value


def read_pickle(path: str | Path) -> dict:
    """Unpickle a (possibly Python 2, possibly chumpy-holding) pickle into a dict of numpy data."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            obj = _ChumpyFreeUnpickler(io.BufferedReader(f), encoding="latin1").load()
    except AssetError:
        raise
    except Exception as e:  # pickle raises many types on corrupt input
        raise AssetError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise AssetError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {k: _plain(v, path, k) for k, v in obj.items()}


def _check_shape(path: Path, key: str, array: np.ndarray, pattern: tuple, dims: dict) -> None:
    """Match ``array.shape`` against a pattern of ints and symbols, binding symbols in ``dims``.

    A symbol written ``"S>=400"`` must be at least 400.
    """
    def describe() -> str:
        parts = []
        for p in pattern:
            if isinstance(p, int):
                parts.append(str(p))
            else:
                name = p.split(">=")[0]
                parts.append(f"{name}={dims[name]}" if name in dims else p)
        return "(" + ", ".join(parts) + ")"

    if array.ndim != len(pattern):
        raise AssetError(shape_mismatch(path, key, array.shape, describe()))
    for size, p in zip(array.shape, pattern):
        if isinstance(p, int):
            if size != p:
                raise AssetError(shape_mismatch(path, key, array.shape, describe()))
            continue
        name, _, minimum = p.partition(">=")
        if minimum and size < int(minimum):
            raise AssetError(shape_mismatch(path, key, array.shape, describe()))
        if name in dims and dims[name] != size:
            raise AssetError(shape_mismatch(path, key, array.shape, describe()))
        dims.setdefault(name, size)


def read_flame_pickle(path: str | Path, n_shape: int = 300, n_expr: int = 100) -> dict:
    """Read and validate a FLAME model pickle.

    Returns a dict of numpy arrays:
        v_template  [V, 3] float64, metres
        faces       [F, 3] int64
        shapedirs   [V, 3, n_shape + n_expr] (identity components first, then expression)
        posedirs    [V, 3, 9 * (J - 1)]
        J_regressor [J, V] float64 (dense)
        lbs_weights [V, J]
        parents     [J] int64, -1 for the root
    """
    path = Path(path)
    raw = read_pickle(path)
    needed = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
    for key in needed:
        if key not in raw:
            raise AssetError(f"{path}: key '{key}' is missing (FLAME model pickles hold {', '.join(needed)})")
    arrays = {k: np.asarray(raw[k]) for k in needed}
    dims: dict[str, int] = {}
    min_components = 300 + n_expr if n_shape <= 300 else n_shape + n_expr
    _check_shape(path, "v_template", arrays["v_template"], ("V", 3), dims)
    _check_shape(path, "f", arrays["f"], ("F", 3), dims)
    _check_shape(path, "shapedirs", arrays["shapedirs"], ("V", 3, f"S>={min_components}"), dims)
    _check_shape(path, "kintree_table", arrays["kintree_table"], (2, N_JOINTS), dims)
    _check_shape(path, "posedirs", arrays["posedirs"], ("V", 3, 9 * (N_JOINTS - 1)), dims)
    _check_shape(path, "J_regressor", arrays["J_regressor"], (N_JOINTS, "V"), dims)
    _check_shape(path, "weights", arrays["weights"], ("V", N_JOINTS), dims)

    faces = arrays["f"].astype(np.int64)
    if faces.min() < 0 or faces.max() >= dims["V"]:
        raise AssetError(f"{path}: 'f' indexes vertices outside [0, {dims['V']})")
    shapedirs = arrays["shapedirs"].astype(np.float64)
    # FLAME stores 300 identity then 100 expression components; a model may carry fewer used.
    identity = shapedirs[:, :, :n_shape]
    expression = shapedirs[:, :, 300 : 300 + n_expr] if n_shape <= 300 else shapedirs[:, :, n_shape:]
    parents = arrays["kintree_table"][0].astype(np.int64)
    parents[0] = -1  # stored as 2**32 - 1 in the licensed files
    return {
        "v_template": arrays["v_template"].astype(np.float64),
        "faces": faces,
        "shapedirs": np.concatenate([identity, expression], axis=2),
        "posedirs": arrays["posedirs"].astype(np.float64),
        "J_regressor": arrays["J_regressor"].astype(np.float64),
        "lbs_weights": arrays["weights"].astype(np.float64),
        "parents": parents,
    }


def write_flame_pickle(path: str | Path, model: dict) -> None:
    """Write a FLAME-format pickle with the keys and layouts of the licensed files.

    ``model`` holds the keys returned by :func:`read_flame_pickle`. The joint regressor is
    stored as a scipy CSC matrix and the root's parent as 2**32 - 1, as in FLAME 2020/2023.
    """
    parents = np.asarray(model["parents"], dtype=np.int64).copy()
    kintree = np.stack([parents, np.arange(len(parents))]).astype(np.int64)
    kintree[0, 0] = 2**32 - 1
    v = np.asarray(model["v_template"], dtype=np.float64)
    regressor = scipy.sparse.csc_matrix(np.asarray(model["J_regressor"], dtype=np.float64))
    payload = {
        "v_template": v,
        "f": np.asarray(model["faces"], dtype=np.uint32),
        "shapedirs": np.asarray(model["shapedirs"], dtype=np.float64),
        "posedirs": np.asarray(model["posedirs"], dtype=np.float64),
        "J_regressor": regressor,
        "weights": np.asarray(model["lbs_weights"], dtype=np.float64),
        "kintree_table": kintree,
        "J": regressor @ v,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=2)


# --------------------------------------------------------------------------------------------
# Masks pickle


def read_masks(path: str | Path, n_vertices: int) -> dict[str, np.ndarray]:
    """Read a FLAME masks pickle: region name → vertex indices [K] int64, in file order
    (order matters for the lip rings, which run corner to corner)."""
    path = Path(path)
    raw = read_pickle(path)
    masks = {}
    for name, value in raw.items():
        idx = np.asarray(value)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise AssetError(f"{path}: region '{name}' has shape {idx.shape} and dtype {idx.dtype}, "
                             "expected a 1-D array of vertex indices")
        if idx.size and (idx.min() < 0 or idx.max() >= n_vertices):
            raise AssetError(f"{path}: region '{name}' indexes vertices outside [0, {n_vertices})")
        masks[str(name)] = idx.astype(np.int64)
    return masks


def write_masks(path: str | Path, masks: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump({k: np.asarray(v, dtype=np.int64) for k, v in masks.items()}, f, protocol=2)


# --------------------------------------------------------------------------------------------
# Template OBJ with UVs


def read_obj(path: str | Path) -> dict:
    """Read a triangle OBJ with texture coordinates.

    Returns ``vertices [V,3]``, ``uvs [T,2]``, ``faces [F,3]`` (into vertices) and
    ``faces_uv [F,3]`` (into uvs), all zero-based.
    """
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path}: file not found")
    vertices, uvs, faces, faces_uv = [], [], [], []
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            tag = parts[0]
            try:
                if tag == "v":
                    vertices.append([float(x) for x in parts[1:4]])
                elif tag == "vt":
                    uvs.append([float(x) for x in parts[1:3]])
                elif tag == "f":
                    if len(parts) != 4:
                        raise AssetError(f"{path}:{line_no}: face with {len(parts) - 1} corners, expected triangles")
                    corners = [c.split("/") for c in parts[1:]]
                    if any(len(c) < 2 or not c[1] for c in corners):
                        raise AssetError(f"{path}:{line_no}: face without texture indices, expected 'f v/vt v/vt v/vt'")
                    faces.append([int(c[0]) for c in corners])
                    faces_uv.append([int(c[1]) for c in corners])
            except ValueError as e:
                raise AssetError(f"{path}:{line_no}: cannot parse '{line.strip()}' ({e})") from e
    if not vertices or not faces:
        raise AssetError(f"{path}: no vertices or faces found")
    if not uvs:
        raise AssetError(f"{path}: no texture coordinates ('vt' lines) found; the template needs UVs")
    out = {
        "vertices": np.asarray(vertices, dtype=np.float64),
        "uvs": np.asarray(uvs, dtype=np.float64),
        "faces": np.asarray(faces, dtype=np.int64) - 1,
        "faces_uv": np.asarray(faces_uv, dtype=np.int64) - 1,
    }
    if out["faces"].min() < 0 or out["faces"].max() >= len(vertices):
        raise AssetError(f"{path}: faces index vertices outside [1, {len(vertices)}]")
    if out["faces_uv"].min() < 0 or out["faces_uv"].max() >= len(uvs):
        raise AssetError(f"{path}: faces index texture coordinates outside [1, {len(uvs)}]")
    return out


def write_obj(path: str | Path, vertices: np.ndarray, uvs: np.ndarray, faces: np.ndarray,
              faces_uv: np.ndarray) -> None:
    buf = io.StringIO()
    buf.write("# head template written by mega\n")
    np.savetxt(buf, np.asarray(vertices), fmt="v %.8f %.8f %.8f")
    np.savetxt(buf, np.asarray(uvs), fmt="vt %.8f %.8f")
    corners = np.stack([np.asarray(faces) + 1, np.asarray(faces_uv) + 1], axis=-1).reshape(-1, 6)
    np.savetxt(buf, corners, fmt="f %d/%d %d/%d %d/%d")
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
