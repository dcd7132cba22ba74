"""Contact sheet of a subject in the GaussianAvatars layout: every camera at one timestep, and
the frontal camera at one timestep of every sequence with its parsing labels and depth map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mega.atomic import atomic_path
from mega.data.depth import read_depth
from mega.data.parsing import N_LABELS
from mega.data.rig import FRONTAL_CAMERA

# A fixed colour per CelebAMask-HQ label (0 = background stays white).
_PALETTE = np.array([[255, 255, 255]] + [
    [int(127 + 127 * np.sin(2.4 * k)), int(127 + 127 * np.sin(2.4 * k + 2.1)), int(127 + 127 * np.sin(2.4 * k + 4.2))]
    for k in range(1, N_LABELS)
], dtype=np.uint8)


def _frames(union: Path) -> list[dict]:
    frames = []
    for split in ("train", "val", "test"):
        path = union / f"transforms_{split}.json"
        if path.exists():
            frames += json.loads(path.read_text())["frames"]
    return frames


def _load(union: Path, relative: str) -> np.ndarray:
    with Image.open(union / relative) as image:
        return np.array(image.convert("RGB"))


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    image = Image.fromarray(tile)
    ImageDraw.Draw(image).text((2, 1), text, fill=(0, 0, 0))
    return np.array(image)


def write_contact_sheet(union: str | Path, out: str | Path) -> Path:
    """Write the sheet as a PNG; rows: all cameras at the first timestep; the frontal camera at
    the middle timestep of each sequence; its parsing labels; its depth (near = dark)."""
    union = Path(union)
    frames = _frames(union)
    if not frames:
        raise FileNotFoundError(f"{union}: no transforms_*.json with frames")
    first_t = min(f["timestep_index"] for f in frames)
    by_camera = {f["camera_index"]: f for f in frames if f["timestep_index"] == first_t}
    row_cameras = [_label(_load(union, by_camera[c]["file_path"]), f"cam {c}") for c in sorted(by_camera)]

    frontal = [f for f in frames if f["camera_index"] == FRONTAL_CAMERA] or [f for f in frames if f["camera_index"] == 0]
    sequences: dict[str, list[dict]] = {}
    for f in sorted(frontal, key=lambda f: f["timestep_index"]):
        sequences.setdefault(f["file_path"].split("/")[1], []).append(f)
    picks = [items[len(items) // 2] for items in sequences.values()]
    row_expr, row_parsing, row_depth = [], [], []
    for f in picks:
        sequence_dir = union / Path(f["file_path"]).parent.parent
        stem = Path(f["file_path"]).stem
        name = sequence_dir.name.split("_")[1] if "_" in sequence_dir.name else sequence_dir.name
        row_expr.append(_label(_load(union, f["file_path"]), name))
        parsing_path = sequence_dir / "parsing" / f"{stem}_labels.png"
        if parsing_path.exists():
            with Image.open(parsing_path) as image:
                row_parsing.append(_PALETTE[np.clip(np.array(image), 0, N_LABELS - 1)])
        depth_path = sequence_dir / "depths" / f"{stem}.npz"
        if depth_path.exists():
            depth = read_depth(depth_path)
            valid = depth > 0
            shade = np.full(depth.shape, 255, np.uint8)
            if valid.any():
                lo, hi = depth[valid].min(), depth[valid].max()
                shade[valid] = (40 + 180 * (depth[valid] - lo) / max(hi - lo, 1e-6)).astype(np.uint8)
            row_depth.append(np.repeat(shade[..., None], 3, axis=2))

    rows = [r for r in (row_cameras, row_expr, row_parsing, row_depth) if r]
    width = max(len(r) for r in rows) * rows[0][0].shape[1]
    stacked = []
    for r in rows:
        line = np.concatenate(r, axis=1)
        pad = np.full((line.shape[0], width - line.shape[1], 3), 255, np.uint8)
        stacked.append(np.concatenate([line, pad], axis=1))
    sheet = np.concatenate(stacked, axis=0)
    out = Path(out)
    with atomic_path(out) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return out
