"""The Backend protocol: everything the pipeline, verification, `compress profile` and the benches
know about an engine, in one object per engine.

    backend = get_backend(target.backend)
    backend.preflight(target)                       # before any work: what lowering would lack
    result = backend.lower(artifact, ctx, workdir, config)    # the `lower` pass
    run = backend.runner(path, threads)             # the one way anything runs an engine
    y = run(x1, x2)                                 # numpy in (batch first), first output out
    check = backend.verification(artifact)          # how `verify` runs and labels a lowered artifact
    profiler = backend.profiler()                   # per-layer profiling, here or on a device

A new engine subclasses Backend, sets its class attributes and registers an instance with
`compressor.backends.register_backend`; nothing else in the code base names it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from ..artifacts import ENGINE, ONNX, Artifact
from ..errors import CompressError
from .ort_runner import OrtRunner

# What verification reports for an ONNX file run in onnxruntime with basic optimizations only:
# the exact Q/DQ semantics that device engines implement, for engines not built here.
REFERENCE_RUNTIME = "onnxruntime (QDQ reference semantics)"


class Runner(Protocol):
    def __call__(self, *arrays: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class EngineCheck:
    """How verification runs a lowered artifact, and how the report describes it."""

    runner: Callable[[int | None], Runner]  # threads (None: the runtime's default) -> runner
    runtime: str  # the report's label, e.g. "onnxruntime (all optimizations)", "tensorrt engine"
    latency_stand_in: bool  # the times measured here are the host's stand-in for a device's
    timed: bool = True  # False: the backend timed the engine itself while lowering (see Backend.times_itself)
    fp32_baseline: bool = False  # also time the teacher as FP32 ONNX in onnxruntime (quantized engines)
    latency_where: str = ""  # what the latency rows measure, where it is not the engine's device ("" = default)


class Backend:
    """One engine: how to check for, build, run and verify it. Subclasses set the attributes and
    implement `lower` and `runner`; the defaults fit an engine that runs on a device."""

    name: str = ""
    # file suffixes its runner opens (`compress profile ENGINE` picks the backend by them)
    suffixes: tuple[str, ...] = ()
    # Whether the engine runs on the machine that built it (onnxruntime here; TensorRT builds only
    # where it runs). False: it runs on a device (the C engine is cross-built for RISC-V), so what
    # is timed here is a stand-in for the device's speed.
    runs_on_host: bool = False
    # The runner starts a process per call (the C engine), so `lower` times the engine itself and
    # verify leaves the latency to it.
    times_itself: bool = False
    # A quantized engine of this runtime is also timed against the teacher exported to FP32 ONNX in
    # the same runtime: what int8 buys over exporting the model as it is (onnxruntime only).
    fp32_onnx_baseline: bool = False
    # How the report labels this engine's latency rows when they are not the device's speed
    # ("" = the default label of a stand-in); e.g. a simulator's times.
    latency_where: str = ""

    @property
    def runtime(self) -> str:
        """The report's label for this backend's engine."""
        return f"{self.name} engine"

    def preflight(self, target) -> None:
        """Raise CompressError for what lowering would lack on this machine (checked before any work)."""

    def lower(self, artifact: Artifact, ctx, workdir: Path, config):
        """The `lower` pass: the QDQ ONNX artifact -> an ENGINE artifact (PassResult). Set
        `meta["engine_built"]` True where the engine file was built here."""
        raise NotImplementedError

    def runner(self, path: Path, threads: int | None = None) -> Runner:
        """A callable that runs the engine file at `path`: numpy arrays in (batch first), the first
        output out as numpy."""
        raise NotImplementedError

    def input_specs(self, runner) -> list[tuple[tuple, np.dtype]]:
        """(shape, dtype) of each input of the engine a runner opened; a dynamic dimension may be
        a name ("batch", "sequence"). For `compress profile`'s example inputs."""
        raise CompressError(f"the {self.name} backend cannot list its engine's inputs")

    # "module:attribute" of this engine kind's profiler (compressor.profile.profiler.EngineProfiler:
    # latency and per-layer times here or on a device), imported on first use; "" for none
    profiler_ref: str = ""

    def profiler(self):
        """This engine kind's profiler, for `compress profile` and verify's per-layer times and
        `--device`; None where it has none."""
        if not self.profiler_ref:
            return None
        module, attribute = self.profiler_ref.split(":")
        return getattr(importlib.import_module(module), attribute)

    def opens(self, path: Path) -> bool:
        return Path(path).suffix in self.suffixes

    def device_engine(self, artifact: Artifact) -> Path | None:
        """What this backend's profiler runs on a device (`--device`) for a lowered artifact; None: nothing."""
        return artifact.path if self.opens(artifact.path) else None

    def device_baseline(self, fp32_onnx: Path, engine: Path, workdir: Path) -> Path | None:
        """The teacher's FP32 model in the form this backend's profiler runs beside `engine` on a device
        (the same runtime); None where this runtime has no FP32 form of it."""
        return fp32_onnx if self.opens(fp32_onnx) else None

    def verification(self, artifact: Artifact) -> EngineCheck:
        """An engine built here runs in this backend's runner; otherwise (an ONNX artifact, or a
        device engine that is built on the device) the ONNX runs in onnxruntime's reference
        semantics, and its times are a labelled stand-in."""
        built = artifact.kind == ENGINE and artifact.meta.get("engine_built")
        if built or (artifact.kind == ONNX and self.opens(artifact.path)):
            path = artifact.path
            return EngineCheck(lambda threads: self.runner(path, threads), self.runtime,
                               latency_stand_in=not self.runs_on_host, timed=not self.times_itself,
                               fp32_baseline=self.fp32_onnx_baseline, latency_where=self.latency_where)
        onnx = artifact.path if artifact.kind == ONNX else artifact.path.parent / artifact.meta["onnx"]
        return EngineCheck(lambda threads: reference_runner(onnx, threads), REFERENCE_RUNTIME, latency_stand_in=True)


def reference_runner(path: Path, threads: int | None = None) -> Runner:
    """An ONNX file in onnxruntime with basic optimizations only (exact Q/DQ semantics)."""
    return OrtRunner(path, threads, reference=True)
