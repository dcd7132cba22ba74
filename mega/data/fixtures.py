"""Small subjects in the exact on-disk layout, for tests and benchmarks.

Images are flat colours with a disc in the middle (fast to write, cheap to check); every file
of the real layout is there, MeGA's extras included. For a subject that looks like a head, use
the synthetic-subject generator instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mega.data.rig import nersemble_like_rig, rig_serials
from mega.data.union_writer import UnionWriter


def write_fixture_subject(parent: str | Path, n_sequences: int = 3, n_timesteps: int = 2, n_cameras: int = 16,
                          width: int = 22, height: int = 32, extras: bool = True, subject: str = "999",
                          seed: int = 0, textured: bool = False) -> Path:
    """Write a subject and return its UNION folder. The last sequence is the test sequence.

    Pixel values encode (timestep, camera) so tests can check the reader returns the right
    image: red = global timestep % 256, green = camera index * 16. ``textured`` adds per-pixel
    noise so that PNG sizes and decode times resemble photographs (for benchmarks).
    """
    rng = np.random.default_rng(seed)
    cameras = nersemble_like_rig(width, height, n_cameras)
    writer = UnionWriter(Path(parent), subject, cameras, rig_serials(n_cameras))
    sequences = [f"EXP-{i + 1}" for i in range(n_sequences)]
    yy, xx = np.mgrid[:height, :width]
    disc = (xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (min(width, height) / 3) ** 2
    global_t = 0
    for sequence in sequences:
        for t in range(n_timesteps):
            params = {"expr": rng.normal(size=100) * 0.1, "jaw_pose": np.array([0.1 * t, 0, 0]),
                      "shape": np.linspace(-1, 1, 300), "translation": rng.normal(size=3) * 0.01}
            writer.write_flame(sequence, t, params)
            for cam in range(n_cameras):
                image = np.full((height, width, 3), 255, np.uint8)
                image[disc] = (global_t % 256, cam * 16 % 256, 128)
                if textured:
                    noise = rng.integers(0, 24, size=image.shape, dtype=np.uint8)
                    image = np.where(disc[..., None], image, image - noise)
                mask = (disc * 255).astype(np.uint8)
                parsing = depth = None
                if extras:
                    parsing = np.where(disc, 1, 0).astype(np.uint8)
                    parsing[:height // 4][disc[:height // 4]] = 13  # hair on top
                    depth = np.where(disc, 1.0 + 0.001 * cam, 0.0).astype(np.float32)
                writer.write_frame(sequence, t, cam, image, mask, parsing, depth)
            global_t += 1
    canonical = {"jaw_pose": np.array([0.3, 0.0, 0.0]), "shape": np.linspace(-1, 1, 300)}
    return writer.finish(sequences, sequences[-1:], canonical)
