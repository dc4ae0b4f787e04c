"""What `verify` measures with the engine's own profiler: its time per layer (here, or on the device
of `--device`), and on a device the parity outputs and the engine against the teacher's FP32
engine, alternated in one process there (profile.engine.compare)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CompressError
from .charts import layer_chart
from .devices import Device, open_device
from .engine import profile_engines
from .profiler import Settings

LAYER_CHART = "layers.png"


def check_device_runtime(target, device: str) -> None:
    """Raise now where the device of `--device` cannot be reached or lacks the runtime of the target's engine."""
    from ..backends import get_backend

    opened = open_device(device)
    profiler = get_backend(target.backend, planned=True).profiler()
    if opened.remote and profiler is not None:
        profiler.check(opened)


def layer_profile(engine: Path, sample: list[np.ndarray], device: Device, runs: int, workdir: Path) -> dict:
    """The engine's layers (execution order, ms per inference) on `device`, and their chart in `workdir`."""
    result = profile_engines([engine], Settings(runs=1, warmup=2, per_layer_runs=runs, inputs=sample), device)
    entry = result["engines"][0]
    layer_chart(entry["layers"], workdir / LAYER_CHART, f"{result['runtime']} on {result['device']}: ms per layer")
    return {"device": result["device"], "runtime": result["runtime"], "measured_on": result["measured_on"],
            "emulated": result["emulated"], "layers": entry["layers"], "layers_total_ms": entry["layers_total_ms"],
            "chart": LAYER_CHART}


def device_latency(engine: Path, fp32: Path | None, sample: list[np.ndarray], device: Device, runs: int) -> dict:
    """The engine (and the teacher's FP32 engine, alternately in the same process) on the device, batch 1,
    one thread: the statistics of each and the engine's time over FP32's with its noise."""
    paths = [fp32, engine] if fp32 is not None else [engine]
    result = profile_engines(paths, Settings(runs=runs, warmup=10, inputs=sample), device)
    if result["remote"] and not result["measured_on"].get("host"):
        raise CompressError(f"{device.label}: the profiler did not say where it ran")
    out = {"device": result["device"], "runtime": result["runtime"], "measured_on": result["measured_on"],
           "peak_rss_bytes": result["peak_rss_bytes"], "engine": result["engines"][-1]}
    if fp32 is not None:
        out["fp32_onnx"] = result["engines"][0]
        out["comparison"] = result["comparison"]  # engine time over FP32's
    return out
