"""Engine builders, one module per backend, found by the target profile's `backend` key."""
from __future__ import annotations

import importlib

from ..errors import CompressError

# backend name -> module implementing `lower(artifact, ctx, workdir, config) -> PassResult` and
# `make_runner(path, threads) -> callable(*arrays) -> array` for the engine it builds; optionally
# `preflight(target)`, which raises CompressError for what lowering would lack (checked before any work)
BACKENDS: dict[str, str] = {
    "onnxruntime": "compressor.backends.onnxruntime",
    "tensorrt": "compressor.backends.tensorrt.backend",
    "cengine": "compressor.backends.cengine.backend",
}

# Backends of the design whose issues have not landed yet: their profiles exist already.
PLANNED: dict[str, str] = {
    "qnn": "the Snapdragon QNN backend",
}


def get_backend(name: str):
    if name in BACKENDS:
        return importlib.import_module(BACKENDS[name])
    if name in PLANNED:
        raise CompressError(f"backend '{name}' ({PLANNED[name]}) is not available yet")
    raise CompressError(f"unknown backend '{name}'; known backends: {', '.join(sorted(BACKENDS) + sorted(PLANNED))}")


def preflight(target) -> None:
    """Fail now, not after minutes of quantizing, when the target's engine cannot be built here."""
    backend = get_backend(target.backend)
    check = getattr(backend, "preflight", None)
    if check is not None:
        check(target)
