"""Typed profile sections: one frozen dataclass per TOML table, its fields the keys the table may have.

`parse_section(cls, table, key, where)` reads the table found under the dotted `key` of a profile
into a `cls`, checking each value against its field's type (str, int, float, bool, a nested
section, tuple[X, ...], a fixed-length tuple, dict[str, X]) and refusing keys that are not
fields: a typo names itself, and no key can be written without a field that holds it. A section
checks its own values in `__post_init__` by raising `FieldError`; parse_section adds the file and
the full key to the message, so errors read like tomlfile.get's.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from ..errors import CompressError
from ..tomlfile import check


class FieldError(CompressError):
    """A section's own check failed on one of its keys (`key` relative to the section)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"key '{key}' {problem}")
        self.key, self.problem = key, problem


def one_of(*values: str, default: Any = dataclasses.MISSING) -> Any:
    """A field whose value must be one of `values` (checked by parse_section)."""
    return dataclasses.field(default=default, metadata={"choices": values})


def dotted(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def keys_of(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def parse_section(cls, table: Any, key: str, where: Path):
    """`table`, found under the dotted `key` of the file `where`, as a `cls`."""
    check(table, key, dict, where)
    names = keys_of(cls)
    unknown = [k for k in table if k not in names]
    if unknown:
        raise CompressError(f"{where}: unknown key '{dotted(key, unknown[0])}'; "
                            f"allowed {f'in [{key}]' if key else 'at the top level'}: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        full = dotted(key, f.name)
        if f.name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CompressError(f"{where}: missing key '{full}'")
            continue
        value = _convert(hints[f.name], table[f.name], full, where)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise CompressError(f"{where}: key '{full}' must be one of {', '.join(choices)}, got '{value}'")
        values[f.name] = value
    try:
        return cls(**values)
    except FieldError as e:
        raise CompressError(f"{where}: key '{dotted(key, e.key)}' {e.problem}") from None


def _convert(kind: Any, value: Any, key: str, where: Path) -> Any:
    if dataclasses.is_dataclass(kind):
        return parse_section(kind, value, key, where)
    if kind is float:
        return float(check(value, key, (int, float), where))
    if kind in (str, int, bool):
        return check(value, key, kind, where)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is tuple:
        items = check(value, key, list, where)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(items)
        elif len(items) != len(args):
            raise CompressError(f"{where}: key '{key}' must be a list of {len(args)} values, got {value!r}")
        return tuple(_convert(k, v, f"{key}[{i}]", where) for i, (k, v) in enumerate(zip(args, items)))
    if origin is dict:
        return {name: _convert(args[1], v, f"{key}.{name}", where) for name, v in check(value, key, dict, where).items()}
    raise TypeError(f"no TOML reading for a field of type {kind!r} ('{key}')")
