"""ONNX export, graph checks and the verification (parity + latency) pass."""
