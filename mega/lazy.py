"""Package attributes imported on first use (PEP 562).

A package's ``__init__`` that re-exported its heavy modules eagerly would load torch for any of
its submodules, also the torch-free ones the workflow reads when Snakemake parses it (settings,
configs, the subject's folder checks). ``lazy_attributes`` gives the package its ``__all__`` and
a ``__getattr__`` that imports each name's module when the name is first asked for.
"""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_attributes(package: str, modules: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable[[str], object]]:
    """``(__all__, __getattr__)`` for ``package``: ``modules`` maps each module to the names of it
    that the package exports."""
    module_of = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> object:
        if name in module_of:
            return getattr(importlib.import_module(module_of[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return sorted(module_of), __getattr__
