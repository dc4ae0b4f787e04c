"""The QNN backend as the pipeline sees it: `lower` compiles the QDQ ONNX into an EP context model
for the profile's Snapdragon HTP; its runner runs that context model on the HTP backend (the
simulator on x86), for verify and `compress profile`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...artifacts import Artifact
from ...passes import PassResult, RunContext
from ..base import Backend
from .lower import lower
from .runner import QnnRunner
from .runtime import qnn_module

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
              "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16}


class QnnBackend(Backend):
    name = "qnn"
    suffixes = ()  # a context model is an .onnx file: `compress profile` opens it by its name (opens)
    runs_on_host = False  # the HTP here is Qualcomm's simulator: its times are not a phone's
    runtime = "QNN HTP simulator on x86 (onnxruntime-qnn)"
    latency_where = "QNN HTP simulator on x86, not device speed"
    profiler_ref = "compressor.profile.qnn:PROFILER"

    def preflight(self, target) -> None:
        qnn_module()  # says what to install, before any work

    def lower(self, artifact: Artifact, ctx: RunContext, workdir: Path, config) -> PassResult:
        return lower(artifact, ctx, workdir, config)

    def runner(self, path: Path, threads: int | None = None) -> QnnRunner:
        return QnnRunner(path)  # the HTP runs the graph; host threads do not apply

    def input_specs(self, runner: QnnRunner) -> list[tuple[tuple, np.dtype]]:
        return [(tuple(i.shape), ORT_DTYPES.get(i.type, np.float32)) for i in runner.session.get_inputs()]

    def opens(self, path: Path) -> bool:
        return Path(path).name.endswith("_ctx.onnx")


BACKEND = QnnBackend()
