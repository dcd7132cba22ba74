"""Differentiable renderers: mesh primitives (nvdiffrast conventions) and a Gaussian rasterizer
with near-z depths and the early-stop gap, sharing one projection.

The exported names are imported on first use (``mega.lazy``): the workflow's start-up reads
``mega.render.backends`` without loading torch."""

from mega.lazy import lazy_attributes

__all__, __getattr__ = lazy_attributes(__name__, {
    "mega.render.gaussians": ("project_gaussians", "rasterize_gaussians"),
    "mega.render.mesh": ("interpolate", "rasterize", "texture"),
    "mega.render.projection": ("clip_from_camera_matrix", "ndc_depth_to_metres", "world_to_clip"),
    "mega.render.sh": ("eval_sh", "rgb_to_sh_dc"),
})
