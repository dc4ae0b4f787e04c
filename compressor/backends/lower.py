"""The `lower` pass: the target's backend (base.Backend.lower) turns the QDQ ONNX into what runs
on the device.

The output is an engine artifact. Where the engine can be built here it is the engine file;
where it can only be built on the device (TensorRT without `tensorrt` installed), it is the
device-ready ONNX, with the build recipe beside it, and `meta["engine_built"]` is False.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..artifacts import ENGINE, ONNX, Artifact
from ..passes import Pass, PassResult, RunContext, register
from . import get_backend


@dataclass
class LowerConfig:
    strict: bool = True  # backend rule violations that would change results fail the run


@register
class LowerPass(Pass):
    name = "lower"
    takes = (ONNX,)
    returns = ENGINE
    needs_backend = True
    Config = LowerConfig

    def run(self, artifact: Artifact, ctx: RunContext, workdir: Path) -> PassResult:
        return get_backend(ctx.target.backend).lower(artifact, ctx, workdir, self.config)
