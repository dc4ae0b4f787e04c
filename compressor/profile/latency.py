"""Latency of several variants measured side by side in one process.

Single-threaded variants are interleaved (A B A B ...) so that drift of the machine (other load,
frequency) hits them alike. Multi-threaded variants are timed in blocks instead (A x k, B x k,
...), each after a pause and two untimed calls: a runtime's worker threads keep spinning for a
while after a call (onnxruntime's pool, PyTorch's OpenMP), and interleaved one-call-each they
compete for the cores with the next variant's threads. Measured on 2 cores, MNIST int8 engine
and PyTorch at 2 threads: engine 1.05-1.68 ms interleaved, 0.59-0.89 ms alone, 0.82-0.89 ms in
blocks; PyTorch 13 ms interleaved with onnxruntime spinning, 4-6 ms alone.
Medians and the 90th percentile are reported in milliseconds.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from ..progress import Progress

SETTLE_S = 0.05  # pause before a block: long enough for the previous variant's threads to stop spinning
UNTIMED_PER_BLOCK = 2  # calls that wake this variant's threads and caches before its block is timed


def measure(variants: dict[str, Callable[[], object]], runs: int = 100, warmup: int = 10,
            progress: Progress | None = None, desc: str = "latency", block: int = 1) -> dict[str, dict[str, float]]:
    """`block` > 1: time each variant `block` calls at a time (for multi-threaded variants)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    rounds = math.ceil(runs / block)
    loop = range(rounds) if progress is None else progress.bar(range(rounds), desc=desc)
    for _ in loop:
        for name, fn in variants.items():
            if block > 1:
                time.sleep(SETTLE_S)
                for _ in range(UNTIMED_PER_BLOCK):
                    fn()
            for _ in range(block):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), "runs": len(t)}
            for name, t in times.items()}
