"""Differentiable renderers: mesh primitives (nvdiffrast conventions) and a Gaussian rasterizer
with near-z depths and the early-stop gap, sharing one projection."""

from mega.render.gaussians import project_gaussians, rasterize_gaussians
from mega.render.mesh import interpolate, rasterize, texture
from mega.render.projection import clip_from_camera_matrix, ndc_depth_to_metres, world_to_clip
from mega.render.sh import eval_sh, rgb_to_sh_dc

__all__ = [
    "clip_from_camera_matrix", "eval_sh", "interpolate", "ndc_depth_to_metres", "project_gaussians",
    "rasterize", "rasterize_gaussians", "rgb_to_sh_dc", "texture", "world_to_clip",
]
