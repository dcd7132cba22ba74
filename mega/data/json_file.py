"""The subjects' JSON files read with errors that name the file and where it is malformed
(torch-free: the workflow reads sequence lists when Snakemake parses it)."""

from __future__ import annotations

import json
from pathlib import Path

from mega.errors import DataError


def read_json(path: Path) -> dict:
    """The JSON document in ``path``; a DataError naming the file (and the line and column where
    it is malformed) otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
