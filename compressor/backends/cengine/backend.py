"""The C engine backend as the pipeline sees it: `lower` generates, cross-builds and verifies the
engine (host, rv64gc, rv64gcv under qemu) and times the host build; its runner runs the host build
for `verify`."""
from __future__ import annotations

from pathlib import Path

from ...artifacts import ENGINE, Artifact, sha256_file
from ...errors import CompressError, VerificationError
from ...passes import PassResult, RunContext
from ..base import Backend
from . import generate, verify
from .toolchain import EngineRunner, RiscvToolchain, require_tools

ENGINE_DIR = "cengine"
VERIFY_SAMPLES = 200  # host build
EMULATED_MACS = 5e9  # MACs the qemu builds run in all (at least 4 samples): 200 MNIST digits, 4 MiniLM sentences


def engine_dims(spec, holdout) -> dict[str, int]:
    """The static size of every named symbolic input dimension (but the batch), from the data the
    engine is verified on (e.g. the sequence length a text recipe pads to)."""
    dims: dict[str, int] = {}
    for t, x in zip(spec.inputs, holdout):
        for axis, d in enumerate(t.shape):
            if axis > 0 and isinstance(d, str) and axis < x.ndim:
                dims.setdefault(d, int(x.shape[axis]))
    return dims


def preflight(target) -> None:
    """Before any work: the cross toolchain and emulator that lowering builds and runs with."""
    for arch in ("host", "rv64gc", "rv64gcv"):
        require_tools(arch, run=True, toolchain=RiscvToolchain.from_device(target.device))


def lower(artifact: Artifact, ctx: RunContext, workdir: Path, config) -> PassResult:
    # the toolchain was checked by preflight() before the run started
    engine_dir = workdir / ENGINE_DIR
    holdout = [x[:VERIFY_SAMPLES].numpy() for x in ctx.data.holdout]
    info = generate(artifact.path, engine_dir, dims=engine_dims(artifact.spec, holdout),
                    toolchain=RiscvToolchain.from_device(ctx.target.device))
    for spec, x in zip(info["inputs"], holdout):
        if tuple(x.shape[1:]) != tuple(spec["shape"][1:]):
            raise CompressError(f"the C engine's input '{spec['name']}' has the static shape {spec['shape']}, "
                                f"but the verification data is {list(x.shape[1:])} per sample")
    emulated = max(4, int(EMULATED_MACS // max(1, info["macs"])))
    ctx.progress.log(f"  C engine: arena {info['arena_bytes']} B, weights {info['weight_bytes']} B; "
                     f"building host, rv64gc and rv64gcv, running under qemu ({min(emulated, len(holdout[0]))} samples)")
    report = verify(artifact.path, engine_dir, holdout if len(holdout) > 1 else holdout[0], emulated_samples=emulated)
    metrics = {key: report[key] for key in ("builds", "bit_exact", "bit_exact_checked", "bit_exact_samples",
                                            "emulated_samples", "parity_ref", "sizes", "instructions", "latency")
               if key in report}
    if not report["passed"] or report["bit_exact"] is not True:
        error = VerificationError(f"the C engine does not match: bit-exact {report['bit_exact']} "
                                  f"({report['bit_exact_checked']}), vs onnxruntime {report['parity_ref']}")
        error.metrics = metrics
        raise error
    path = engine_dir / "model.c"
    # model.c spells the weights out as C literals (about 4x their bytes): what the device holds is
    # the weights plus the compiled code for its ISA
    arch = ctx.target.device.arch
    code = report["sizes"]["code_bytes"].get(arch)
    meta = {**artifact.meta, "engine_built": True, "publish": {ENGINE_DIR: "."}}
    if code is not None:
        meta["device_bytes"] = {"bytes": report["sizes"]["weight_bytes"] + code, "what": f"weights + {arch} code"}
    return PassResult(Artifact(ENGINE, artifact.spec, sha256_file(path), path=path, meta=meta), metrics)


class CEngineBackend(Backend):
    name = "cengine"
    profiler_ref = "compressor.profile.cengine:PROFILER"
    # a RISC-V board's engine: the host build that verify runs stands in for it
    runs_on_host = False
    # The runner starts a process per call, which would time the process, not the engine: `lower`
    # times the host build in C (toolchain.host_latency_ns) against onnxruntime int8 instead.
    times_itself = True

    def preflight(self, target) -> None:
        preflight(target)

    def lower(self, artifact: Artifact, ctx: RunContext, workdir: Path, config) -> PassResult:
        return lower(artifact, ctx, workdir, config)

    def opens(self, path: Path) -> bool:
        """An engine folder (with its engine.json), or its model.c / engine.json."""
        path = Path(path)
        return (path / "engine.json").is_file() if path.is_dir() else (
            path.name in ("model.c", "engine.json") and (path.parent / "engine.json").is_file())

    def runner(self, path: Path, threads: int | None = None) -> EngineRunner:
        """The host build of the engine whose model.c (or directory) is `path`."""
        path = Path(path)
        return EngineRunner(path if path.is_dir() else path.parent, threads)


BACKEND = CEngineBackend()
