"""Error types whose messages name the file, the field and what was expected."""

from __future__ import annotations

from pathlib import Path


class MegaError(Exception):
    """Base class of every error the package raises on purpose."""


class AssetError(MegaError):
    """A head-model file (FLAME pickle, masks pickle, template OBJ) is missing or malformed."""


class DataError(MegaError):
    """A subject folder (transforms JSON, images, masks, FLAME parameters, extras) is malformed."""


class ConfigError(MegaError):
    """A configuration value is missing or of the wrong kind."""


def shape_mismatch(path: str | Path, key: str, found: tuple, expected: str) -> str:
    """One sentence naming the file, the key, the shape found and the shape expected."""
    return f"{path}: '{key}' has shape {tuple(found)}, expected {expected}"


class TrainingError(MegaError):
    """Training cannot go on (a non-finite loss or gradient, an incompatible checkpoint)."""
