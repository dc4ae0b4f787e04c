"""Latency of several variants measured side by side in one process.

The variants are interleaved (A B A B ...) so that drift of the machine (other load, frequency)
hits them alike; medians and the 90th percentile are reported in milliseconds.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..progress import Progress


def measure(variants: dict[str, Callable[[], object]], runs: int = 100, warmup: int = 10,
            progress: Progress | None = None, desc: str = "latency") -> dict[str, dict[str, float]]:
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    loop = range(runs) if progress is None else progress.bar(range(runs), desc=desc)
    for _ in loop:
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), "runs": len(t)}
            for name, t in times.items()}
