"""The Gaussian rasterizer's backends by name (torch-free: the settings check them when the
workflow is parsed). Which one ``auto`` picks on a device: ``resolve_gaussian_backend`` in
``mega.render.gaussians``."""

GAUSSIAN_BACKENDS = ("auto", "torch", "triton", "numba")
