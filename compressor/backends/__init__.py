"""The registry of engine backends (see base.Backend), found by the target profile's `backend` key
or, for `compress profile`, by an engine file's suffix.

Built-in backends are imported on first use, so listing targets never imports TensorRT's linter
or the C engine's code generator. A test or plugin adds one with `register_backend(MyBackend())`.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import CompressError
from .base import Backend, EngineCheck, REFERENCE_RUNTIME  # noqa: F401 - re-exported

# name -> the Backend, or "module:attribute" where it is until first used; in lookup order by
# file (QNN first: its context models are .onnx files that only the QNN EP runs, told apart by
# name; then onnxruntime, so that profiling any other ONNX file imports nothing else)
BACKENDS: dict[str, Backend | str] = {
    "qnn": "compressor.backends.qnn.backend:BACKEND",
    "onnxruntime": "compressor.backends.onnxruntime:BACKEND",
    "tensorrt": "compressor.backends.tensorrt.backend:BACKEND",
    "cengine": "compressor.backends.cengine.backend:BACKEND",
}

# Backends of the design whose issues have not landed yet: their profiles exist already.
PLANNED: dict[str, str] = {}


def register_backend(backend: Backend, replace: bool = False) -> Backend:
    """Make `backend` the one a profile's `backend = "<backend.name>"` picks."""
    if not backend.name:
        raise ValueError("a backend needs a name")
    if backend.name in BACKENDS and not replace:
        raise ValueError(f"backend '{backend.name}' is registered already")
    BACKENDS[backend.name] = backend
    return backend


def _load(name: str) -> Backend:
    entry = BACKENDS[name]
    if isinstance(entry, str):
        module, attribute = entry.split(":")
        entry = BACKENDS[name] = getattr(importlib.import_module(module), attribute)
    return entry


class _Planned(Backend):
    """A backend of the design that is not here yet: it builds nothing, so what verification runs
    is the QDQ ONNX, in onnxruntime's reference semantics."""

    def __init__(self, name: str):
        self.name = name


def get_backend(name: str, planned: bool = False) -> Backend:
    """The backend called `name`. `planned`: a planned backend comes back as one that builds
    nothing (for verifying its ONNX) instead of the "not available yet" error."""
    if name in BACKENDS:
        return _load(name)
    if name in PLANNED:
        if planned:
            return _Planned(name)
        raise CompressError(f"backend '{name}' ({PLANNED[name]}) is not available yet")
    raise CompressError(f"unknown backend '{name}'; known backends: {', '.join(sorted(BACKENDS) + sorted(PLANNED))}")


def backend_for_file(path: Path) -> Backend:
    """The backend whose runner opens this engine file (by its suffix)."""
    path = Path(path)
    known: list[str] = []
    for name in list(BACKENDS):
        backend = _load(name)
        if backend.opens(path):
            return backend
        known += [s for s in backend.suffixes if s not in known]
    raise CompressError(f"{path}: unknown engine type '{path.suffix}'; known: {', '.join(known)}")


def preflight(target) -> None:
    """Fail now, not after minutes of quantizing, when the target's engine cannot be built here."""
    get_backend(target.backend).preflight(target)
