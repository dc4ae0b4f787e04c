"""Verification of a generated engine: builds, bit-exactness, parity with onnxruntime, sizes,
RISC-V instruction counts and host latency.

Parity is measured against two onnxruntime executions of the same QDQ model:

* `ort_ref`: graph optimizations disabled, so every DequantizeLinear -> op -> QuantizeLinear runs
  as written (float math between DQ and Q, round-half-to-even in Q): the QDQ semantics the engine
  implements. The acceptance criteria (top-1 >= 99.5 %, within one quantization step) use it.
* `ort_int8`: onnxruntime's default, which fuses the QDQ groups into its int8 kernels
  (QLinearConv, QGemm, ...). On x86 CPUs without AVX-512 VNNI those kernels can saturate 16-bit
  intermediate sums (documented by onnxruntime, the reason for its `reduce_range` option), so
  they may differ from the QDQ semantics by several steps; reported for information, and it is the
  latency baseline.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from compressor.errors import CompressError

from .toolchain import (ARCHS, code_bytes, compile_engine, count_instructions, engine_meta,
                        host_latency_ns, missing_tools, run_engine)


def ort_session(onnx_path: Path, optimized: bool = True, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def ort_run(sess, x: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    dim0 = sess.get_inputs()[0].shape[0]
    if not isinstance(dim0, int) or dim0 != 1:  # dynamic batch: one call
        try:
            return sess.run(None, {name: x})[0]
        except Exception:  # noqa: BLE001 - fall back to one sample at a time
            pass
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def parity(y: np.ndarray, ref: np.ndarray, step: float | None) -> dict:
    y2, r2 = y.reshape(len(y), -1), ref.reshape(len(ref), -1)
    diff = np.abs(y2.astype(np.float64) - r2)
    out = {"top1_agreement": float(np.mean(y2.argmax(1) == r2.argmax(1))),
           "max_abs_diff": float(diff.max())}
    if step:
        steps = np.rint(diff / step)
        out["max_diff_steps"] = int(steps.max())
        out["frac_outputs_off"] = float(np.mean(steps > 0))
    return out


def ort_latency_ns(sess, x1: np.ndarray, runs: int) -> float:
    name = sess.get_inputs()[0].name
    for _ in range(10):
        sess.run(None, {name: x1})
    t = []
    for _ in range(runs):
        a = time.perf_counter_ns()
        sess.run(None, {name: x1})
        t.append(time.perf_counter_ns() - a)
    return float(np.median(t))


def verify(onnx_path: Path, out_dir: Path, inputs, archs=ARCHS, count: bool = True,
           latency_runs: int = 200, latency_rounds: int = 3) -> dict:
    """Build every arch, run all inputs, compare; see the module docstring for the criteria.

    Returns a dict with: bit_exact (all builds identical), builds, parity_ref / parity_int8 (vs
    onnxruntime), passed, sizes (arena, peak live, weights, code per arch), instructions (per
    inference, rv64gc and rv64gcv, and their ratio), latency (host engine vs onnxruntime int8,
    single thread, medians of alternating rounds).
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    meta = engine_meta(out_dir)
    x = np.asarray(inputs, np.float32 if meta["input"]["dtype"] == "float32" else np.int8)
    x = x.reshape((-1,) + tuple(meta["input"]["shape"][1:]))
    rep: dict = {"model": str(onnx_path), "n_inputs": int(len(x))}
    outs = {}
    skipped = {}
    for arch in archs:
        miss = missing_tools(arch, run=True)
        if miss and arch != "host":
            skipped[arch] = f"missing {', '.join(miss)}"
            continue
        compile_engine(out_dir, arch)
        outs[arch] = run_engine(out_dir, x, arch)
    rep["builds"] = sorted(outs)
    rep["skipped_builds"] = skipped
    base = outs.get("host", next(iter(outs.values())) if outs else None)
    rep["bit_exact"] = bool(outs) and all(np.array_equal(base, o) for o in outs.values())
    rep["bit_exact_pairs"] = {a: bool(np.array_equal(base, o)) for a, o in outs.items()}

    step = meta["output"]["scale"]
    ref_sess, int8_sess = ort_session(onnx_path, optimized=False), ort_session(onnx_path, optimized=True)
    ref, ref8 = ort_run(ref_sess, x), ort_run(int8_sess, x)
    rep["parity_ref"] = parity(base, ref, step)
    rep["parity_int8"] = parity(base, ref8, step)
    p = rep["parity_ref"]
    rep["passed"] = bool(rep["bit_exact"] and p["top1_agreement"] >= 0.995
                         and (step is None or p.get("max_diff_steps", 0) <= 1))

    rep["sizes"] = {"arena_bytes": meta["arena_bytes"], "peak_live_bytes": meta["peak_live_bytes"],
                    "arena_over_peak": meta["arena_bytes"] / max(1, meta["peak_live_bytes"]),
                    "weight_bytes": meta["weight_bytes"],
                    "code_bytes": {a: code_bytes(out_dir, a) for a in outs}}
    rep["macs"] = meta["macs"]
    if count and {"rv64gc", "rv64gcv"} <= set(outs):
        n_gc = count_instructions(out_dir / "build/rv64gc/runner", x[0], "rv64gc")
        n_gcv = count_instructions(out_dir / "build/rv64gcv/runner", x[0], "rv64gcv")
        rep["instructions"] = {"rv64gc": n_gc, "rv64gcv": n_gcv, "rvv_over_scalar": n_gcv / n_gc}
    if latency_runs and "host" in outs:
        eng, ortl = [], []
        for _ in range(latency_rounds):  # alternate A B A B in one process
            eng.append(host_latency_ns(out_dir, latency_runs))
            ortl.append(ort_latency_ns(int8_sess, x[:1], latency_runs))
        e, o = float(np.median(eng)), float(np.median(ortl))
        rep["latency"] = {"engine_host_ms": e / 1e6, "ort_int8_ms": o / 1e6, "engine_over_ort": e / o}
    return rep


__all__ = ["verify", "ort_session", "ort_run", "parity", "CompressError"]
