"""A subnet's latency measured live, for a latency constraint: the standalone student exported to
ONNX and run by onnxruntime on this machine's CPU (1 thread, batch 1, `sequence` tokens), the
median of a few runs. The search pass may pass its own measure (the target's runner or latency
table) as `constraints.latency_of(module) -> ms`, which is used instead."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ...artifacts import InputSpec, TensorSpec
from ...backends.ort_runner import OrtRunner
from ...export.onnx_export import export_onnx
from ...hf import INPUTS
from ...profile.latency import measure


def text_spec(module: torch.nn.Module) -> InputSpec:
    """The input spec of a compressor.hf encoder or classifier."""
    return InputSpec(tuple(TensorSpec(name, ("batch", "sequence"), "int64") for name in INPUTS),
                     task=getattr(module, "task", "embedding"), max_sequence=getattr(module, "max_sequence", None))


def onnx_latency_ms(module: torch.nn.Module, sequence: int, runs: int = 20) -> float:
    with tempfile.TemporaryDirectory(prefix="autodistil-latency-") as folder:
        path = Path(folder) / "subnet.onnx"
        export_onnx(module, text_spec(module), path)
        runner = OrtRunner(path, threads=1)
        ids = np.ones((1, sequence), dtype=np.int64)
        return measure({"subnet": lambda: runner(ids, ids)}, runs=runs, warmup=3)["subnet"]["median_ms"]
