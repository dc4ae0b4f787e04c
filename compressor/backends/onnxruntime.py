"""onnxruntime on the CPU: the engine is the ONNX file itself, run by an InferenceSession."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifacts import ENGINE, Artifact
from ..passes import PassResult, RunContext
from .base import Backend
from .ort_runner import OrtRunner, run_in_chunks  # noqa: F401 - the runner of this backend, re-exported


INTEGER_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "QLinearAdd", "QLinearMul",
                   "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid",
                   "QLinearLeakyRelu", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def lower_onnx(artifact: Artifact, ctx: RunContext, workdir: Path, config) -> PassResult:
    """The ONNX file is the engine (Linears whose output stays float rewritten as integer MatMuls,
    see ort_integer_matmul); count what onnxruntime turns it into, since int8 is only fast when
    Q/DQ fuse into integer kernels (a Conv left beside a DequantizeLinear runs in float)."""
    import onnx

    from ..artifacts import write_atomic
    from .ort_integer_matmul import rewrite

    engine = artifact.path
    model = onnx.load(str(artifact.path))
    integer_matmuls = rewrite(model)
    if integer_matmuls:
        engine = workdir / artifact.path.name
        write_atomic(engine, model.SerializeToString())
    optimized = workdir / "optimized.onnx"
    OrtRunner(engine, threads=1, optimized_path=optimized)
    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    optimized.unlink()
    counts = {op: ops.count(op) for op in sorted(set(ops))}
    metrics = {"integer_matmuls_rewritten": integer_matmuls,
               "integer_kernels": sum(counts.get(op, 0) for op in INTEGER_KERNELS),
               "float_compute": sum(counts.get(op, 0) for op in ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm")),
               "optimized_ops": counts}
    meta = {**artifact.meta, "engine_built": True}
    return PassResult(Artifact(ENGINE, artifact.spec, artifact.fingerprint, path=engine, meta=meta), metrics)


# onnxruntime's input types -> numpy, for example inputs
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}


class OnnxruntimeBackend(Backend):
    """The ONNX file is the engine, run here with every optimization (integer kernels included)."""

    name = "onnxruntime"
    profiler_ref = "compressor.profile.ort:PROFILER"
    suffixes = (".onnx",)
    runs_on_host = True
    fp32_onnx_baseline = True
    runtime = "onnxruntime (all optimizations)"

    def lower(self, artifact, ctx, workdir, config):
        return lower_onnx(artifact, ctx, workdir, config)

    def runner(self, path: Path, threads: int | None = None) -> OrtRunner:
        return OrtRunner(path, threads)

    def input_specs(self, runner: OrtRunner) -> list[tuple[tuple, np.dtype]]:
        return [(tuple(i.shape), ORT_DTYPES.get(i.type, np.float32)) for i in runner.session.get_inputs()]


BACKEND = OnnxruntimeBackend()
