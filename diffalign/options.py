"""Declared options: help lines and valid values of config dataclass fields, checked in one place.

Every field of ``TrainConfig`` and of a method's config is declared with ``option(...)``, a
``dataclasses.field`` whose metadata says what the field means and which values are valid:

- ``help``: one line for ``diffalign train --help`` (the allowed values are appended to it);
- ``ge`` / ``gt`` / ``le`` / ``lt``: numeric bounds (>=, >, <=, <); for a list, of every element;
- ``choices``: the allowed values (of every element, for a list);
- ``multiple_of``: an integer the value must be a multiple of;
- ``nonempty``: a string (or every string of a list) must not be empty;
- ``allow_inf``: +inf is a valid float (never nan); without it every float must be finite;
- ``cli``: False for a field that is not a command-line option (``TrainConfig.method_args``).

``None`` is valid exactly when the field's type is ``Optional[...]`` (the help line says what it
means). ``validate_fields(config)`` checks a config's fields against their declarations (type,
finiteness, bounds, choices) and raises ``OptionError`` with one sentence naming the option by its
flag: ``--max-steps must be >= 1, got 0``. Each config class calls it from ``__post_init__``, so a
config built in Python is checked like one parsed from the command line; cross-field rules stay in
that ``__post_init__`` and raise ``OptionError`` too. Integers given for float fields become floats,
tuples lists and ``os.PathLike`` values strings.

The ``diffalign train`` parser (``diffalign.cli``) shows each ``help`` with ``allowed_values`` and
the default, and types command-line and ``--config`` values before these checks run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from typing import Any, Optional

from diffalign.errors import UserError

__all__ = ["OptionError", "option", "validate_fields", "allowed_values", "field_kind", "flag"]


class OptionError(UserError, ValueError):
    """An invalid option value, as one sentence: ``--max-steps must be >= 1, got 0``; from a config
    file, ``run.yaml: max_steps must be >= 1, got 0``.

    ``option``: the field name (None for an error that is not about one option, then ``detail`` is the
    whole sentence); ``detail``: the sentence after the option's name; ``source``: the file it came from.
    """

    def __init__(self, option: Optional[str], detail: str, source: Optional[str] = None):
        self.option, self.detail, self.source = option, detail, source
        text = detail if option is None else f"{option if source else flag(option)} {detail}"
        super().__init__(f"{source}: {text}" if source else text)


def flag(name: str) -> str:
    """The command-line spelling of a field: ``max_steps`` -> ``--max-steps``."""
    return "--" + name.replace("_", "-")


def option(help: str, *, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING,
           **rules: Any) -> Any:
    """A dataclass field with its help line and valid values (module doc for ``rules``)."""
    unknown = set(rules) - {"ge", "gt", "le", "lt", "choices", "multiple_of", "nonempty", "allow_inf", "cli", "metavar"}
    if unknown:
        raise TypeError(f"option() got unknown rule(s) {sorted(unknown)}")
    if "choices" in rules:
        rules["choices"] = tuple(rules["choices"])
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help, **rules})


# ----------------------------------------------------------------------------------------- types
@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_kind(cls: type, name: str) -> tuple[Any, bool]:
    """``(type without Optional, whether None is allowed)`` of field ``name`` of dataclass ``cls``."""
    kind = _type_hints(cls)[name]
    if typing.get_origin(kind) is typing.Union:
        arguments = [argument for argument in typing.get_args(kind) if argument is not type(None)]
        if len(arguments) == 1:
            return arguments[0], True
    return kind, False


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}


def _check_type(name: str, kind: Any, value: Any) -> Any:
    """``value`` as ``kind`` (int -> float for float fields, tuple -> list, a path -> str), or OptionError."""
    origin = typing.get_origin(kind)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise OptionError(name, f"must be a list, got {value!r}")
        (item_kind,) = typing.get_args(kind) or (Any,)
        return [_check_type(name, item_kind, item) for item in value]
    if kind is Any:
        return value
    kind = origin or kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise OptionError(name, f"must be {_TYPE_NAMES.get(kind, kind.__name__)}, got {value!r}")


# ------------------------------------------------------------------------------------ valid values
def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def allowed_values(metadata: typing.Mapping[str, Any]) -> Optional[str]:
    """The allowed values a field declares, in words: ``>= 1``, ``in [0, 1)``, ``one of: a, b``."""
    if "choices" in metadata:
        return "one of: " + ", ".join(str(choice) for choice in metadata["choices"])
    low = ("[", metadata["ge"]) if "ge" in metadata else ("(", metadata["gt"]) if "gt" in metadata else None
    high = ("]", metadata["le"]) if "le" in metadata else (")", metadata["lt"]) if "lt" in metadata else None
    if low and high:
        text = f"in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    elif low:
        text = f"{'>=' if low[0] == '[' else '>'} {_number(low[1])}"
    elif high:
        text = f"{'<=' if high[0] == ']' else '<'} {_number(high[1])}"
    else:
        text = None
    if "multiple_of" in metadata:
        multiple = f"a multiple of {metadata['multiple_of']}"
        text = f"{multiple}, {text}" if text else multiple
    return text


def _check_value(name: str, metadata: typing.Mapping[str, Any], value: Any) -> None:
    """One value (a list's element) against the field's rules."""
    allowed = allowed_values(metadata)
    got = "; got" if allowed and "," in allowed else ", got"

    def fail() -> typing.NoReturn:
        raise OptionError(name, f"must be {allowed}{got} {value!r}")

    if isinstance(value, float):
        if math.isnan(value) or (math.isinf(value) and not (value > 0 and metadata.get("allow_inf"))):
            raise OptionError(name, f"must be a finite number{' or inf' if metadata.get('allow_inf') else ''}, got {value!r}")
    if "choices" in metadata and value not in metadata["choices"]:
        fail()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if ("ge" in metadata and not value >= metadata["ge"]) or ("gt" in metadata and not value > metadata["gt"]):
            fail()
        if ("le" in metadata and not value <= metadata["le"]) or ("lt" in metadata and not value < metadata["lt"]):
            fail()
        if "multiple_of" in metadata and value % metadata["multiple_of"]:
            fail()
    if metadata.get("nonempty") and isinstance(value, str) and not value.strip():
        raise OptionError(name, f"must not be empty, got {value!r}")


def _changed(checked: Any, value: Any) -> bool:
    if isinstance(checked, list):
        return not isinstance(value, list) or any(type(a) is not type(b) for a, b in zip(checked, value))
    return checked is not value


def validate_fields(config: Any) -> None:
    """Check every field of the dataclass instance ``config`` against its declaration (module doc);
    raises ``OptionError`` for the first invalid one. Floats given as ints are stored as floats."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        kind, optional = field_kind(type(config), field.name)
        if value is None:
            if optional:
                continue
            raise OptionError(field.name, f"must be given ({_TYPE_NAMES.get(kind, 'a value')}), got None")
        checked = _check_type(field.name, kind, value)
        if _changed(checked, value):
            setattr(config, field.name, checked)
        for item in checked if isinstance(checked, list) else [checked]:
            _check_value(field.name, field.metadata, item)
