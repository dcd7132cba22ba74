"""Reader of a subject in GaussianAvatars' UNION layout, plus MeGA's extras.

::

    <parent>/
      UNION10_<SUB>_..._/                     the folder this reader is given
        transforms_{train,val,test}.json      frames: camera (OpenGL c2w + intrinsics) and paths
        canonical_flame_param.npz
        sequences_trainval.txt, sequences_test.txt   sibling sequence folders, one per line
      <SUB>_<SEQ>_.../                         one per sequence
        images/<ts>_<cam>.png  fg_masks/<ts>_<cam>.png  flame_param/<ts>.npz
        parsing/<ts>_<cam>_labels.png          (MeGA extra, CelebAMask-HQ labels)
        depths/<ts>_<cam>.npz                  (MeGA extra, sparse depth in metres)

Frame paths in the JSON are relative to the UNION folder (``../<seq>/images/...``). Only
metadata is held in memory, in flat numpy arrays (no per-frame Python objects, so DataLoader
workers do not copy them on access); images are decoded on demand.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mega.data.camera import Camera
from mega.data.depth import read_depth
from mega.data.flame_params import read_flame_params
from mega.data.json_file import read_json
from mega.data.parsing import N_LABELS
from mega.errors import DataError

_REQUIRED_FRAME_FIELDS = ("file_path", "fg_mask_path", "flame_param_path", "transform_matrix",
                          "timestep_index", "camera_index")
_INTRINSIC_FIELDS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
Extra = Literal["auto", "require", "off"]
EXTRA_FOLDERS = {"parsing": "face parsing", "depths": "depth maps"}


def read_sequence_list(path: Path) -> list[str]:
    """Sequence folder names listed one per line in ``sequences_*.txt``; each must exist beside
    the UNION folder."""
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    for line_no, name in enumerate(names, start=1):
        if not (path.parent.parent / name).is_dir():
            raise DataError(f"{path}: line {line_no} names sequence '{name}', but folder "
                            f"{path.parent.parent / name} does not exist")
    return names


def _number(value, where: str, key: str) -> float:
    """A finite number from a JSON field, or a DataError naming the file, frame and field."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataError(f"{where}: '{key}' = {value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{where}: '{key}' = {value!r} is not a number") from None
    if not np.isfinite(number):
        raise DataError(f"{where}: '{key}' = {value!r} is not finite")
    return number


def _integer(value, where: str, key: str) -> int:
    """A whole number from a JSON field (``3`` or ``3.0``; a string of digits too)."""
    number = _number(value, where, key)
    if number != int(number):
        raise DataError(f"{where}: '{key}' = {value!r} is not a whole number")
    return int(number)


class SubjectFrames:
    """The frames of one split as flat arrays (index i = one image of one camera at one time)."""

    def __init__(self, union_dir: str | Path, split: str):
        # Resolved once (symlinks followed), so that the lexical '..' in frame paths is right.
        self.union_dir = Path(union_dir).resolve()
        self.split = split
        self.json_path = self.union_dir / f"transforms_{split}.json"
        meta = read_json(self.json_path)
        if not isinstance(meta, dict):
            raise DataError(f"{self.json_path}: expected a JSON object with 'frames' and the shared intrinsics at "
                            f"the top level, got a {type(meta).__name__}")
        frames = meta.get("frames")
        if not isinstance(frames, list):
            raise DataError(f"{self.json_path}: field 'frames' is missing or not a list")
        if not frames:
            raise DataError(f"{self.json_path}: 'frames' is empty")
        n = len(frames)
        self.intrinsics = np.zeros((n, 4), np.float64)  # fl_x, fl_y, cx, cy (pixels)
        self.size_wh = np.zeros((n, 2), np.int64)
        self.c2w_opengl = np.zeros((n, 4, 4), np.float64)
        self.timestep = np.zeros(n, np.int64)
        self.camera_index = np.zeros(n, np.int64)
        paths = {"file_path": [], "fg_mask_path": [], "flame_param_path": []}
        for i, frame in enumerate(frames):
            where = f"{self.json_path}: frame {i}"
            if not isinstance(frame, dict):
                raise DataError(f"{where} is a {type(frame).__name__}, expected an object with fields "
                                f"{', '.join(_REQUIRED_FRAME_FIELDS)}")
            for key in _REQUIRED_FRAME_FIELDS:
                if key not in frame:
                    raise DataError(f"{where} has no field '{key}' (each frame needs {', '.join(_REQUIRED_FRAME_FIELDS)})")
            values = []
            for key in _INTRINSIC_FIELDS:
                value = frame.get(key, meta.get(key))
                if value is None:
                    raise DataError(f"{where} has no field '{key}', and the file has no top-level '{key}'")
                values.append(_number(value, where, key))
            self.intrinsics[i] = values[:4]
            self.size_wh[i] = values[4:]
            try:
                matrix = np.asarray(frame["transform_matrix"], dtype=np.float64)
            except (TypeError, ValueError):
                raise DataError(f"{where}: 'transform_matrix' = {frame['transform_matrix']!r} is not a 4 x 4 matrix "
                                f"of numbers (the camera-to-world transform, OpenGL convention)") from None
            if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
                raise DataError(f"{where}: 'transform_matrix' has shape {matrix.shape}, expected (4, 4) of finite numbers")
            self.c2w_opengl[i] = matrix
            self.timestep[i] = _integer(frame["timestep_index"], where, "timestep_index")
            self.camera_index[i] = _integer(frame["camera_index"], where, "camera_index")
            for key in paths:
                paths[key].append(str(frame[key]))
        # Fixed-width byte strings: one buffer, no per-element Python objects.
        self.image_paths = np.array(paths["file_path"], dtype=np.bytes_)
        self.mask_paths = np.array(paths["fg_mask_path"], dtype=np.bytes_)
        self.flame_paths = np.array(paths["flame_param_path"], dtype=np.bytes_)

    def __len__(self) -> int:
        return len(self.timestep)

    def resolve(self, relative: bytes) -> Path:
        # Lexical normalisation of a path under the resolved UNION folder: no filesystem calls
        # on the per-sample path.
        return Path(os.path.normpath(self.union_dir / relative.decode()))

    def sequence_dirs(self) -> list[Path]:
        """The sequence folders this split's frames live in (parent of ``images/``)."""
        return sorted({self.resolve(p).parent.parent for p in np.unique(self.image_paths)})


class SubjectDataset(Dataset):
    """Samples of one split of a subject, for ``torch.utils.data.DataLoader``.

    Each item is a dict:
        image          [3, H, W] float32 in [0, 1]
        fg_mask        [1, H, W] float32 in [0, 1]
        parsing        [H, W] int64 CelebAMask-HQ labels        (if the subject has parsing)
        depth          [1, H, W] float32 metres, 0 = unknown    (if the subject has depth maps)
        flame          dict of float32 tensors: shape [300], expr [100], rotation [3],
                       neck_pose [3], jaw_pose [3], eyes_pose [6], translation [3]
        camera         :class:`Camera`
        timestep_index, camera_index, frame_index   int

    ``parsing`` and ``depth``: ``"auto"`` loads them when every sequence of the split has the
    folder, ``"require"`` fails when one lacks it, ``"off"`` never loads them (see also
    :func:`subject_extras`). Use
    :func:`collate_samples` as the DataLoader's ``collate_fn``.
    """

    def __init__(self, union_dir: str | Path, split: str = "train", parsing: Extra = "auto",
                 depth: Extra = "auto", check_files: bool = True):
        # Sequence folders are siblings of the real folder, also when a symlink is given.
        self.union_dir = Path(union_dir).resolve()
        if not self.union_dir.is_dir():
            raise DataError(f"{self.union_dir}: subject folder not found")
        for listing in sorted(self.union_dir.glob("sequences_*.txt")):
            read_sequence_list(listing)
        self.frames = SubjectFrames(self.union_dir, split)
        seq_dirs = self.frames.sequence_dirs()
        self.has_parsing = self._extra_present("parsing", parsing, seq_dirs)
        self.has_depth = self._extra_present("depths", depth, seq_dirs)
        if check_files:
            self._check_files()

    def _extra_present(self, folder: str, mode: Extra, seq_dirs: list[Path]) -> bool:
        if mode == "off":
            return False
        missing = [d for d in seq_dirs if not (d / folder).is_dir()]
        if mode == "require" and missing:
            raise DataError(f"{missing[0] / folder}: folder not found, and {folder} were required")
        return not missing

    def _check_files(self) -> None:
        f = self.frames
        for i in range(len(f)):
            for column, field in ((f.image_paths, "file_path"), (f.mask_paths, "fg_mask_path"),
                                  (f.flame_paths, "flame_param_path")):
                path = f.resolve(column[i])
                if not path.is_file():
                    raise DataError(f"{path}: file not found (frame {i}, field '{field}' of {f.json_path})")
            if self.has_parsing and not self.parsing_path(i).is_file():
                raise DataError(f"{self.parsing_path(i)}: parsing labels not found for frame {i} of {f.json_path}")
            if self.has_depth and not self.depth_path(i).is_file():
                raise DataError(f"{self.depth_path(i)}: depth map not found for frame {i} of {f.json_path}")

    def __len__(self) -> int:
        return len(self.frames)

    def image_path(self, i: int) -> Path:
        return self.frames.resolve(self.frames.image_paths[i])

    def parsing_path(self, i: int) -> Path:
        image = self.image_path(i)
        return image.parent.parent / "parsing" / f"{image.stem}_labels.png"

    def parsing_labels(self, i: int) -> torch.Tensor:
        """The face-parsing labels [H, W] long (CelebAMask-HQ order) of sample ``i``, alone."""
        path = self.parsing_path(i)
        w, h = (int(x) for x in self.frames.size_wh[i])
        labels = read_png(path, None, (w, h))
        if labels.ndim != 2 or labels.max(initial=0) >= N_LABELS:
            raise DataError(f"{path}: expected one channel of labels 0..{N_LABELS - 1}, found shape "
                            f"{labels.shape} with max {labels.max(initial=0)}")
        return torch.from_numpy(labels.astype(np.int64))

    def depth_path(self, i: int) -> Path:
        image = self.image_path(i)
        return image.parent.parent / "depths" / f"{image.stem}.npz"

    def camera(self, i: int) -> Camera:
        fl_x, fl_y, cx, cy = self.frames.intrinsics[i]
        w, h = self.frames.size_wh[i]
        return Camera.from_opengl(fl_x, fl_y, cx, cy, self.frames.c2w_opengl[i], int(w), int(h))

    def flame(self, i: int) -> dict[str, torch.Tensor]:
        """The tracked FLAME parameters of sample ``i`` (its timestep's file), without reading
        its image."""
        return {k: torch.tensor(v) for k, v in _cached_flame_params(str(self.frames.resolve(self.frames.flame_paths[i]))
                                                                    ).items()}

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        f = self.frames
        w, h = (int(x) for x in f.size_wh[i])
        image = read_png(f.resolve(f.image_paths[i]), "RGB", (w, h))
        mask = read_png(f.resolve(f.mask_paths[i]), "L", (w, h))
        sample = {
            "image": torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0),
            "fg_mask": torch.from_numpy(mask)[None].float().div_(255.0),
            "flame": self.flame(i),
            "camera": self.camera(i),
            "timestep_index": int(f.timestep[i]),
            "camera_index": int(f.camera_index[i]),
            "frame_index": i,
        }
        if self.has_parsing:
            sample["parsing"] = self.parsing_labels(i)
        if self.has_depth:
            sample["depth"] = torch.from_numpy(read_depth(self.depth_path(i), (h, w)))[None]
        return sample


