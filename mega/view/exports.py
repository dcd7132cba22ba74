"""``mega view-export``: a quick look at a run's exports (``mega export``) in the browser, with no
model on the server: the textured face OBJ as a mesh and the hair PLYs as Gaussian splats, both
drawn by the page itself (viser's three.js scene), one toggle per file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import trimesh

from mega.errors import DataError
from mega.hair.ply import read_gaussian_ply
from mega.render.gaussians import quaternion_to_matrix
from mega.render.sh import SH_C0

log = logging.getLogger(__name__)


def splats_of(path: str | Path) -> dict[str, np.ndarray]:
    """A 3DGS PLY as viser's splat arrays: centers [N, 3], covariances [N, 3, 3] (R·S²·Rᵀ),
    rgbs [N, 3] (the degree-0 colour, as 3DGS renders it without view dependence), opacities
    [N, 1]."""
    gaussians = read_gaussian_ply(path)
    rotation = quaternion_to_matrix(gaussians["quats"])
    scales = torch.exp(gaussians["log_scales"])
    covariances = rotation @ torch.diag_embed(scales**2) @ rotation.transpose(1, 2)
    return {"centers": gaussians["means"].numpy(), "covariances": covariances.numpy(),
            "rgbs": (SH_C0 * gaussians["sh"][:, 0] + 0.5).clamp(0, 1).numpy(),
            "opacities": torch.sigmoid(gaussians["opacity_logits"])[:, None].numpy()}


def export_files(export_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """(the face OBJs, the hair PLYs) of an export folder; an error naming the folder when it
    holds neither."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise DataError(f"{export_dir}: not a folder; write one with `mega export RUN_DIR --out {export_dir}`")
    meshes, plys = sorted(export_dir.glob("*.obj")), sorted(export_dir.glob("*.ply"))
    if not meshes and not plys:
        raise DataError(f"{export_dir}: no .obj or .ply files; write them with `mega export RUN_DIR --out "
                        f"{export_dir}`")
    return meshes, plys


def missing_textures(obj_path: Path) -> list[Path]:
    """The texture images an OBJ's material files name (``mtllib`` → ``map_Kd``) that do not exist."""
    missing = []
    try:
        lines = obj_path.read_text(errors="replace").splitlines()
    except OSError:
        return missing
    for line in lines:
        if line.startswith("mtllib "):
            material = obj_path.parent / line.split(maxsplit=1)[1].strip()
            if not material.is_file():
                missing.append(material)
                continue
            for entry in material.read_text(errors="replace").splitlines():
                if entry.strip().startswith("map_Kd "):
                    texture = material.parent / entry.strip().split(maxsplit=1)[1]
                    if not texture.is_file():
                        missing.append(texture)
    return missing


def load_mesh(path: Path) -> trimesh.Trimesh:
    """A face OBJ as trimesh reads it, checked: an error naming the file when it is no triangle
    mesh with finite vertices (a file cut short, another format)."""
    try:
        mesh = trimesh.load(path, process=False, force="mesh")
    except Exception as error:  # trimesh raises many kinds (ValueError, IndexError, KeyError, ...)
        raise DataError(f"{path}: not a readable OBJ mesh ({type(error).__name__}: {error}); write it again "
                        f"with `mega export`") from None
    for texture in missing_textures(path):
        log.warning("%s: its texture %s is missing; the mesh is shown without it", path, texture)
    vertices = np.asarray(getattr(mesh, "vertices", np.zeros((0, 3))))
    if len(vertices) == 0 or len(getattr(mesh, "faces", ())) == 0 or not np.isfinite(vertices).all():
        raise DataError(f"{path}: expected a triangle mesh with finite vertices, found {len(vertices)} vertices "
                        f"and {len(getattr(mesh, 'faces', ()))} faces; write it again with `mega export`")
    return mesh


class ExportViewer:
    """A viser server showing the files of one export folder; ``stop()`` ends it."""

    def __init__(self, export_dir: str | Path, host: str = "127.0.0.1", port: int = 8080):
        import viser

        from mega.view.server import check_port_free

        meshes, plys = export_files(export_dir)
        # Every file is read and checked before the server starts: a bad one is one clear error.
        loaded_meshes = {path: load_mesh(path) for path in meshes}
        loaded_splats = {path: splats_of(path) for path in plys}
        check_port_free(host, port)
        self.server = viser.ViserServer(host=host, port=port, label="mega exports", verbose=False)
        self.port = self.server.get_port()
        scene = self.server.scene
        scene.set_up_direction("+y")  # FLAME's canonical frame: y up, the face towards +z
        self.nodes = {}
        centres = []
        for path, mesh in loaded_meshes.items():
            self.nodes[path.name] = scene.add_mesh_trimesh(f"/{path.stem}", mesh)
            centres.append(np.asarray(mesh.vertices).mean(0))
        for path, splats in loaded_splats.items():
            if len(splats["centers"]) == 0:
                log.info("%s: no Gaussian (a hairless avatar's hair), nothing to show", path)
                continue
            self.nodes[path.name] = scene.add_gaussian_splats(f"/{path.stem}", **splats)
            centres.append(splats["centers"].mean(0))
        centre = np.mean(centres, 0) if centres else np.zeros(3)
        self.server.initial_camera.look_at = tuple(centre)
        self.server.initial_camera.position = tuple(centre + np.array([0.0, 0.05, 0.6]))
        self.server.initial_camera.up = (0.0, 1.0, 0.0)
        for name, node in self.nodes.items():
            toggle = self.server.gui.add_checkbox(name, True)
            toggle.on_update(lambda event, node=node: setattr(node, "visible", bool(event.target.value)))

    def stop(self) -> None:
        self.server.stop()


def serve_exports(export_dir: str | Path, host: str, port: int) -> None:
    """Run the export viewer until interrupted (Ctrl-C)."""
    from mega.view.server import run_until_interrupted

    run_until_interrupted(ExportViewer(export_dir, host, port), "mega view-export", host)
