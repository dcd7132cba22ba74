"""Choose the head model: the procedural one, or the user's licensed FLAME files."""

from __future__ import annotations

from pathlib import Path

from mega.errors import ConfigError
from mega.flame.head_model import HeadModel, load_head_model
from mega.flame.toy import build_toy_head


def head_model_from_source(source: str, model: str | Path | None = None, masks: str | Path | None = None,
                           template: str | Path | None = None) -> HeadModel:
    """``source="toy"`` builds the procedural model; ``source="flame"`` loads the three files."""
    if source == "toy":
        return build_toy_head()
    if source == "flame":
        missing = [name for name, value in (("model", model), ("masks", masks), ("template", template)) if not value]
        if missing:
            raise ConfigError(f"head_model.source is 'flame' but head_model.flame.{missing[0]} is not set "
                              f"(--{missing[0]} on the command line); give the paths of flame2023.pkl, "
                              "FLAME_masks.pkl and head_template_mesh.obj")
        return load_head_model(model, masks, template)
    raise ConfigError(f"head_model.source is '{source}', expected 'toy' or 'flame'")
