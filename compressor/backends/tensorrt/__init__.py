"""Jetson / TensorRT backend: lint and fix a QDQ ONNX for TensorRT, write the on-device build recipe,
build the engine where TensorRT imports, and run it.

    violations = lint(model, profile)            # what TensorRT would refuse or fuse badly, with fixes
    model, changes = autofix(model, profile)     # the exact (numerics-preserving) fixes
    write_build_scripts(onnx_path, out_dir, profile, input_shapes)   # build_engine.sh / .py
    if tensorrt_available(): engine = build_engine(onnx_path, out_dir, profile, input_shapes)
    TrtRunner(engine).run({"input": x})
    lower_onnx(onnx_path, out_dir, profile, input_shapes)  # all of the above, for the `lower` pass

`profile` is the TargetProfile of a targets/jetson-*.toml file (compressor.targets.load_target).
"""
from .build import build_engine, tensorrt_available
from .fixes import FIXES, autofix
from .lint import RULES, Violation, lint
from .lowering import Lowered, lower_onnx
from .runner import TrtRunner
from .scripts import device_instructions, trtexec_args, write_build_scripts

__all__ = ["FIXES", "RULES", "Lowered", "TrtRunner", "Violation", "autofix", "build_engine", "device_instructions",
           "lint", "lower_onnx", "tensorrt_available", "trtexec_args", "write_build_scripts"]
