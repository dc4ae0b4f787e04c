"""The passes that ship with the package, by the module that registers each one.

The pass manager imports these modules by name when it builds a pipeline (`load_all`), so this
module imports none of them itself: pass modules import `compressor.passes`, and nothing here
leads back to the manager.
"""
from __future__ import annotations

import importlib

# pass name -> module whose import registers it
BUILTIN: dict[str, str] = {
    "search": "compressor.search.search_pass",
    "distill": "compressor.distill.distill_pass",
    "prune": "compressor.prune.prune_pass",
    "quantize": "compressor.quantize.quantize_pass",
    "export": "compressor.export.onnx_export",
    "verify": "compressor.export.verify",
    "lower": "compressor.backends.lower",
}


def load_all() -> None:
    """Import every builtin pass module, which registers its pass in `passes.PASSES`."""
    for module in BUILTIN.values():
        importlib.import_module(module)
