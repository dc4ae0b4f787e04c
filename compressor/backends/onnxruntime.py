"""onnxruntime on the CPU: the engine is the ONNX file itself, run by an InferenceSession."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..artifacts import ENGINE, Artifact
from ..errors import CompressError
from ..passes import PassResult, RunContext
from .base import Backend


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


def run_in_chunks(fn, arrays: tuple[np.ndarray, ...], batch: int) -> np.ndarray:
    outs = []
    n = arrays[0].shape[0]
    for start in range(0, n, batch):
        chunk = [a[start:start + batch] for a in arrays]
        short = batch - chunk[0].shape[0]
        if short:  # pad the last chunk by repeating its last sample
            chunk = [np.concatenate([c, np.repeat(c[-1:], short, axis=0)]) for c in chunk]
        outs.append(fn(*chunk)[: batch - short])
    return np.concatenate(outs)


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
