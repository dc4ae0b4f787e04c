"""Latency on the target's runner as a function of what pruning keeps, for `--latency-budget`.

Measuring every candidate is too slow inside training, so the budget becomes a MACs budget
through a model fitted to a few measurements: the teacher, and for each kind of unit group the
structure has (channels, blocks, heads, FFN dimensions, layers) one variant with half of that kind
removed. All are exported to FP32 ONNX and timed side by side (1 thread, interleaved) in the
target's runner where it runs on this host (onnxruntime for x86-cpu), else in onnxruntime as a
labelled stand-in. A least-squares line latency = fixed + slope * MACs-fraction through the points
gives the MACs fraction whose predicted latency is the budget; the fit's error on the measured
points is reported with it (and the pruned model's own measured latency in the prune report).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..artifacts import InputSpec
from ..backends import get_backend
from ..distributed import current
from ..errors import CompressError
from ..export.onnx_export import export_onnx
from ..profile.latency import measure
from .structure import Structure, UnitGroup, full_cost

RUNS = 60


@dataclass
class LatencyModel:
    fixed_ms: float
    slope_ms: float  # per unit of MACs fraction
    teacher_ms: float
    points: list[dict]
    runtime: str

    def predict(self, macs_fraction: float) -> float:
        return self.fixed_ms + self.slope_ms * macs_fraction

    def macs_fraction_for(self, latency_fraction: float) -> float:
        want = latency_fraction * self.teacher_ms
        fraction = (want - self.fixed_ms) / self.slope_ms
        if fraction <= 0:
            raise CompressError(f"--latency-budget {latency_fraction}: {want:.3f} ms is below what this model's "
                                f"fixed cost on {self.runtime} allows ({self.fixed_ms:.3f} ms predicted at zero MACs); "
                                f"give a larger budget")
        return min(1.0, fraction)

    def as_dict(self) -> dict:
        errors = [abs(self.predict(p["macs_fraction"]) - p["median_ms"]) / p["median_ms"] for p in self.points]
        return {"fixed_ms": self.fixed_ms, "slope_ms": self.slope_ms, "teacher_ms": self.teacher_ms,
                "runtime": self.runtime, "points": self.points, "max_relative_error": max(errors)}


def host_runner(ctx):
    """The target's runner where its engine runs here, else onnxruntime (and the label says so)."""
    backend = get_backend(ctx.target.backend, planned=True)
    if backend.runs_on_host and ".onnx" in backend.suffixes:
        return backend.runner, f"{backend.runtime}, FP32"
    return get_backend("onnxruntime").runner, "onnxruntime FP32 on this host (stand-in for the device)"


def onnx_latency(modules: dict[str, nn.Module], spec: InputSpec, sample: tuple[torch.Tensor, ...], ctx,
                 runs: int = RUNS) -> tuple[dict[str, float], str]:
    """Median ms of each module exported to FP32 ONNX and run single-threaded side by side. In a
    distributed run rank 0 measures alone (ranks timing at once would slow each other) and every
    rank gets its numbers, so all choose the same pruned structure."""
    return current().on_main(lambda: _measured(modules, spec, sample, ctx, runs))


def _measured(modules: dict[str, nn.Module], spec: InputSpec, sample: tuple[torch.Tensor, ...], ctx,
              runs: int) -> tuple[dict[str, float], str]:
    make_runner, runtime = host_runner(ctx)
    arrays = tuple(x.numpy() for x in sample)
    with tempfile.TemporaryDirectory() as tmp:
        calls = {}
        for name, module in modules.items():
            path = Path(tmp) / f"{len(calls)}.onnx"
            export_onnx(module, spec, path)
            runner = make_runner(path, 1)
            calls[name] = (lambda r: lambda: r(*arrays))(runner)
        timings = measure(calls, runs=runs, warmup=5, progress=ctx.progress, desc="latency variants")
    return {name: t["median_ms"] for name, t in timings.items()}, runtime


def _halved(group: UnitGroup, kind: str) -> torch.Tensor:
    keep = torch.ones(group.size, dtype=torch.bool)
    if group.kind == kind:
        drop = max(0, min(group.size - group.min_keep, group.size // 2)) if group.size > 1 else 1 - group.min_keep
        keep[group.size - drop:] = False
    return keep


def fit_latency_model(structure: Structure, family: str, spec: InputSpec, ctx, sample) -> LatencyModel:
    full = float(full_cost(structure)["macs"])
    variants: dict[str, nn.Module] = {"teacher": structure.shrink({g.name: torch.ones(g.size, dtype=torch.bool)
                                                                   for g in structure.groups})}
    fractions = {"teacher": 1.0}
    for kind in sorted({g.kind for g in structure.groups}):
        keep = {g.name: _halved(g, kind) for g in structure.groups}
        counts = {name: torch.tensor(float(k.sum())) for name, k in keep.items()}
        fractions[kind] = float(structure.expected_cost(counts)["macs"]) / full
        variants[kind] = structure.shrink(keep)
    ctx.progress.log(f"  latency model: timing the teacher and {len(variants) - 1} variant(s) with half of one kind removed")
    latency, runtime = onnx_latency(variants, spec, sample, ctx)
    points = [{"variant": n, "macs_fraction": fractions[n], "median_ms": latency[n]} for n in variants]
    x = np.array([p["macs_fraction"] for p in points])
    y = np.array([p["median_ms"] for p in points])
    slope, fixed = np.polyfit(x, y, 1) if len(set(x.tolist())) > 1 else (y[0], 0.0)
    if slope <= 0:
        measured = ", ".join(f"{p['variant']} {p['median_ms']:.3f} ms" for p in points)
        raise CompressError(f"latency on {runtime} does not fall with MACs for this model (measured {measured}); "
                            f"use --macs-budget")
    return LatencyModel(float(fixed), float(slope), latency["teacher"], points, runtime)
