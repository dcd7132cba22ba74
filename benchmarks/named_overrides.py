"""The benchmark scripts' NAME=JSON arguments (a run's or variant's name, then its setting overrides)."""

from __future__ import annotations

import json


def parse_named_overrides(text: str, flag: str, keys: set[str] | None = None) -> tuple[str, dict]:
    """``text`` = 'NAME=JSON' (``NAME`` alone or ``NAME=`` = no overrides) → (name, overrides).
    ``keys``: the only top-level keys the JSON object may have (None: any). A malformed argument
    exits with a message naming ``flag`` and what was expected."""
    name, _, overrides = text.partition("=")
    expected = f"expected NAME='{{...}}', a JSON object{' with keys ' + ' and/or '.join(sorted(keys)) if keys else ''}"
    try:
        parsed = json.loads(overrides or "{}")
    except json.JSONDecodeError as error:
        raise SystemExit(f"{flag} {text!r}: {expected} ({error})")
    if not name or not isinstance(parsed, dict):
        raise SystemExit(f"{flag} {text!r}: {expected}")
    unknown = set(parsed) - keys if keys is not None else set()
    if unknown:
        raise SystemExit(f"{flag} {text!r}: {expected}, not {sorted(unknown)}")
    return name, parsed
