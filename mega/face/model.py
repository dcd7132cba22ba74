"""The neural mesh face (paper §3.1): enhanced FLAME + UV displacement, disentangled neural
textures, deferred per-pixel decoding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mega.data.camera import Camera
from mega.face.config import FaceConfig
from mega.face.decoders import DRIVING_SIZE, DisplacementDecoder, DynamicDecoder, ViewDecoder
from mega.face.mesh import FaceMesh
from mega.face.pixel_decoder import UV_CODE_SIZE, LearnedUVEncoding, PixelDecoder
from mega.flame.head_model import HeadModel
from mega.flame.model import POSE_PARTS
from mega.render.mesh import interpolate, rasterize, texture_at
from mega.render.projection import world_to_clip

BACKGROUND = 1.0  # the data's white background

GEOMETRY_OUTPUTS = ("vertices", "vertices_flame", "rast", "mask", "depth", "uv", "view_dir")
"""What :meth:`NeuralFace.render_geometry` returns: a render's part that the appearance does not
touch."""


def driving_signal(flame: dict[str, Tensor]) -> Tensor:
    """[B, 115]: expression (first 100, zero-padded) and the 15 pose numbers."""
    expr = flame["expr"][:, :100]
    if expr.shape[1] < 100:
        expr = F.pad(expr, (0, 100 - expr.shape[1]))
    signal = torch.cat([expr] + [flame[name] for name in POSE_PARTS], dim=1)
    assert signal.shape[1] == DRIVING_SIZE
    return signal


class NeuralFace(nn.Module):
    """Renders the face branch for a batch of frames.

    ``forward(flame, cameras)`` with ``flame`` a dict of [B, n] tensors (shape, expr, rotation,
    neck_pose, jaw_pose, eyes_pose, translation) and a batched :class:`Camera` returns a dict:

        rgb          [B, 3, H, W] decoded from the full neural texture, white off the mesh
        rgb_diffuse  [B, 3, H, W] decoded from the diffuse texture alone
        mask         [B, 1, H, W] bool, the mesh covers the pixel
        depth        [B, 1, H, W] camera z, metres (0 off the mesh)
        vertices     [B, V, 3] refined (displaced) vertices, metres
        vertices_flame [B, V, 3] before displacement
        rast         [B, H, W, 4] the G-buffer
        texture_offsets [B, C, T, T] T_v + T_dy (absent when both decoders are ablated)
    """

    def __init__(self, head: HeadModel, config: FaceConfig):
        super().__init__()
        self.config = config
        self.mesh = FaceMesh(head, subdivision=config.subdivision, teeth=config.teeth)
        C, T = config.tex_channels, config.tex_size
        self.diffuse_texture = nn.Parameter(torch.empty(1, C, T, T).uniform_(-1, 1))
        self.view_decoder = ViewDecoder(C, T) if config.view_texture else None
        self.dynamic_decoder = DynamicDecoder(C, T) if config.dynamic_texture else None
        self.displacement_decoder = (DisplacementDecoder(config.disp_size, config.disp_scale_m)
                                     if config.displacement else None)
        self.uv_encoding = LearnedUVEncoding(config.uv_encoding_size)
        self.pixel_decoder = PixelDecoder(UV_CODE_SIZE + C, omega_0=config.pixel_decoder_omega)

    # ---- geometry
    def displacement(self, driving: Tensor) -> Tensor:
        """Per-vertex offsets [B, V, 3] in metres sampled from the UV displacement map (0 on eyeballs)."""
        B = driving.shape[0]
        if self.displacement_decoder is None:
            return driving.new_zeros(B, self.mesh.n_vertices, 3)
        disp_map = self.displacement_decoder(driving)  # [B, 3, S, S]
        grid = (self.mesh.vertex_uv * 2 - 1).to(disp_map.dtype)[None, None].expand(B, 1, -1, 2)
        offsets = F.grid_sample(disp_map, grid, mode="bilinear", align_corners=True)[:, :, 0].transpose(1, 2)
        return offsets * (~self.mesh.no_displacement)[None, :, None].to(offsets.dtype)

    def geometry(self, flame: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(refined vertices, FLAME vertices), each [B, V, 3] metres (eq. 2)."""
        vertices = self.mesh.flame(**{k: flame[k] for k in ("shape", "expr", *POSE_PARTS, "translation")})
        return vertices + self.displacement(driving_signal(flame)), vertices

    # ---- appearance
    def texture_offsets(self, flame: dict[str, Tensor], view_dir: Tensor) -> Tensor | None:
        """T_v + T_dy [B, C, T, T] in view_dir's dtype, or None when both are ablated. The two
        decoders run under autocast when ``config.decoder_precision`` asks for half precision."""
        offsets = None
        precision = self.config.decoder_precision
        with torch.autocast(view_dir.device.type, dtype=getattr(torch, precision), enabled=precision != "float32"):
            if self.view_decoder is not None:
                offsets = self.view_decoder(view_dir)
            if self.dynamic_decoder is not None:
                dynamic = self.dynamic_decoder(driving_signal(flame))
                offsets = dynamic if offsets is None else offsets + dynamic
        return None if offsets is None else offsets.to(view_dir.dtype)

    @staticmethod
    def view_direction(cameras: Camera, vertices_flame: Tensor) -> Tensor:
        """[B, 3] unit vectors from the head (the FLAME vertices' mean, [B, V, 3] metres) to the
        cameras: the view decoder's input (the authors assume the head at the origin)."""
        return F.normalize(cameras.center - vertices_flame.detach().mean(1), dim=-1)

    def neural_texture(self, flame: dict[str, Tensor], view_dir: Tensor) -> Tensor:
        """T = T_di + T_v + T_dy (eq. 3), [B, C, T, T]."""
        offsets = self.texture_offsets(flame, view_dir)
        tex = self.diffuse_texture.expand(view_dir.shape[0], -1, -1, -1)
        return tex if offsets is None else tex + offsets

    def render_geometry(self, flame: dict[str, Tensor], cameras: Camera) -> dict[str, Tensor]:
        """The geometry's part of a render (:data:`GEOMETRY_OUTPUTS`): vertices and vertices_flame
        [B, V, 3] metres, rast [B, H, W, 4], mask [B, H, W] bool, depth [B, H, W] metres, uv
        [B, H, W, 2], view_dir [B, 3]. A stage that trains the appearance alone (the joint stage)
        can keep it and hand it to :meth:`forward`."""
        vertices, vertices_flame = self.geometry(flame)
        return self.geometry_from(vertices, vertices_flame, self.rasterize(vertices, cameras), cameras)

    def rasterize(self, vertices: Tensor, cameras: Camera) -> Tensor:
        """The G-buffer [B, H, W, 4] of vertices [B, V, 3] (metres) in ``cameras``."""
        cameras = cameras.to(device=vertices.device, dtype=vertices.dtype)
        return rasterize(world_to_clip(vertices, cameras), self.mesh.faces, (cameras.height, cameras.width),
                         backend=self.config.backend)

    def geometry_from(self, vertices: Tensor, vertices_flame: Tensor, rast: Tensor, cameras: Camera
                      ) -> dict[str, Tensor]:
        """:meth:`render_geometry` from its costly parts (the vertices and the G-buffer): the rest
        is a few gathers."""
        cameras = cameras.to(device=vertices.device, dtype=vertices.dtype)
        depth = interpolate(cameras.world_to_camera_points(vertices)[..., 2:], rast, self.mesh.faces,
                            backend=self.config.backend)[..., 0]
        uv = interpolate(self.mesh.uvs[None], rast, self.mesh.faces_uv, backend=self.config.backend)
        return {"vertices": vertices, "vertices_flame": vertices_flame, "rast": rast, "mask": rast[..., 3] > 0,
                "depth": depth, "uv": uv, "view_dir": self.view_direction(cameras, vertices_flame)}

    def forward(self, flame: dict[str, Tensor], cameras: Camera,
                geometry: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """``geometry``: :meth:`render_geometry` of the same frames and cameras, made before (None:
        made here)."""
        g = self.render_geometry(flame, cameras) if geometry is None else geometry
        vertices, vertices_flame, rast, mask, depth, uv, view_dir = (g[k] for k in GEOMETRY_OUTPUTS)
        B, H, W = vertices.shape[0], cameras.height, cameras.width
        # Sample and decode only the covered pixels; the background stays white. Bilinear
        # lookup is linear, so T_di is read once from its single copy and T_v + T_dy per image:
        # the diffuse texture is never copied to the batch.
        pixel_uv = uv[mask]
        batch_index = torch.nonzero(mask)[:, 0]
        diffuse = texture_at(self.diffuse_texture, pixel_uv, torch.zeros_like(batch_index))
        offsets = self.texture_offsets(flame, view_dir)
        full = diffuse if offsets is None else diffuse + texture_at(offsets, pixel_uv, batch_index)
        code = self.uv_encoding(pixel_uv)
        both = self.pixel_decoder(torch.cat([torch.cat([code, full], 1), torch.cat([code, diffuse], 1)], 0))
        n = pixel_uv.shape[0]
        images = []
        for colours in (both[:n], both[n:]):
            image = colours.new_full((B, H, W, 3), BACKGROUND).index_put((mask,), colours)
            images.append(image.permute(0, 3, 1, 2))
        out = {"rgb": images[0], "rgb_diffuse": images[1], "mask": mask[:, None], "depth": depth[:, None],
               "vertices": vertices, "vertices_flame": vertices_flame, "rast": rast}
        if offsets is not None:
            out["texture_offsets"] = offsets  # T_v + T_dy, for texture-space terms that reuse them
        return out
