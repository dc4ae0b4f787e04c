"""The TensorRT backend as the pipeline sees it: `lower` lints, fixes and (where TensorRT imports)
builds the engine; its runner runs a built .engine/.plan for verify and `compress profile`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...artifacts import ENGINE, Artifact, sha256_file
from ...passes import PassResult, RunContext
from ..base import Backend
from .lowering import lower_onnx
from .runner import TrtRunner
from .scripts import fp32_recipe, is_recipe, recipe_beside


def lower(artifact: Artifact, ctx: RunContext, workdir: Path, config) -> PassResult:
    shapes = {t.name: t.concrete_shape(batch=1, sequence=128) for t in artifact.spec.inputs}
    lowered = lower_onnx(artifact.path, workdir, ctx.target, shapes, strict=config.strict)
    built = lowered.engine is not None
    path = lowered.engine if built else lowered.onnx_path
    publish = {name: name for name in [p.name for p in lowered.scripts] + [lowered.onnx_path.name]}
    meta = {**artifact.meta, "engine_built": built, "onnx": lowered.onnx_path.name, "publish": publish}
    metrics = {"engine_built": built, "autofix": lowered.changes,
               "violations": [vars(v) for v in lowered.violations], "device_instructions": lowered.instructions,
               "scripts": [p.name for p in lowered.scripts]}
    if not built:
        ctx.progress.log("  TensorRT is not installed here: the engine is built on the device with "
                         "build_engine.sh (trtexec) or build_engine.py; verification uses onnxruntime's "
                         "QDQ reference semantics")
    return PassResult(Artifact(ENGINE, artifact.spec, sha256_file(path), path=path, meta=meta), metrics)


class TensorRTBackend(Backend):
    name = "tensorrt"
    profiler_ref = "compressor.profile.tensorrt:PROFILER"
    suffixes = (".engine", ".plan")
    # TensorRT builds an engine only where it runs (the Jetson): one built here is timed for real
    runs_on_host = True

    def lower(self, artifact: Artifact, ctx: RunContext, workdir: Path, config) -> PassResult:
        return lower(artifact, ctx, workdir, config)

    def opens(self, path: Path) -> bool:
        """A plan, or a recipe (build_config.json) that the profiler builds on the device first."""
        return super().opens(path) or is_recipe(path)

    def device_engine(self, artifact: Artifact) -> Path | None:
        """The engine where it was built here, else the recipe beside the lowered ONNX."""
        return artifact.path if artifact.meta.get("engine_built") else recipe_beside(artifact.path)

    def device_baseline(self, fp32_onnx: Path, engine: Path, workdir: Path) -> Path | None:
        """The teacher's FP32 ONNX as a TensorRT FP32 recipe of the engine's shapes (a plan has none)."""
        return fp32_recipe(fp32_onnx, engine, workdir) if is_recipe(engine) else None

    def runner(self, path: Path, threads: int | None = None) -> TrtRunner:
        return TrtRunner(path)

    def input_specs(self, runner: TrtRunner) -> list[tuple[tuple, np.dtype]]:
        """A dynamic input at its optimization profile's `opt` shape."""
        specs = []
        for name in runner.inputs:
            shapes = runner.shape_range(name)
            shape = shapes[1] if shapes else tuple(runner.engine.get_tensor_shape(name))
            specs.append((tuple(shape), runner.dtypes[name]))
        return specs


BACKEND = TensorRTBackend()
