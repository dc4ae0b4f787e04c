"""The TensorRT backend as the pipeline sees it: `lower` for the lower pass, `make_runner` for verify."""
from __future__ import annotations

from pathlib import Path

from ...artifacts import ENGINE, Artifact, sha256_file
from ...pipeline import PassResult, RunContext
from .lowering import lower_onnx
from .runner import TrtRunner


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


def make_runner(path: Path, threads: int | None = None) -> TrtRunner:
    return TrtRunner(path)
