"""Qualcomm Snapdragon HTP (phone NPU) through onnxruntime's QNN execution provider
(`pip install -e ".[qnn]"`: onnxruntime-qnn, whose HTP backend runs in a simulator on x86).

    qnn_module()                                   # the EP registered, or what to install
    cpu_nodes(model_path, HtpOptions(73, 43))      # nodes the HTP refuses, each with the EP's reason
    compile_context(model_path, out_dir, htp, cpu_fallback=False)   # model_ctx.onnx + *_qnn.bin
    QnnRunner(out_dir / "model_ctx.onnx")(x)       # run the compiled graph on the HTP backend
    profile_nodes(out_dir / "model_ctx.onnx", x)   # per-node HTP profiling (profiling.py)
"""
from .lower import compile_context
from .runner import QnnRunner
from .runtime import HtpOptions, qnn_available, qnn_module
from .support import Placement, cpu_nodes

__all__ = ["HtpOptions", "Placement", "QnnRunner", "compile_context", "cpu_nodes", "qnn_available", "qnn_module"]
