"""Export of a trained face as a textured mesh: ``face.obj`` + ``face.mtl`` + ``face_diffuse.png``.

The geometry is the refined (displaced) mesh of one frame, or of the canonical head (zero
expression and pose, the subject's shape). The texture is the diffuse neural texture decoded to
RGB by the model's own pixel decoder, texel by texel: what ``rgb_diffuse`` shows, without the
view- and expression-dependent parts, which an OBJ cannot hold.

UV conventions: inside the package ``mesh.uvs`` has v down (row 0 of a texture at v = 0); the
OBJ stores v up, as every OBJ reader expects, so the PNG is written with its row 0 at the top
and each ``vt`` gets v_obj = 1 − v.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mega.atomic import atomic_path, write_text
from mega.errors import DataError
from mega.face.frames import FrameParameters
from mega.face.model import NeuralFace
from mega.flame.model import POSE_PARTS

DEFAULT_TEXEL_CHUNK = 1 << 16
"""Texels decoded per batch: a 1024² texture in 16 passes of a few megabytes each."""

OBJ_NAME, MTL_NAME, PNG_NAME = "face.obj", "face.mtl", "face_diffuse.png"


def texel_centre_uvs(size: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """[size², 2] UVs of the texel centres in row-major order: texel (i, j) at
    ((j + 0.5) / size, (i + 0.5) / size), u along the width and v along the rows, the
    convention of :func:`mega.render.mesh.texture_at`."""
    centres = (torch.arange(size, device=device, dtype=dtype) + 0.5) / size
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=1)


@torch.no_grad()
def diffuse_texture_rgb(model: NeuralFace, chunk: int = DEFAULT_TEXEL_CHUNK) -> Tensor:
    """The diffuse neural texture decoded to RGB, [T, T, 3] in [0, 1], row 0 at v = 0.

    Each texel is decoded as ``NeuralFace.forward`` decodes a pixel for ``rgb_diffuse``: the UV
    encoding of the texel centre concatenated with the texel's features. Bilinear sampling at a
    texel centre returns that texel exactly, so this is ``rgb_diffuse`` at every texel centre.
    """
    features = model.diffuse_texture[0]  # [C, T, T]
    channels, size = features.shape[0], features.shape[-1]
    features = features.permute(1, 2, 0).reshape(-1, channels)  # row-major texels, like the UVs
    uvs = texel_centre_uvs(size, features.device, features.dtype)
    rgb = torch.empty(size * size, 3, device=features.device, dtype=features.dtype)
    for start in range(0, size * size, chunk):
        rows = slice(start, start + chunk)
        code = model.uv_encoding(uvs[rows])
        rgb[rows] = model.pixel_decoder(torch.cat([code, features[rows]], dim=1))
    return rgb.view(size, size, 3)


def flame_parameters(model: NeuralFace, frames: FrameParameters | None,
                     timestep_index: int | None) -> dict[str, Tensor]:
    """The [1, n] FLAME parameters of one frame, or the canonical head's when
    ``timestep_index`` is None: zero expression, pose and translation with the frames' shape
    (the template's shape without frames)."""
    ref = model.diffuse_texture
    if timestep_index is not None:
        if frames is None:
            raise ValueError("a timestep index needs the frames' parameters")
        n = frames.known.shape[0]
        if not 0 <= timestep_index < n or not bool(frames.known[timestep_index]):
            raise DataError(f"no FLAME parameters for timestep index {timestep_index} "
                            f"(the run has {int(frames.known.sum())} of {n} timesteps)")
        index = torch.tensor([timestep_index], device=frames.known.device)
        return {k: v.detach().to(ref.device) for k, v in frames(index).items()}
    if frames is None:
        shape = ref.new_zeros(1, model.mesh.flame.n_shape)
        n_expr = model.mesh.flame.n_expr
    else:
        shape = frames.shape.detach().to(ref.device)
        n_expr = frames.tables["expr"].shape[1]
    out = {name: ref.new_zeros(1, POSE_PARTS[name]) for name in POSE_PARTS}
    out.update(expr=ref.new_zeros(1, n_expr), translation=ref.new_zeros(1, 3), shape=shape)
    return out


def obj_text(vertices: np.ndarray, faces: np.ndarray, uvs_obj: np.ndarray, faces_uv: np.ndarray,
             mtl_name: str = MTL_NAME, material: str = "face") -> str:
    """Wavefront OBJ with per-corner UVs: ``f v/vt`` (1-based).

    vertices [V, 3] metres, faces [F, 3] into vertices, uvs_obj [T, 2] with v up, faces_uv [F, 3] into uvs_obj.
    """
    corners = np.stack([faces + 1, faces_uv + 1], axis=2).reshape(len(faces), 6)
    return "".join([
        f"mtllib {mtl_name}\n",
        "".join(f"v {x:.8g} {y:.8g} {z:.8g}\n" for x, y, z in vertices),
        "".join(f"vt {u:.8g} {v:.8g}\n" for u, v in uvs_obj),
        f"usemtl {material}\n",
        "".join("f {}/{} {}/{} {}/{}\n".format(*c) for c in corners.tolist()),
    ])


def mtl_text(png_name: str = PNG_NAME, material: str = "face") -> str:
    """A Lambertian material whose diffuse colour is the texture (no specular, full opacity)."""
    return (f"newmtl {material}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nNs 1\nd 1\nillum 1\n"
            f"map_Kd {png_name}\n")


def write_png_rgb(path: str | Path, rgb: Tensor) -> Path:
    """[H, W, 3] in [0, 1] → 8-bit PNG (rounded), written atomically; row 0 at the top."""
    array = (rgb.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path


@torch.no_grad()
def export_face_mesh(model: NeuralFace, frames: FrameParameters | None, timestep_index: int | None,
                     out_dir: str | Path) -> dict[str, Path]:
    """Write ``face.obj``, ``face.mtl`` and ``face_diffuse.png`` into ``out_dir``.

    The vertices are ``model.geometry`` (FLAME + UV displacement) in metres, in world
    coordinates for a frame (its translation included), in FLAME's canonical frame otherwise.
    Returns the paths by kind: ``{"obj", "mtl", "png"}``.
    """
    out_dir = Path(out_dir)
    vertices = model.geometry(flame_parameters(model, frames, timestep_index))[0][0]
    mesh = model.mesh
    uvs_obj = mesh.uvs.detach().cpu().double().numpy() * np.array([1.0, -1.0]) + np.array([0.0, 1.0])
    paths = {"obj": out_dir / OBJ_NAME, "mtl": out_dir / MTL_NAME, "png": out_dir / PNG_NAME}
    write_png_rgb(paths["png"], diffuse_texture_rgb(model))
    write_text(paths["mtl"], mtl_text(PNG_NAME))
    # The OBJ last: a reader that finds it finds its material and texture too.
    write_text(paths["obj"], obj_text(vertices.cpu().double().numpy(), mesh.faces.cpu().numpy(), uvs_obj,
                                      mesh.faces_uv.cpu().numpy(), MTL_NAME))
    return paths
