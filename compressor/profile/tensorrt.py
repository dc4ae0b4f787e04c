"""TensorRT's per-layer profiler: plans run in TensorRT where it imports (the device the plan was
built on: a plan runs only with that TensorRT release and GPU), each layer's time from an
IProfiler the execution context reports to after every timed call."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np

from ..errors import CompressError
from .devices import Device
from .profiler import EngineProfiler, Settings


def _example_feeds(runner) -> dict:
    """Random floats, ones for integer inputs, at each input's optimization-profile `opt` shape."""
    from ..backends.tensorrt.backend import BACKEND

    rng = np.random.default_rng(0)
    return {name: rng.random(shape).astype(dtype) if np.issubdtype(dtype, np.floating) else np.ones(shape, dtype)
            for name, (shape, dtype) in zip(runner.inputs, BACKEND.input_specs(runner))}


def _layer_profiler(trt):
    class LayerTimes(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)
            self.ms: dict[str, float] = {}
            self.order: list[str] = []

        def report_layer_time(self, layer_name, ms):
            if layer_name not in self.ms:
                self.order.append(layer_name)
                self.ms[layer_name] = 0.0
            self.ms[layer_name] += ms

    return LayerTimes()


class TensorRTProfiler(EngineProfiler):
    kind = "tensorrt"

    def profile(self, engines: list[Path], settings: Settings, device: Device) -> dict:
        from ..backends.tensorrt.runner import TrtRunner

        if device.remote or device.emulated:
            raise CompressError("a TensorRT plan runs only with the TensorRT and GPU it was built on: run "
                                "`compress profile` on the device itself")
        runners = [TrtRunner(p) for p in engines]
        feeds = [_example_feeds(r) if settings.inputs is None else dict(zip(r.inputs, (x[:1] for x in settings.inputs)))
                 for r in runners]
        for r, f in zip(runners, feeds):
            r._prepare(f)
            for _ in range(settings.warmup):
                r._execute()
            r.memory.synchronize()
        times: list[list[float]] = [[] for _ in runners]
        for _ in range(settings.runs):  # alternately, A B A B ...
            for r, t in zip(runners, times):  # each runner keeps its own context and buffers
                start = time.perf_counter()
                r._execute()
                r.memory.synchronize()
                t.append((time.perf_counter() - start) * 1e3)
        result = {"engines": [], "host": socket.gethostname(), "pid": os.getpid(), "peak_rss_bytes": _peak_rss(),
                  "runtime": f"TensorRT {runners[0].trt.__version__}"}
        for path, r, f, t in zip(engines, runners, feeds, times):
            entry = {"engine": str(path), "times_ms": t, "input_shapes": [list(v.shape) for v in f.values()]}
            if settings.per_layer_runs:
                entry["layers"] = self._layers(r, f, settings.per_layer_runs)
            result["engines"].append(entry)
            r.close()
        return result

    def _layers(self, runner, feeds: dict, runs: int) -> list[dict]:
        profiler = _layer_profiler(runner.trt)
        runner._prepare(feeds)
        runner.context.profiler = profiler
        runner.context.enqueue_emits_profile = False  # report once per call, after it finished
        for _ in range(runs):
            runner._execute()
            runner.memory.synchronize()
            runner.context.report_to_profiler()
        return [{"name": n, "op": "layer", "ms": profiler.ms[n] / runs} for n in profiler.order]


def _peak_rss() -> int | None:
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


PROFILER = TensorRTProfiler()
