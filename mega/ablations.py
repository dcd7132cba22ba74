"""Table 2's variants as named overrides of the face and hair settings, read from a YAML file
(``config/ablations.yaml``), so that an ablation is added without touching code."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mega.errors import ConfigError

_IN_WORKING_DIRECTORY = Path("config/ablations.yaml")
_IN_REPOSITORY = Path(__file__).resolve().parents[1] / "config" / "ablations.yaml"
DEFAULT_PATH = _IN_WORKING_DIRECTORY if _IN_WORKING_DIRECTORY.is_file() or not _IN_REPOSITORY.is_file() \
    else _IN_REPOSITORY
"""The working directory's config/ablations.yaml (the repository root's, as Snakemake's config
is), else the repository's own (a command run from another folder)."""
FULL = "mega"
GROUPS = ("full", "texture", "geometry", "blending", "other")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_KEYS = {"label", "group", "change", "face", "hair"}


@dataclass(frozen=True)
class Ablation:
    name: str
    label: str
    group: str = "other"
    change: str = ""
    face: dict = field(default_factory=dict)
    """Overrides of :class:`mega.face.config.FaceConfig`."""
    hair: dict = field(default_factory=dict)
    """Overrides of :class:`mega.hair.config.HairConfig`."""

    @property
    def shares_full_face(self) -> bool:
        """Its face stage is the full model's (no face overrides): trained once, reused."""
        return not self.face


def load_ablations(path: str | Path = DEFAULT_PATH) -> dict[str, Ablation]:
    """Every variant of the file, checked: names, keys, and overrides that the settings accept.
    The full model (``mega``) is always there, with no overrides."""
    from mega.face.config import FaceConfig
    from mega.hair.config import HairConfig

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: the ablations file is missing (expected a YAML mapping of variant names to "
                          f"face/hair overrides, as in config/ablations.yaml)")
    try:
        entries = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(entries, dict):
        raise ConfigError(f"{path}: expected a mapping of variant names to entries, got {type(entries).__name__}")
    ablations = {}
    for name, entry in entries.items():
        where = f"{path}: variant '{name}'"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: names are lower-case letters, digits and '_', starting with a letter")
        entry = entry or {}
        if not isinstance(entry, dict) or set(entry) - _KEYS:
            raise ConfigError(f"{where}: expected a mapping with keys among {', '.join(sorted(_KEYS))}, got "
                              f"{sorted(set(entry) - _KEYS) if isinstance(entry, dict) else type(entry).__name__}")
        group = entry.get("group", "other")
        if group not in GROUPS:
            raise ConfigError(f"{where}: 'group' must be one of {', '.join(GROUPS)}, got {group!r}")
        face = _float_inf(entry.get("face") or {}, f"{where}, face")
        hair = _float_inf(entry.get("hair") or {}, f"{where}, hair")
        FaceConfig.from_dict(face, where=f"{where}, face")  # raises on an unknown or mistyped setting
        HairConfig.from_dict(hair, where=f"{where}, hair")
        if name == FULL and (face or hair):
            raise ConfigError(f"{where}: the full model has no overrides (change the face/hair settings instead)")
        ablations[name] = Ablation(name, str(entry.get("label", name)), group, str(entry.get("change", "")),
                                   face, hair)
    ablations.setdefault(FULL, Ablation(FULL, "MeGA (Ours)", "full", "the full model"))
    return ablations


def ablation(name: str, path: str | Path = DEFAULT_PATH) -> Ablation:
    """The named variant; ``mega`` needs no file."""
    if name == FULL and not Path(path).is_file():
        return Ablation(FULL, "MeGA (Ours)", "full", "the full model")
    known = load_ablations(path)
    if name not in known:
        raise ConfigError(f"{path}: unknown variant '{name}' (known: {', '.join(known)})")
    return known[name]


def _float_inf(overrides: dict, where: str) -> dict:
    """YAML's ``.inf`` is already a float; the strings "inf" / "infinity" become one too."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(overrides).__name__}")
    return {k: (math.inf if isinstance(v, str) and v.lower() in ("inf", "infinity") else v)
            for k, v in overrides.items()}
