"""The C engine backend as the pipeline sees it: `lower` generates, cross-builds and verifies the
engine (host, rv64gc, rv64gcv under qemu); `make_runner` runs the host build for `verify`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...artifacts import ENGINE, Artifact, sha256_file
from ...errors import CompressError, VerificationError
from ...pipeline import PassResult, RunContext
from . import generate, verify
from .toolchain import APT_INSTALL, EngineRunner, missing_tools

ENGINE_DIR = "cengine"
VERIFY_SAMPLES = 200  # per build; the rv64 builds run under qemu


def lower(artifact: Artifact, ctx: RunContext, workdir: Path, config) -> PassResult:
    for arch in ("rv64gc", "rv64gcv"):
        missing = missing_tools(arch, run=True)
        if missing:
            raise CompressError(f"the RISC-V cross toolchain is missing ({', '.join(missing)}); install it with: {APT_INSTALL}")
    engine_dir = workdir / ENGINE_DIR
    info = generate(artifact.path, engine_dir)
    ctx.progress.log(f"  C engine: arena {info['arena_bytes']} B, weights {info['weight_bytes']} B; "
                     "building host, rv64gc and rv64gcv, running under qemu")
    inputs = ctx.data.holdout[0][:VERIFY_SAMPLES].numpy()
    report = verify(artifact.path, engine_dir, inputs)
    metrics = {key: report[key] for key in ("builds", "bit_exact", "parity_ref", "sizes", "instructions", "latency")
               if key in report}
    if not report["passed"]:
        error = VerificationError(f"the C engine does not match: bit-exact across builds {report['bit_exact']}, "
                                  f"vs onnxruntime {report['parity_ref']}")
        error.metrics = metrics
        raise error
    path = engine_dir / "model.c"
    meta = {**artifact.meta, "engine_built": True, "publish": {ENGINE_DIR: "."}}
    return PassResult(Artifact(ENGINE, artifact.spec, sha256_file(path), path=path, meta=meta), metrics)


@dataclass
class _HostRunner:
    """Runs the engine's host build; each call is a process, so `verify` leaves timing to `lower`."""

    engine: EngineRunner
    measures_own_latency = True

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        return self.engine(*arrays)


def make_runner(path: Path, threads: int | None = None) -> _HostRunner:
    return _HostRunner(EngineRunner(Path(path).parent, threads))
