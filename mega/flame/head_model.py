"""A FLAME-format head model held in numpy, and the loader that assembles it from its files.

The same loader reads the licensed FLAME 2020/2023 files and the procedural model that
:mod:`mega.flame.toy` writes in their format.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mega.errors import AssetError
from mega.flame import files

# The outer lip rings of the FLAME topology (15 vertices each, left corner to right corner),
# from which the teeth are built. A model with another topology names its own rings in its
# masks pickle under these keys.
LIP_RING_KEYS = ("lip_outside_ring_upper", "lip_outside_ring_lower")
FLAME_LIP_RING_UPPER = (1713, 1715, 1716, 1735, 1696, 1694, 1657, 3543, 2774, 2811, 2813, 2850, 2833, 2832, 2830)
FLAME_LIP_RING_LOWER = (1576, 1577, 1773, 1774, 1795, 1802, 1865, 3503, 2948, 2905, 2898, 2881, 2880, 2713, 2712)
FLAME_N_VERTICES = 5023

# Coarse region labels, one per vertex, in priority order (a vertex in several masks takes the
# first). Index 0 is everything else (ears, boundary, ...).
REGION_NAMES = ("other", "teeth", "eyeballs", "face", "scalp", "neck")


@dataclass
class HeadModel:
    """Everything linear blend skinning and rendering need, as numpy arrays.

    Units are metres; the model looks along +z with +y up (FLAME's frame).
    """

    v_template: np.ndarray  # [V, 3] float64
    faces: np.ndarray  # [F, 3] int64
    shapedirs: np.ndarray  # [V, 3, n_shape + n_expr]
    posedirs: np.ndarray  # [V, 3, 9 * (J - 1)]
    J_regressor: np.ndarray  # [J, V]
    lbs_weights: np.ndarray  # [V, J]
    parents: np.ndarray  # [J] int64, -1 for the root
    uvs: np.ndarray  # [T, 2] in [0, 1], v up (OBJ convention)
    faces_uv: np.ndarray  # [F, 3] int64 into uvs
    regions: dict[str, np.ndarray] = field(default_factory=dict)  # name -> vertex indices
    lip_ring_upper: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [R]
    lip_ring_lower: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [R]
    n_shape: int = 300
    n_expr: int = 100

    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])

    def region_mask(self, name: str) -> np.ndarray:
        """[V] bool mask of one region; an unknown name is an error listing the known ones."""
        if name not in self.regions:
            raise KeyError(f"region '{name}' not in the head model (has: {', '.join(sorted(self.regions))})")
        mask = np.zeros(self.n_vertices, dtype=bool)
        mask[self.regions[name]] = True
        return mask

    def regions_mask(self, names: tuple[str, ...] | list[str]) -> np.ndarray:
        """[V] bool union of the named regions; names the model lacks add nothing."""
        mask = np.zeros(self.n_vertices, dtype=bool)
        for name in names:
            if name in self.regions:
                mask[self.regions[name]] = True
        return mask

    def scalp_triangles(self) -> np.ndarray:
        """[F] bool: the triangles with every corner on the scalp (the hairline's, with a corner off
        it, are not): where hair is rooted, and where the face's ``white_on_scalp`` target stays
        white."""
        return self.regions_mask(["scalp"])[self.faces].all(axis=1)

    def region_labels(self) -> np.ndarray:
        """[V] int64 label per vertex, indexing :data:`REGION_NAMES`."""
        labels = np.zeros(self.n_vertices, dtype=np.int64)
        groups = {
            "teeth": ("teeth",),
            "eyeballs": ("left_eyeball", "right_eyeball"),
            "face": ("face",),
            "scalp": ("scalp",),
            "neck": ("neck",),
        }
        # Assign from lowest to highest priority so that higher ones overwrite.
        for label in reversed(range(1, len(REGION_NAMES))):
            for region in groups[REGION_NAMES[label]]:
                if region in self.regions:
                    labels[self.regions[region]] = label
        return labels

    def replace(self, **changes) -> "HeadModel":
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> str:
        """12 hex digits that name this mesh (template vertices to 0.1 mm, faces): avatars can
        exchange parts (editing) only when their head models share it."""
        digest = hashlib.sha1(np.round(np.asarray(self.v_template, np.float64) * 1e4).astype(np.int64).tobytes())
        digest.update(np.asarray(self.faces, np.int64).tobytes())
        return digest.hexdigest()[:12]


def load_head_model(model_path: str | Path, masks_path: str | Path, template_path: str | Path,
                    n_shape: int = 300, n_expr: int = 100) -> HeadModel:
    """Load a FLAME-format model from its pickle, masks pickle and template OBJ.

    The OBJ must share the pickle's faces (as the FLAME template does); its ``vt`` and
    per-face UV indices give the texture layout.
    """
    model = files.read_flame_pickle(model_path, n_shape=n_shape, n_expr=n_expr)
    n_vertices = model["v_template"].shape[0]
    template = files.read_obj(template_path)
    if template["vertices"].shape[0] != n_vertices:
        raise AssetError(f"{template_path}: {template['vertices'].shape[0]} vertices, expected {n_vertices} "
                         f"as in {model_path}")
    if template["faces"].shape != model["faces"].shape or not np.array_equal(template["faces"], model["faces"]):
        raise AssetError(f"{template_path}: faces differ from 'f' in {model_path}; "
                         "the template must use the model's topology")
    masks = files.read_masks(masks_path, n_vertices)
    upper, lower = _lip_rings(masks, n_vertices, masks_path)
    return HeadModel(
        v_template=model["v_template"],
        faces=model["faces"],
        shapedirs=model["shapedirs"],
        posedirs=model["posedirs"],
        J_regressor=model["J_regressor"],
        lbs_weights=model["lbs_weights"],
        parents=model["parents"],
        uvs=template["uvs"],
        faces_uv=template["faces_uv"],
        regions={k: v for k, v in masks.items() if k not in LIP_RING_KEYS},
        lip_ring_upper=upper,
        lip_ring_lower=lower,
        n_shape=n_shape,
        n_expr=n_expr,
    )


def _lip_rings(masks: dict, n_vertices: int, masks_path) -> tuple[np.ndarray, np.ndarray]:
    if all(k in masks for k in LIP_RING_KEYS):
        upper, lower = (masks[k] for k in LIP_RING_KEYS)
        # Ring order matters (corner to corner), so read_masks must not have sorted them.
        if upper.shape != lower.shape:
            raise AssetError(f"{masks_path}: lip rings have {upper.size} and {lower.size} vertices, expected equal")
        return upper, lower
    if n_vertices == FLAME_N_VERTICES:
        return np.asarray(FLAME_LIP_RING_UPPER, np.int64), np.asarray(FLAME_LIP_RING_LOWER, np.int64)
    raise AssetError(f"{masks_path}: keys {LIP_RING_KEYS} are missing and the model has {n_vertices} vertices, "
                     f"not FLAME's {FLAME_N_VERTICES}; name the lip rings (corner to corner) in the masks pickle")


def head_model_paths(folder: str | Path) -> dict[str, Path]:
    """The three files of a head-model folder (what `mega head-model` writes)."""
    folder = Path(folder)
    return {"model": folder / "head_model.pkl", "masks": folder / "head_masks.pkl",
            "template": folder / "head_template.obj"}


def load_head_model_folder(folder: str | Path) -> HeadModel:
    """Read a folder written by :func:`write_head_model`."""
    paths = head_model_paths(folder)
    return load_head_model(paths["model"], paths["masks"], paths["template"])


def write_head_model(folder: str | Path, head: HeadModel) -> dict[str, Path]:
    """Write ``head`` as a FLAME-format pickle, masks pickle and template OBJ into ``folder``.

    The template OBJ carries the model's own faces and UVs. Returns the three paths.
    """
    paths = head_model_paths(folder)
    # Pad the identity block to FLAME's 300 components so the file has FLAME's exact layout.
    identity = head.shapedirs[:, :, : head.n_shape]
    pad = np.zeros((head.n_vertices, 3, max(0, 300 - head.n_shape)))
    shapedirs = np.concatenate([identity, pad, head.shapedirs[:, :, head.n_shape :]], axis=2)
    files.write_flame_pickle(paths["model"], {
        "v_template": head.v_template, "faces": head.faces, "shapedirs": shapedirs,
        "posedirs": head.posedirs, "J_regressor": head.J_regressor, "lbs_weights": head.lbs_weights,
        "parents": head.parents,
    })
    masks = dict(head.regions)
    masks[LIP_RING_KEYS[0]] = head.lip_ring_upper
    masks[LIP_RING_KEYS[1]] = head.lip_ring_lower
    files.write_masks(paths["masks"], masks)
    files.write_obj(paths["template"], head.v_template, head.uvs, head.faces, head.faces_uv)
    return paths
