"""`compress profile ENGINE`: latency of an engine file with its own runtime, on this machine.

The backend whose runner opens the file's suffix runs it (ONNX files in onnxruntime, TensorRT
engines .engine/.plan in TensorRT, so on the device they were built for); ONNX files also have an
optional per-node breakdown from onnxruntime's profiler.
"""
from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..backends import backend_for_file
from ..errors import CompressError
from ..progress import Progress
from .latency import measure

_DYNAMIC_SIZES = {"batch": 1, "sequence": 128}


def _example(shape, dtype) -> np.ndarray:
    concrete = [d if isinstance(d, int) else _DYNAMIC_SIZES.get(str(d), 1) for d in shape]
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.floating):
        return rng.random(concrete).astype(dtype)
    return np.ones(concrete, dtype=dtype)


def profile_engine(path: Path, runs: int = 200, warmup: int = 20, threads: int = 1,
                   progress: Progress | None = None) -> dict:
    if not path.is_file():
        raise CompressError(f"{path}: file not found")
    backend = backend_for_file(path)
    runner = backend.runner(path, threads)
    arrays = [_example(shape, dtype) for shape, dtype in backend.input_specs(runner)]
    timing = measure({"engine": lambda: runner(*arrays)}, runs=runs, warmup=warmup, progress=progress)["engine"]
    return {"engine": str(path), "threads": threads, "input_shapes": [list(a.shape) for a in arrays], **timing}


def per_node(path: Path, runs: int = 50, threads: int = 1) -> list[dict]:
    """onnxruntime's profiler: mean time per node over `runs`, slowest first."""
    import onnxruntime as ort

    from ..backends.onnxruntime import ORT_DTYPES

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {i.name: _example(i.shape, ORT_DTYPES.get(i.type, np.float32)) for i in session.get_inputs()}
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    total: dict[tuple[str, str], float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[(e["name"].removesuffix("_kernel_time"), e.get("args", {}).get("op_name", "?"))] += e["dur"]
    rows = [{"node": n, "op": op, "mean_ms": us / runs / 1e3} for (n, op), us in total.items()]
    return sorted(rows, key=lambda r: -r["mean_ms"])
