"""Differentiable renderers: mesh primitives (nvdiffrast conventions) and a Gaussian rasterizer
with near-z depths and the early-stop gap, sharing one projection.

The exported names are imported on first use (``mega.lazy``): the workflow's start-up reads
``mega.render.backends`` without loading torch."""

from mega.lazy import lazy_attributes

__all__ = [
    "clip_from_camera_matrix", "eval_sh", "interpolate", "ndc_depth_to_metres", "project_gaussians",
    "rasterize", "rasterize_gaussians", "rgb_to_sh_dc", "texture", "world_to_clip",
]
__getattr__ = lazy_attributes(__name__, {
    "project_gaussians": "mega.render.gaussians", "rasterize_gaussians": "mega.render.gaussians",
    "interpolate": "mega.render.mesh", "rasterize": "mega.render.mesh", "texture": "mega.render.mesh",
    "clip_from_camera_matrix": "mega.render.projection", "ndc_depth_to_metres": "mega.render.projection",
    "world_to_clip": "mega.render.projection", "eval_sh": "mega.render.sh", "rgb_to_sh_dc": "mega.render.sh",
})
