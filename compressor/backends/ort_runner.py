"""An ONNX file run on the CPU by an onnxruntime InferenceSession: the onnxruntime backend's runner,
and the reference runner (exact Q/DQ semantics) that verifies engines built elsewhere."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import CompressError
from .chunks import run_in_chunks  # noqa: F401 - also imported from here


class OrtRunner:
    """Runs an ONNX file on the CPU; a static-batch graph is fed in chunks of its batch size."""

    def __init__(self, path: Path, threads: int | None = None, optimized_path: Path | None = None,
                 reference: bool = False):
        """`reference`: basic graph optimizations only, so Q/DQ keep their exact ONNX meaning (the
        check for engines that run elsewhere); otherwise everything, fused int8 kernels included."""
        options = ort.SessionOptions()
        if reference:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Spinning worker threads would steal the cores from whatever runs next to the engine
        # (PyTorch in the interleaved latency runs); an idle engine must leave the CPU alone.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if optimized_path is not None:
            options.optimized_model_filepath = str(optimized_path)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise CompressError(f"{path}: onnxruntime cannot load the engine: {str(e).splitlines()[0]}") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        batch = self.session.get_inputs()[0].shape[0]
        self.static_batch = batch if isinstance(batch, int) else None

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        if self.static_batch is None or arrays[0].shape[0] == self.static_batch:
            return self.session.run(None, dict(zip(self.inputs, arrays)))[0]
        return run_in_chunks(lambda *a: self.session.run(None, dict(zip(self.inputs, a)))[0], arrays, self.static_batch)
