"""The neural mesh face (paper §3.1): enhanced FLAME with a UV displacement map, disentangled
neural textures and the 307-parameter per-pixel decoder.

The exported names are imported on first use (``mega.lazy``): the workflow's start-up reads
``mega.face.config`` without loading torch."""

from mega.lazy import lazy_attributes

__all__, __getattr__ = lazy_attributes(__name__, {"mega.face.config": ("FaceConfig",),
                                                  "mega.face.model": ("NeuralFace",)})
