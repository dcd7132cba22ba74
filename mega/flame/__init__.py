"""FLAME-format head models: chumpy-free file I/O, LBS, the enhanced mesh, the procedural model."""

from mega.flame.enhance import add_teeth, enhance, subdivide
from mega.flame.head_model import REGION_NAMES, HeadModel, load_head_model, write_head_model
from mega.flame.model import FlameModel
from mega.flame.toy import EXPRESSIONS, build_toy_head

__all__ = [
    "EXPRESSIONS", "REGION_NAMES", "FlameModel", "HeadModel", "add_teeth", "build_toy_head", "enhance",
    "load_head_model", "subdivide", "write_head_model",
]
