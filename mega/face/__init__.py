"""The neural mesh face (paper §3.1): enhanced FLAME with a UV displacement map, disentangled
neural textures and the 307-parameter per-pixel decoder."""

from mega.face.config import FaceConfig
from mega.face.model import NeuralFace

__all__ = ["FaceConfig", "NeuralFace"]
