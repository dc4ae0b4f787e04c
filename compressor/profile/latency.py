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
PARTS = 5  # the runs in consecutive parts: how a ratio moves between them estimates its noise


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
    return {name: summarize(t) for name, t in times.items()}


def summarize(times_ms: list[float]) -> dict:
    """Statistics of one variant's call times (ms, in the order they were taken): median, p90, p99,
    min, calls per second at the median, and the medians of the run's consecutive parts (for
    `ratio_with_noise`)."""
    t = np.asarray(times_ms, dtype=float)
    median = float(np.median(t))
    return {"median_ms": median, "p90_ms": float(np.percentile(t, 90)), "p99_ms": float(np.percentile(t, 99)),
            "min_ms": float(t.min()), "throughput_per_s": 1e3 / median if median > 0 else float("inf"),
            "runs": len(t), "part_medians_ms": [float(np.median(c)) for c in np.array_split(t, PARTS) if len(c)]}


def ratio_with_noise(a: dict[str, float], b: dict[str, float]) -> tuple[float, float]:
    """Median time of `a` over `b`, and the run's own noise on that ratio: half the spread of the
    same ratio over the consecutive parts of the run (both variants were timed in each part)."""
    ratio = a["median_ms"] / b["median_ms"]
    parts = [x / y for x, y in zip(a.get("part_medians_ms", []), b.get("part_medians_ms", []))]
    return ratio, (max(parts) - min(parts)) / 2 if len(parts) > 1 else 0.0


def speed_verdict(ratio: float, noise: float) -> str:
    """'faster', 'slower', or 'same' (the time ratio within the run's noise of 1)."""
    return "faster" if ratio < 1 - noise else "slower" if ratio > 1 + noise else "same"
