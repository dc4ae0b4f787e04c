"""The one global switch of the native ops: which implementation runs, native or pure PyTorch.

``set_backend(name)`` wins; otherwise the ``COMPRESSOR_NATIVE`` environment variable decides
(default "auto"). "auto" builds the extension once and falls back to the reference when that fails;
"native" requires the extension; "reference" never builds it. This module only holds the choice;
`build.backend()` and `build.use_native()` act on it.
"""
from __future__ import annotations

import os
from typing import Optional

ENV_BACKEND = "COMPRESSOR_NATIVE"
BACKENDS = ("auto", "native", "reference")

_requested: Optional[str] = None  # set_backend(); None: follow the environment variable


def set_backend(name: Optional[str]) -> None:
    """Choose "auto", "native" or "reference"; None goes back to $COMPRESSOR_NATIVE (default auto)."""
    global _requested
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} (or None), got {name!r}")
    _requested = name


def requested_backend() -> str:
    if _requested is not None:
        return _requested
    value = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_BACKEND} must be one of {', '.join(BACKENDS)}, got {value!r}")
    return value
