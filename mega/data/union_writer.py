"""Writes a subject in GaussianAvatars' exact on-disk layout (per-sequence folders plus the
UNION folder), with MeGA's extras. The synthetic subject and the test fixtures use it, so the
one reader serves real and generated data alike.

The split follows VHAP's combine script: the test sequences keep all cameras; the others are
split into train (all cameras but one) and val (camera 8, NeRSemble's frontal one, or the last
camera when there is no camera 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mega.atomic import atomic_path, write_json, write_text
from mega.data.camera import Camera, opencv_to_opengl_c2w
from mega.data.depth import write_depth
from mega.data.flame_params import write_flame_params

VAL_CAMERA = 8


def write_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(array)).save(tmp, format="PNG", compress_level=1)


@dataclass
class _Frame:
    sequence: str
    timestep: int
    camera_index: int


@dataclass
class UnionWriter:
    """Collects frames sequence by sequence, then writes the JSON files.

    parent:   folder that receives the sequence folders and the UNION folder
    subject:  subject id (e.g. ``"306"``)
    cameras:  the rig, index = camera_index; serials: NeRSemble-style camera ids
    """

    parent: Path
    subject: str
    cameras: list[Camera]
    serials: list[str]
    suffix: str = "v16_synthetic"
    n_static_offset_vertices: int = 5143
    _frames: list[_Frame] = field(default_factory=list)
    _timesteps: dict[str, set[int]] = field(default_factory=dict)

    def sequence_dir(self, sequence: str) -> Path:
        return Path(self.parent) / f"{self.subject}_{sequence}_{self.suffix}"

    @property
    def union_dir(self) -> Path:
        return Path(self.parent) / f"UNION10_{self.subject}_{self.suffix}"

    def write_flame(self, sequence: str, timestep: int, params: dict[str, np.ndarray]) -> None:
        path = self.sequence_dir(sequence) / "flame_param" / f"{timestep:05d}.npz"
        write_flame_params(path, params, self.n_static_offset_vertices)
        self._timesteps.setdefault(sequence, set()).add(timestep)

    def write_frame(self, sequence: str, timestep: int, camera_index: int, image: np.ndarray,
                    fg_mask: np.ndarray, parsing: np.ndarray | None = None, depth_m: np.ndarray | None = None) -> None:
        """image uint8 [H, W, 3]; fg_mask uint8 [H, W]; parsing uint8 [H, W]; depth_m float [H, W]."""
        seq_dir = self.sequence_dir(sequence)
        stem = f"{timestep:05d}_{camera_index:02d}"
        write_png(seq_dir / "images" / f"{stem}.png", image)
        write_png(seq_dir / "fg_masks" / f"{stem}.png", fg_mask)
        if parsing is not None:
            write_png(seq_dir / "parsing" / f"{stem}_labels.png", parsing.astype(np.uint8))
        if depth_m is not None:
            write_depth(seq_dir / "depths" / f"{stem}.npz", depth_m)
        self._frames.append(_Frame(sequence, timestep, camera_index))

    def _camera_fields(self, camera_index: int) -> dict:
        cam = self.cameras[camera_index]
        K = cam.intrinsics.double().numpy()
        c2w = opencv_to_opengl_c2w(np.linalg.inv(cam.world_to_camera.double().numpy()))
        return {
            "cx": float(K[0, 2]), "cy": float(K[1, 2]), "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]),
            "h": cam.height, "w": cam.width,
            "camera_angle_x": 2 * math.atan(cam.width / (2 * K[0, 0])),
            "camera_angle_y": 2 * math.atan(cam.height / (2 * K[1, 1])),
            "transform_matrix": c2w.tolist(),
        }

    def _sequence_db(self, sequence: str) -> dict:
        """A per-sequence ``transforms.json`` as VHAP exports it."""
        timesteps = sorted(self._timesteps.get(sequence, set()))
        frames = []
        for fr in sorted((f for f in self._frames if f.sequence == sequence), key=lambda f: (f.timestep, f.camera_index)):
            stem = f"{fr.timestep:05d}_{fr.camera_index:02d}"
            frames.append({
                "timestep_index": timesteps.index(fr.timestep),
                "timestep_index_original": fr.timestep,
                "timestep_id": f"frame_{fr.timestep:05d}",
                "camera_index": fr.camera_index,
                "camera_id": self.serials[fr.camera_index],
                **self._camera_fields(fr.camera_index),
                "file_path": f"images/{stem}.png",
                "fg_mask_path": f"fg_masks/{stem}.png",
                "flame_param_path": f"flame_param/{fr.timestep:05d}.npz",
            })
        shared = {k: v for k, v in self._camera_fields(0).items() if k != "transform_matrix"}
        return {**shared, "frames": frames, "timestep_indices": list(range(len(timesteps))),
                "camera_indices": sorted({f.camera_index for f in self._frames if f.sequence == sequence})}

    def finish(self, sequences: list[str], test_sequences: list[str], canonical: dict[str, np.ndarray],
               onef_timestep: int | None = None) -> Path:
        """Write per-sequence JSONs, the canonical parameters and the UNION folder; return it.

        ``onef_timestep`` (a global train timestep) also writes ``transforms_onef.json``: that one
        timestep seen by all train cameras, the split MeGA's canonical-hair stage trains on.
        """
        union = self.union_dir
        union.mkdir(parents=True, exist_ok=True)
        offset = 0
        combined: dict[str, dict] = {"trainval": None, "test": None}
        for sequence in sequences:
            db = self._sequence_db(sequence)
            seq_dir = self.sequence_dir(sequence)
            write_json(seq_dir / "transforms.json", db, indent=4)
            write_flame_params(seq_dir / "canonical_flame_param.npz", canonical, self.n_static_offset_vertices)
            # As VHAP's combine step: global timesteps, paths relative to the UNION folder.
            for frame in db["frames"]:
                frame.pop("timestep_index_original")
                frame.pop("timestep_id")
                frame["timestep_index"] += offset
                for key in ("file_path", "fg_mask_path", "flame_param_path"):
                    frame[key] = f"../{seq_dir.name}/{frame[key]}"
            db["timestep_indices"] = [t + offset for t in db["timestep_indices"]]
            offset += len(db["timestep_indices"])
            group = "test" if sequence in test_sequences else "trainval"
            if combined[group] is None:
                combined[group] = db
            else:
                combined[group]["frames"] += db["frames"]
                combined[group]["timestep_indices"] += db["timestep_indices"]
                combined[group]["camera_indices"] = sorted(set(combined[group]["camera_indices"]) | set(db["camera_indices"]))

        trainval = combined["trainval"]
        cams = trainval["camera_indices"]
        val_cams = [VAL_CAMERA] if VAL_CAMERA in cams else cams[-1:]
        base = {k: v for k, v in trainval.items() if k not in ("frames", "camera_indices")}
        train = {**base, "camera_indices": [c for c in cams if c not in val_cams],
                 "frames": [f for f in trainval["frames"] if f["camera_index"] not in val_cams]}
        val = {**base, "camera_indices": val_cams,
               "frames": [f for f in trainval["frames"] if f["camera_index"] in val_cams]}
        write_json(union / "transforms_train.json", train, indent=4)
        write_json(union / "transforms_val.json", val, indent=4)
        if onef_timestep is not None:
            onef_frames = [f for f in train["frames"] if f["timestep_index"] == onef_timestep]
            if not onef_frames:
                raise ValueError(f"onef_timestep {onef_timestep} is not a train timestep")
            write_json(union / "transforms_onef.json",
                       {**base, "camera_indices": train["camera_indices"], "timestep_indices": [onef_timestep],
                        "frames": onef_frames}, indent=4)
        write_flame_params(union / "canonical_flame_param.npz", canonical, self.n_static_offset_vertices)
        write_text(union / "sequences_trainval.txt",
                   "".join(self.sequence_dir(s).name + "\n" for s in sequences if s not in test_sequences))
        if combined["test"] is not None:
            test = combined["test"]
            test["timestep_indices"] = sorted(test["timestep_indices"])
            write_json(union / "transforms_test.json", test, indent=4)
            write_text(union / "sequences_test.txt",
                       "".join(self.sequence_dir(s).name + "\n" for s in sequences if s in test_sequences))
        return union
