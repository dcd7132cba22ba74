"""A contact sheet of a head model: views × expressions, and its UV layout.

Drawn with matplotlib polygons (painter's algorithm, Lambert shading, back faces culled), so it
needs no renderer and runs anywhere.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from mega.atomic import atomic_path  # noqa: E402
from mega.flame.geometry import face_normals  # noqa: E402
from mega.flame.head_model import REGION_NAMES, HeadModel  # noqa: E402

_REGION_COLOURS = {
    "other": (0.75, 0.75, 0.75), "teeth": (0.95, 0.95, 0.85), "eyeballs": (0.35, 0.55, 0.9),
    "face": (0.93, 0.76, 0.65), "scalp": (0.55, 0.4, 0.3), "neck": (0.85, 0.68, 0.6),
}


def _rotation_y(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def draw_mesh(ax, vertices: np.ndarray, faces: np.ndarray, face_colours: np.ndarray, yaw_rad: float) -> None:
    """Orthographic view from +z after turning the mesh by ``yaw_rad`` about +y."""
    v = vertices @ _rotation_y(yaw_rad).T
    tri = v[faces]
    normals = face_normals(v, faces)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    visible = normals[:, 2] > 0
    order = np.argsort(tri[visible, :, 2].mean(1))  # far to near
    light = np.array([0.3, 0.4, 1.0]) / np.linalg.norm([0.3, 0.4, 1.0])
    shade = 0.25 + 0.75 * np.clip(normals[visible] @ light, 0, 1)
    colours = face_colours[visible] * shade[:, None]
    polys = tri[visible][order][:, :, :2]
    ax.add_collection(PolyCollection(polys, facecolors=colours[order], edgecolors="none", antialiased=False))
    ax.set_xlim(-0.13, 0.13)
    ax.set_ylim(-0.18, 0.14)
    ax.set_aspect("equal")
    ax.axis("off")


def write_head_model_figure(path: str | Path, head: HeadModel, posed: dict[str, np.ndarray], title: str) -> None:
    """Write a PNG: one row per entry of ``posed`` (name → vertices [V,3]), three views each,
    plus the UV layout coloured by region."""
    labels = head.region_labels()
    face_label = labels[head.faces].max(axis=1)  # a face takes its highest-priority corner's region
    colours = np.array([_REGION_COLOURS[REGION_NAMES[i]] for i in face_label])
    yaws = (0.0, np.deg2rad(35), np.deg2rad(90))
    n_rows = len(posed)
    fig, axes = plt.subplots(n_rows, 4, figsize=(10, 2.6 * n_rows), squeeze=False)
    for r, (name, verts) in enumerate(posed.items()):
        for c, yaw in enumerate(yaws):
            draw_mesh(axes[r, c], verts, head.faces, colours, yaw)
        axes[r, 0].set_title(name, loc="left", fontsize=9)
        axes[r, 3].axis("off")
    uv_ax = axes[0, 3]
    uv_ax.axis("on")
    uv_polys = head.uvs[head.faces_uv]
    uv_ax.add_collection(PolyCollection(uv_polys, facecolors=colours, edgecolors=(0, 0, 0, 0.15), linewidths=0.1))
    uv_ax.set_xlim(0, 1)
    uv_ax.set_ylim(0, 1)
    uv_ax.set_aspect("equal")
    uv_ax.set_title("UV layout", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
