"""A frozen dataclass of settings that is built from a mapping (a config section or JSON) and
names the unknown key or the wrongly typed value."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import fields
from typing import TypeVar

from mega.errors import ConfigError

S = TypeVar("S", bound="Settings")


class Settings:
    """Mixin for frozen dataclasses whose defaults are bool, int, float, str or tuples of them."""

    kind = "settings"
    """What the settings are of, for error messages ("face settings")."""

    @classmethod
    def from_dict(cls: type[S], values: dict, where: str | None = None) -> S:
        where = where or cls.kind
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: expected a mapping of {cls.kind}, got {type(values).__name__}")
        known = {f.name: f for f in fields(cls)}
        out = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{where}: unknown setting '{key}' (known: {', '.join(sorted(known))})")
            ok, value = _coerce(known[key].default, value)
            if not ok:
                expected = {"int": "an integer", "float": "a number, not NaN", "bool": "true or false",
                            "str": "a string", "tuple": "a list"}.get(type(known[key].default).__name__,
                                                                      "of another type")
                raise ConfigError(f"{where}: setting '{key}' = {value!r} should be {expected}")
            out[key] = value
        settings = cls(**out)
        settings.check(where)
        return settings

    def check(self, where: str) -> None:
        """Raise ConfigError naming ``where`` and the setting when a value is out of range."""

    def replace(self: S, **changes) -> S:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def defaults(cls) -> dict:
        """Every setting's default value, by name."""
        return {f.name: f.default for f in fields(cls) if f.default is not dataclasses.MISSING}


# Numbers in exponent form that YAML 1.1 leaves as strings: no dot (1e-4, 5E3) or an unsigned
# exponent (1.0e4).
_YAML11_TEXT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(default, value):
    """(value fits the default's type, the value converted)."""
    if isinstance(default, bool):
        return isinstance(value, bool), value
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool), value
    if isinstance(default, float):
        if isinstance(value, str) and _YAML11_TEXT_NUMBER.fullmatch(value.strip()):
            # YAML 1.1 (PyYAML, Snakemake's config) reads 1e-4 as text: it needs a dot and a signed
            # exponent (1.0e-4, 1.0e+4).
            value = float(value)
        # NaN passes every range check (all comparisons are false) and poisons training: refused.
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        return ok, float(value) if ok else value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        converted = []
        for item in value:
            ok, item = _coerce(default[0] if default else item, item)
            if not ok:
                return False, value
            converted.append(item)
        return True, tuple(converted)
    return isinstance(value, str), value


def check_at_least(settings, where: str, minimum: float, *names: str) -> None:
    for name in names:
        if getattr(settings, name) < minimum:
            raise ConfigError(f"{where}: '{name}' must be at least {minimum}, got {getattr(settings, name)}")


def check_one_of(settings, where: str, name: str, choices: tuple[str, ...]) -> None:
    """A ConfigError naming ``where``, the field and the choices unless ``settings.<name>`` is one of them."""
    value = getattr(settings, name)
    if value not in choices:
        raise ConfigError(f"{where}: '{name}' must be one of {', '.join(choices)}, got {value!r}")


def synthetic_stage_settings(config: dict, section: str) -> dict:
    """The settings the workflow gives a synthetic subject's ``section`` ("face" or "hair"): the
    config's section, then its ``synthetic.<section>`` overrides; the face takes the config's
    mesh ``backend`` unless it sets its own (workflow/rules/common.smk does the same)."""
    settings = dict(config.get(section) or {})
    settings.update((config.get("synthetic") or {}).get(section) or {})
    if section == "face":
        settings.setdefault("backend", config.get("backend", "auto"))
    return settings
