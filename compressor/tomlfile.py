"""Reading the TOML files users edit (target profiles, calibration recipes, pipeline configs).

Every error names the file and, where it applies, the key, so a typo is a one-line fix.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from .errors import CompressError


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise CompressError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise CompressError(f"{path}: malformed TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CompressError(f"{path}: cannot read: {e}") from None


_MISSING = object()


def get(table: dict, key: str, kind: type | tuple[type, ...], where: Path, default: Any = _MISSING) -> Any:
    """Return table[key] checked against `kind`; `key` may be dotted ("quantization.observer")."""
    node: Any = table
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _MISSING:
                raise CompressError(f"{where}: missing key '{key}'")
            return default
        node = node[part]
    return check(node, key, kind, where)


def check(value: Any, key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    """Return `value` (found under the dotted `key` of `where`) when it is of `kind`."""
    # bool is an int in Python; a TOML `true` where a number is expected is still a mistake.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        names = " or ".join(k.__name__ for k in _as_tuple(kind))
        raise CompressError(f"{where}: key '{key}' must be {names}, got {value!r}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
