"""Package attributes imported on first use (PEP 562).

A package's ``__init__`` that re-exported its heavy modules eagerly would load torch for any of
its submodules, also the torch-free ones the workflow reads when Snakemake parses it (settings,
configs, the subject's folder checks). ``lazy_attributes`` gives the package a ``__getattr__``
that imports each name's module when the name is first asked for.
"""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_attributes(package: str, modules: dict[str, str]) -> Callable[[str], object]:
    """``__getattr__`` for ``package``: ``modules`` maps each exported name to the module that
    defines it."""
    def __getattr__(name: str) -> object:
        if name in modules:
            return getattr(importlib.import_module(modules[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__
