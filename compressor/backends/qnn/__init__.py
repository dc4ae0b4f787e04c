"""Qualcomm Snapdragon HTP (phone NPU) through onnxruntime's QNN execution provider
(`pip install -e ".[qnn]"`: onnxruntime-qnn, whose HTP backend runs in a simulator on x86).

    qnn_module()                                   # the EP registered, or what to install
    cpu_nodes(model_path, HtpOptions(73, 43))      # nodes the HTP refuses, each with the EP's reason
    compile_context(model_path, out_dir, htp, cpu_fallback=False)   # model_ctx.onnx + *_qnn.bin
    QnnRunner(out_dir / "model_ctx.onnx")(x)       # run the compiled graph on the HTP backend
    profile_nodes(out_dir / "model_ctx.onnx", x)   # per-node HTP profiling (profiling.py)

Our layout against onnxruntime's QNN quantizer (`get_qnn_qdq_config` after `qnn_preprocess_model`,
uint8 activations, int8 per-channel weights; `python bench/qnn_layout.py`, results in
bench/results/qnn_layout.json) on the MNIST sample: the same kinds of Q/DQ on the same tensors
(uint8 per-tensor activations with the same zero-point pattern, int8 per-channel Conv and Gemm
weights, int32 per-channel biases at s_input * s_weight), and the HTP takes both whole. Where we
differ, and why:
- onnxruntime drops a ReLU before an asymmetric uint8 Q (the Q's zero point 0 clips negatives); we
  keep Conv -> Relu -> Q, which the QNN EP compiles as one node unit, so the file says what it
  computes whatever the zero point.
- a16w8: onnxruntime makes 16-bit tensors by per-tensor overrides and adds converts; we widen the
  layers the accuracy budget keeps and add converts in the fake-quant graph too (quantize/converts.py),
  so verification compares with a module that rounds where the engine does.
- onnxruntime gives 16-bit Sigmoid/Tanh outputs the fixed scales QNN requires; we never widen
  those outputs' quantizers with fixed scales (a 16-bit Sigmoid/Tanh output is not supported yet).
- the exact-GELU Erf pattern is fused into one Gelu by both (qnn_preprocess_model; our lower,
  prepare.fuse_erf_gelu); onnxruntime also fuses ReduceL2 sequences into LpNormalization.
"""
from .lower import compile_context
from .runner import QnnRunner
from .runtime import HtpOptions, qnn_available, qnn_module
from .support import Placement, cpu_nodes

__all__ = ["HtpOptions", "Placement", "QnnRunner", "compile_context", "cpu_nodes", "qnn_available", "qnn_module"]
