"""Checks a subject folder against GaussianAvatars' layout and NeRSemble's split, field by field.

``validate_union(union)`` returns a list of problems (empty = valid), each naming the file and
the field. Used on every synthesized subject, and by the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mega.data.flame_params import FLAME_PARAM_SIZES
from mega.data.rig import FRONTAL_CAMERA
from mega.errors import shape_mismatch

TOP_LEVEL_FIELDS = ("frames", "cx", "cy", "fl_x", "fl_y", "h", "w", "camera_angle_x", "camera_angle_y",
                    "timestep_indices", "camera_indices")
FRAME_FIELDS = ("timestep_index", "camera_index", "camera_id", "cx", "cy", "fl_x", "fl_y", "h", "w",
                "camera_angle_x", "camera_angle_y", "transform_matrix", "file_path", "fg_mask_path",
                "flame_param_path")
# The fields the split check and the camera check read from every frame.
SPLIT_CHECK_FIELDS = frozenset({"timestep_index", "camera_index", "file_path"})
CAMERA_CHECK_FIELDS = frozenset({"camera_index", "transform_matrix"})
UNION_FILES = ("transforms_train.json", "transforms_val.json", "transforms_test.json", "canonical_flame_param.npz",
               "sequences_trainval.txt", "sequences_test.txt")
# How far (metres) a camera's optical axis may pass from the head (the world origin).
LOOK_AT_TOLERANCE_M = 0.1


def _flame_problems(path: Path) -> list[str]:
    if not path.is_file():
        return [f"{path}: missing"]
    problems = []
    try:
        npz = np.load(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one problem, named
        return [f"{path}: not a readable .npz ({type(e).__name__}); expected GaussianAvatars' FLAME parameters "
                f"(keys {', '.join(FLAME_PARAM_SIZES)}, static_offset)"]
    with npz:
        for key, n in FLAME_PARAM_SIZES.items():
            expected = (n,) if key == "shape" else (1, n)
            if key not in npz:
                problems.append(f"{path}: key '{key}' missing")
            elif npz[key].shape != expected:
                problems.append(shape_mismatch(path, key, npz[key].shape, str(expected)))
        if "static_offset" not in npz or npz["static_offset"].ndim != 3 or npz["static_offset"].shape[::2] != (1, 3):
            problems.append(f"{path}: 'static_offset' must be [1, V, 3]")
    return problems


def validate_union(union: str | Path, extras: bool = True, check_all_flame_files: bool = True) -> list[str]:
    union = Path(union)
    problems = [f"{union / name}: missing" for name in UNION_FILES if not (union / name).is_file()]
    if problems:
        return problems
    splits, problems = _read_splits(union)
    # A split file or a frame that the split check or the camera check cannot read (not an object,
    # its fields missing, a matrix of non-numbers) is reported once here; that check then waits
    # until the file is mended.
    split_check_blocked = camera_check_blocked = bool(problems)
    seen_flame: set[Path] = set()
    for split, db in splits.items():
        where = union / f"transforms_{split}.json"
        problems += [f"{where}: top-level field '{k}' missing" for k in TOP_LEVEL_FIELDS if k not in db]
        for i, frame in enumerate(db["frames"]):
            if not isinstance(frame, dict):
                problems.append(f"{where}: frames[{i}] is a {type(frame).__name__}, expected an object")
                split_check_blocked = camera_check_blocked = True
                continue
            missing = [k for k in FRAME_FIELDS if k not in frame]
            if missing:
                problems.append(f"{where}: frames[{i}] lacks {', '.join(missing)}")
                split_check_blocked |= not SPLIT_CHECK_FIELDS.isdisjoint(missing)
                camera_check_blocked |= not CAMERA_CHECK_FIELDS.isdisjoint(missing)
                continue
            try:
                matrix_shape = np.asarray(frame["transform_matrix"], dtype=float).shape
            except (TypeError, ValueError):
                matrix_shape = None
            if matrix_shape != (4, 4):
                problems.append(f"{where}: frames[{i}].transform_matrix is not 4×4 numbers")
                camera_check_blocked = True
            for key in ("file_path", "fg_mask_path", "flame_param_path"):
                if not (union / str(frame[key])).is_file():
                    problems.append(f"{where}: frames[{i}].{key} = {frame[key]} does not exist")
            flame = (union / str(frame["flame_param_path"])).resolve()
            if check_all_flame_files and flame not in seen_flame:
                seen_flame.add(flame)
                problems += _flame_problems(flame)
            if extras:
                image = union / str(frame["file_path"])
                stem = image.stem
                for folder, name in (("parsing", f"{stem}_labels.png"), ("depths", f"{stem}.npz")):
                    if not (image.parent.parent / folder / name).is_file():
                        problems.append(f"{where}: frames[{i}] has no {folder}/{name}")
    problems += _flame_problems(union / "canonical_flame_param.npz")
    if not split_check_blocked:
        problems += _split_problems(union, splits)
    if not camera_check_blocked:
        problems += _camera_problems(union, splits)
    return problems


def _read_splits(union: Path) -> tuple[dict[str, dict], list[str]]:
    """The train, val and test splits' JSON that holds a list of frames, and a problem per one that does not."""
    splits, problems = {}, []
    for split in ("train", "val", "test"):
        where = union / f"transforms_{split}.json"
        try:
            db = json.loads(where.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.append(f"{where}: not readable JSON ({e})")
            continue
        if not isinstance(db, dict) or not isinstance(db.get("frames"), list):
            problems.append(f"{where}: expected a JSON object with a list 'frames'")
            continue
        splits[split] = db
    return splits, problems


def _sequence_of(frame: dict) -> str:
    return Path(str(frame["file_path"])).parent.parent.name


def _split_problems(union: Path, splits: dict) -> list[str]:
    problems = []
    train, val, test = (splits[s]["frames"] for s in ("train", "val", "test"))
    all_cameras = {f["camera_index"] for f in train + val + test}
    if any(f["camera_index"] == FRONTAL_CAMERA for f in train):
        problems.append(f"{union}/transforms_train.json: holds camera {FRONTAL_CAMERA}, the val camera")
    if {f["camera_index"] for f in val} != {FRONTAL_CAMERA}:
        problems.append(f"{union}/transforms_val.json: must hold camera {FRONTAL_CAMERA} only")
    if {f["timestep_index"] for f in val} != {f["timestep_index"] for f in train}:
        problems.append(f"{union}/transforms_val.json: timesteps differ from the train split's")
    if {f["camera_index"] for f in test} != all_cameras:
        problems.append(f"{union}/transforms_test.json: must hold all {len(all_cameras)} cameras")
    trainval_seqs = {_sequence_of(f) for f in train}
    test_seqs = {_sequence_of(f) for f in test}
    if trainval_seqs & test_seqs:
        problems.append(f"{union}: sequences {sorted(trainval_seqs & test_seqs)} are in both trainval and test")
    listed = [ln.strip() for ln in (union / "sequences_trainval.txt").read_text().splitlines() if ln.strip()]
    if set(listed) != trainval_seqs:
        problems.append(f"{union}/sequences_trainval.txt: lists {sorted(listed)}, frames use {sorted(trainval_seqs)}")
    listed = [ln.strip() for ln in (union / "sequences_test.txt").read_text().splitlines() if ln.strip()]
    if set(listed) != test_seqs:
        problems.append(f"{union}/sequences_test.txt: lists {sorted(listed)}, frames use {sorted(test_seqs)}")
    onef = union / "transforms_onef.json"
    if onef.is_file():
        try:
            frames = json.loads(onef.read_text())["frames"]
            timesteps = {f["timestep_index"] for f in frames}
            cameras = {f["camera_index"] for f in frames}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, LookupError, TypeError) as e:
            problems.append(f"{onef}: not readable JSON with frames of 'timestep_index' and 'camera_index' "
                            f"({type(e).__name__}: {e})")
            return problems
        if len(timesteps) != 1:
            problems.append(f"{onef}: must hold exactly one timestep")
        if cameras != {f["camera_index"] for f in train}:
            problems.append(f"{onef}: must hold every train camera")
    return problems


def _camera_problems(union: Path, splits: dict) -> list[str]:
    """Every camera's optical axis passes near the head, and camera 8 is the frontal one."""
    problems = []
    cameras = {}
    for db in splits.values():
        for f in db["frames"]:
            cameras.setdefault(f["camera_index"], np.asarray(f["transform_matrix"], dtype=float))
    frontness = {}
    for index, c2w in sorted(cameras.items()):
        centre = c2w[:3, 3]
        forward = -c2w[:3, 2]  # OpenGL cameras look down their −z axis
        along = -centre @ forward
        miss = np.linalg.norm(centre + along * forward)
        if along <= 0 or miss > LOOK_AT_TOLERANCE_M:
            problems.append(f"{union}: camera {index} does not look at the head (axis passes {miss:.3f} m from it)")
        frontness[index] = centre[2] / np.linalg.norm(centre)  # the face looks along +z
    if frontness and max(frontness, key=frontness.get) != FRONTAL_CAMERA:
        problems.append(f"{union}: camera {FRONTAL_CAMERA} is not the frontal camera "
                        f"(camera {max(frontness, key=frontness.get)} is)")
    return problems
