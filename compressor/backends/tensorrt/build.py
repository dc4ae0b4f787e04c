"""Build the engine here when TensorRT imports; otherwise the scripts say how to build it on the device."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

from ...errors import CompressError
from ...targets import TargetProfile
from . import device_build
from .device_build import CONFIG_NAME
from .scripts import device_instructions, write_build_scripts


def tensorrt_available() -> bool:
    """True when a real TensorRT Python package imports (PyPI's placeholder packages do not count)."""
    try:
        trt = importlib.import_module("tensorrt")
    except Exception:  # noqa: BLE001 - a broken install raises all sorts of errors
        return False
    return hasattr(trt, "Builder") and hasattr(trt, "OnnxParser")


def build_engine(onnx_path: Path, out_dir: Path, profile: TargetProfile, input_shapes: dict[str, tuple] | None,
                 verbose: bool = False) -> Path:
    """Write the build scripts into `out_dir`, then build the engine with them (the same code as
    build_engine.py). Raises CompressError when TensorRT is not importable or the build fails."""
    out_dir = Path(out_dir)
    write_build_scripts(onnx_path, out_dir, profile, input_shapes)
    if not tensorrt_available():
        raise CompressError(device_instructions(out_dir, profile))
    config = json.loads((out_dir / CONFIG_NAME).read_text())
    try:
        return device_build.build(config, out_dir, verbose=verbose)
    except device_build.BuildError as e:
        raise CompressError(f"TensorRT engine build failed: {e}") from None
