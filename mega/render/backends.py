"""The Gaussian rasterizer's backends and modes by name (torch-free: the settings check them when
the workflow is parsed). Which backend ``auto`` picks on a device: ``resolve_gaussian_backend`` in
``mega.render.gaussians``."""

GAUSSIAN_BACKENDS = ("auto", "torch", "triton", "numba")
RASTERIZE_MODES = ("classic", "antialiased")
"""How a Gaussian covers pixels (gsplat's names): ``classic`` dilated by 0.3 px² at its full
opacity (3DGS); ``antialiased`` with its opacity scaled so the dilation keeps its screen-space mass."""
