"""A real subject as training reads it, without copying its images: an overlay of its UNION
folder in which the preprocessing outputs stand where MeGA's reader expects its extras.

Layout of ``out_root`` (every original file a symlink, absolute):

    <sequence>/images, fg_masks, flame_param, ...   → the original sequence folder's entries
    <sequence>/parsing                              → <parsing_dir>/<sequence> (when given)
    <sequence>/depths                               → <depth_dir>/<sequence>   (when given)
    <UNION>/transforms_*.json, ...                  → the original UNION folder's files
    <UNION>/transforms_onef.json                    written when the subject has none: every
                                                    train camera at one timestep (the canonical-
                                                    hair stage's split)

The JSON files' relative paths (``../<sequence>/images/...``) then resolve inside the overlay.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mega.atomic import write_json
from mega.data.json_file import read_json
from mega.errors import DataError

EXTRA_FOLDERS = ("parsing", "depths")


def sequence_names(union: Path) -> list[str]:
    """The sequence folders the subject's splits read from, in the order first met."""
    names: dict[str, None] = {}
    for split in ("train", "val", "test"):
        meta = read_json(union / f"transforms_{split}.json")
        for frame in meta.get("frames", []):
            names.setdefault(Path(os.path.normpath(frame["file_path"])).parent.parent.name, None)
    return list(names)


def onef_split(union: Path, timestep: int | None) -> dict:
    """transforms_onef.json's content: the train split's frames at ``timestep`` (default: the
    first train timestep, the first frame of the first sequence)."""
    meta = read_json(union / "transforms_train.json")
    frames = meta["frames"]
    chosen = min(f["timestep_index"] for f in frames) if timestep is None else timestep
    kept = [f for f in frames if f["timestep_index"] == chosen]
    if not kept:
        raise DataError(f"{union / 'transforms_train.json'}: no frame has timestep_index {chosen} "
                        f"(preprocess.onef_timestep)")
    out = {k: v for k, v in meta.items() if k != "frames"}
    out["frames"] = kept
    out["timestep_indices"] = [chosen]
    return out


def build_overlay(union: str | Path, out_root: str | Path, parsing_dir: str | Path | None = None,
                  depth_dir: str | Path | None = None, onef_timestep: int | None = None) -> Path:
    """Build the overlay (replacing an earlier one) and return its UNION folder."""
    union, out_root = Path(union).resolve(), Path(out_root)
    if not union.is_dir():
        raise DataError(f"{union}: the subject's UNION folder is missing")
    replacements = {"parsing": parsing_dir, "depths": depth_dir}
    for folder, root in replacements.items():
        if root is not None and not Path(root).is_dir():
            raise DataError(f"{root}: the {folder} folder given does not exist (expected one folder per sequence "
                            f"inside it)")
    building = out_root.with_name(out_root.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    for sequence in sequence_names(union):
        source = union.parent / sequence
        if not source.is_dir():
            raise DataError(f"{source}: sequence folder missing (named by the frames of {union})")
        target = building / sequence
        target.mkdir()
        for entry in source.iterdir():
            if entry.name in EXTRA_FOLDERS and replacements[entry.name] is not None:
                continue
            (target / entry.name).symlink_to(entry.resolve())
        for folder, root in replacements.items():
            if root is not None:
                made = Path(root).resolve() / sequence
                if not made.is_dir():
                    raise DataError(f"{made}: the {folder} of sequence {sequence} were not made")
                (target / folder).symlink_to(made)
    target = building / union.name
    target.mkdir()
    for entry in union.iterdir():
        (target / entry.name).symlink_to(entry.resolve())
    if not (union / "transforms_onef.json").is_file():
        write_json(target / "transforms_onef.json", onef_split(union, onef_timestep))
    write_json(building / "overlay.json", {"union": str(union), "parsing": str(parsing_dir or ""),
                                           "depths": str(depth_dir or ""), "onef_made": not (union / "transforms_onef.json").is_file()})
    shutil.rmtree(out_root, ignore_errors=True)
    building.rename(out_root)
    return out_root / union.name


def has_extra(union: str | Path, folder: str) -> bool:
    """Whether every sequence folder of the subject has ``folder`` (parsing or depths)."""
    union = Path(union)
    try:
        return all((union.parent / s / folder).is_dir() for s in sequence_names(union))
    except (DataError, KeyError, TypeError):
        return False