def subject_extras(union_dir: str | Path) -> dict[str, bool]:
    """Whether the subject has each of MeGA's extras (``parsing``, ``depths``), all or none:
    a sequence without an extra that other sequences of the subject have, whichever split they
    serve, is an error that names it."""
    union_dir = Path(union_dir).resolve()
    sequences = sorted({d for split in ("train", "val", "test") if (union_dir / f"transforms_{split}.json").is_file()
                        for d in SubjectFrames(union_dir, split).sequence_dirs()})
    present = {}
    for folder, what in EXTRA_FOLDERS.items():
        missing = [d for d in sequences if not (d / folder).is_dir()]
        if missing and len(missing) < len(sequences):
            raise DataError(f"{missing[0] / folder}: folder not found, while other sequences of the subject have "
                            f"{what} ({len(missing)} of {len(sequences)} sequences lack it); add it to every "
                            f"sequence or remove it from all")
        present[folder] = not missing
    return present


@lru_cache(maxsize=64)
def _cached_flame_params(path: str) -> dict[str, np.ndarray]:
    # The sixteen cameras of a timestep share one file; a small cache avoids re-reading it.
    return read_flame_params(path)


def read_png(path: Path, mode: str | None, expected_wh: tuple[int, int]) -> np.ndarray:
    """Decode an image fully (so truncation is caught here) → uint8 [H, W] or [H, W, C]."""
    try:
        with Image.open(path) as img:
            if mode is not None and img.mode != mode:
                img = img.convert(mode)
            else:
                img.load()
            array = np.array(img)  # a writable copy, owned by the sample
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e}); the file may be truncated or not a PNG") from e
    if (array.shape[1], array.shape[0]) != tuple(expected_wh):
        raise DataError(f"{path}: image is {array.shape[1]}x{array.shape[0]} (w x h), the JSON says "
                        f"{expected_wh[0]}x{expected_wh[1]}")
    return array


def collate_samples(samples: list[dict]) -> dict:
    """Batch :class:`SubjectDataset` items: tensors stacked, cameras batched, ints as tensors."""
    out = {}
    for key, first in samples[0].items():
        values = [s[key] for s in samples]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, Camera):
            out[key] = Camera.stack(values)
        elif isinstance(first, dict):
            out[key] = {k: torch.stack([v[k] for v in values]) for k in first}
        else:
            out[key] = torch.as_tensor(values)
    return out


def to_device(batch: dict, device: torch.device) -> dict:
    """A collated batch with its tensors, cameras and nested dicts on ``device`` (asynchronously
    from pinned memory)."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        elif isinstance(value, Camera):
            out[key] = value.to(device=device)
        elif isinstance(value, dict):
            out[key] = to_device(value, device)
        else:
            out[key] = value
    return out
