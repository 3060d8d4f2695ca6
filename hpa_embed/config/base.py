"""What every config section shares: dict conversion with type checks, errors, validators."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from ..io import HpaEmbedError

__all__ = [
    "ConfigError", "ConfigSection", "check_choice", "check_positive_int", "check_unit_interval", "plain_text",
]

C = TypeVar("C", bound="ConfigSection")


class ConfigError(HpaEmbedError, ValueError):
    """A configuration that is invalid, or that cannot work on the data it is given."""


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {choices}")


def check_positive_int(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}={value!r} must be a positive integer")


def check_unit_interval(config: Any, *names: str, closed: bool = True) -> None:
    for name in names:
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and (0 <= value <= 1 if closed else 0 <= value < 1)):
            raise ConfigError(f"{name}={value!r} must lie in [0, 1{']' if closed else ')'}")


# --------------------------------------------------------------------------- dict conversion


def _describe_type(hint: Any) -> str:
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if typing.get_origin(hint) is tuple:
        return "a list"
    return str(hint)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (lists become tuples, ints floats)."""
    if isinstance(hint, types.UnionType):
        options = typing.get_args(hint)
        if type(None) in options and (value is None or (isinstance(value, str) and value.lower() == "none")):
            return None
        hint = next(option for option in options if option is not type(None))
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    if hint in ok:
        if not ok[hint](value):
            raise ConfigError(f"{name}: expected {_describe_type(hint)}, got {value!r}")
        if hint is not float:
            return value
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            number = math.inf
        if not math.isfinite(number):  # TOML has nan and inf, which no setting takes
            raise ConfigError(f"{name}: expected a finite number, got {value!r:.40}")
        return number
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise ConfigError(f"{name}: expected a list of {len(items)} values, got {value!r}")
        return tuple(_coerce(name, item, item_hint) for item, item_hint in zip(value, items))
    return value


class ConfigSection:
    """Dict conversion shared by every config dataclass."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of scalars and lists (tuples become lists), ready for JSON or TOML."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build from a dict as :meth:`to_dict` writes it; missing keys take their defaults.

        Raises :class:`ConfigError` for an unknown key (naming the closest known one), a value
        of the wrong type or an invalid value.
        """
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        kwargs = {}
        for key, value in data.items():
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(names)}"
                raise ConfigError(f"{key}: unknown key; {hint}")
            kwargs[key] = _coerce(key, value, hints[key])
        return cls(**kwargs)

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Field name -> its documentation in the class docstring's Attributes, as plain text
        (choices first when the type line lists them)."""
        text = (cls.__doc__ or "").split("Attributes\n", 1)[-1]
        docs: dict[str, str] = {}
        for match in re.finditer(r"^    (\w+(?:, \w+)*) : ([^\n]*)\n((?:        [^\n]*\n?)*)", text, re.M):
            kind, description = match.group(2), " ".join(match.group(3).split())
            if kind.startswith("{"):
                description = f"{kind.split('}')[0]}}}: {description}" if description else kind
            for name in match.group(1).split(", "):
                docs[name] = plain_text(description)
        return docs


def plain_text(rst: str) -> str:
    """Docstring markup as plain text: ``code`` -> code, :role:`~a.b.Name` -> Name."""
    text = re.sub(r":\w+:`~?([^`]*)`", lambda m: m.group(1).rsplit(".", 1)[-1], rst)
    return text.replace("``", "")
