"""Quantization-aware distillation: fake quantization in the target's scheme, calibration,
sensitivity analysis, QAD fine-tuning, and the QDQ form of the exported ONNX."""
