"""Runs a QNN EP context model (`model_ctx.onnx` + its binary) on the HTP backend: the compiled
graph loads as it is, nothing is compiled again. On x86 the HTP is Qualcomm's simulator."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ...errors import CompressError, first_line
from ..ort_runner import run_in_chunks
from .runtime import HtpOptions, create_session, session_options

CONTEXT_OP = "EPContext"


def cpu_ops(path: Path) -> list[str]:
    """Nodes of a context model outside the compiled HTP graph: they run on the CPU (compiled with
    qnn.allow_cpu_fallback)."""
    model = onnx.load(str(path), load_external_data=False)
    return [f"{n.name} ({n.op_type})" for n in model.graph.node if n.op_type != CONTEXT_OP]


class QnnRunner:
    """numpy in (batch first), first output out; a graph compiled for batch B runs in chunks of B."""

    def __init__(self, path: Path, htp: HtpOptions | None = None):
        path = Path(path)
        self.cpu_nodes = cpu_ops(path)
        options = session_options(htp or HtpOptions(), cpu_fallback=bool(self.cpu_nodes))
        try:
            self.session = create_session(path, options)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise CompressError(f"{path}: the QNN HTP backend cannot load the context model: {first_line(e)}") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.static_batch = self.session.get_inputs()[0].shape[0]

    def run_batch(self, *arrays: np.ndarray) -> np.ndarray:
        return self.session.run(None, dict(zip(self.inputs, arrays)))[0]

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        if arrays[0].shape[0] == self.static_batch:
            return self.run_batch(*arrays)
        return run_in_chunks(self.run_batch, arrays, self.static_batch)
