"""mega: photorealistic, animatable head avatars from multi-view video (the MeGA method).

Importing the package is cheap and CPU-safe: CUDA libraries are imported only by the code
paths that select them.
"""

__version__ = "0.1.0"
