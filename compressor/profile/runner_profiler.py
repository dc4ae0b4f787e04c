"""The profiler of a backend that has only a runner (Backend.runner + input_specs): its engines
timed here, in this process, alternately; no per-layer times and no devices. A backend gets a real
profiler by naming one (Backend.profiler_ref)."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np

from ..errors import CompressError
from .devices import Device
from .profiler import EngineProfiler, Settings

DYNAMIC_SIZES = {"batch": 1, "sequence": 128}


def example(shape, dtype) -> np.ndarray:
    concrete = [d if isinstance(d, int) else DYNAMIC_SIZES.get(str(d), 1) for d in shape]
    if np.issubdtype(dtype, np.floating):
        return np.random.default_rng(0).random(concrete).astype(dtype)
    return np.ones(concrete, dtype=dtype)


class RunnerProfiler(EngineProfiler):
    def __init__(self, backend):
        self.backend, self.kind = backend, backend.name

    def profile(self, engines: list[Path], settings: Settings, device: Device) -> dict:
        return self.timed(engines, settings, device)[0]

    def timed(self, engines: list[Path], settings: Settings, device: Device) -> tuple[dict, list[list[np.ndarray]]]:
        """The result, and the inputs each engine ran on (for a subclass's per-layer pass)."""
        if device.remote:
            raise CompressError(f"the {self.kind} backend has no profiler that runs on a device; it runs here only")
        runners = [self.backend.runner(p, settings.threads) for p in engines]
        inputs = [settings.inputs or [example(s, d) for s, d in self.backend.input_specs(r)] for r in runners]
        for r, x in zip(runners, inputs):
            for _ in range(settings.warmup):
                r(*x)
        times: list[list[float]] = [[] for _ in runners]
        for _ in range(settings.runs):  # alternately, A B A B ...
            for r, x, t in zip(runners, inputs, times):
                start = time.perf_counter()
                r(*x)
                t.append((time.perf_counter() - start) * 1e3)
        return {"engines": [{"engine": str(p), "times_ms": t, "input_shapes": [list(a.shape) for a in x]}
                            for p, x, t in zip(engines, inputs, times)],
                "host": socket.gethostname(), "pid": os.getpid(), "runtime": self.backend.runtime}, inputs
