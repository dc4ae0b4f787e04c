"""The `lower` pass for QNN: compile the QDQ ONNX for the profile's chip on the HTP backend and
write the EP context model (`model_ctx.onnx`) with the compiled HTP graph (`model_ctx_qnn.bin`)
beside it: the pair an app ships, which loads without compiling again.

Nodes the HTP refuses are found first, each with the QNN EP's reason. Without
`qnn.allow_cpu_fallback` they fail the run (exit 2) before verification; with it the engine runs
them on the CPU and the report lists them.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from ...artifacts import ENGINE, Artifact, sha256_file, write_atomic
from ...errors import CompressError, first_line
from ...passes import PassResult, RunContext
from .prepare import fix_shapes, fuse_erf_gelu
from .runtime import HtpOptions, create_session, session_options
from .support import Placement, cpu_nodes

ENGINE_DIR = "qnn"  # published as <run>/qnn/: the context model and its binary
CONTEXT_MODEL = "model_ctx.onnx"
STATIC_QDQ = "model_qnn.onnx"  # the QDQ graph at static shapes, what the context was compiled from


def input_shapes(ctx: RunContext, spec) -> dict[str, tuple[int, ...]]:
    """Each input at the held-out data's per-sample size, batch 1 (or the model's static batch)."""
    batch = spec.static_batch or 1
    return {t.name: (batch, *x.shape[1:]) for t, x in zip(spec.inputs, ctx.data.holdout)}


def compile_context(model_path: Path, out_dir: Path, htp: HtpOptions, cpu_fallback: bool) -> Path:
    """Compile `model_path` on the HTP backend into `out_dir/model_ctx.onnx` + its `*.bin`; the files
    appear only once the compilation has finished (the binary first, then the model naming it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".compiling-") as tmp:
        context = Path(tmp) / CONTEXT_MODEL
        options = session_options(htp, cpu_fallback, **{"ep.context_enable": "1", "ep.context_file_path": str(context),
                                                        "ep.context_embed_mode": "0"})
        try:
            create_session(model_path, options)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise CompressError(f"QNN HTP compilation of {model_path.name} failed: {first_line(e)}") from None
        if not context.is_file():
            raise CompressError(f"the QNN execution provider wrote no context model for {model_path.name}")
        binaries = sorted(Path(tmp).glob("*.bin"))
        for binary in binaries:
            binary.replace(out_dir / binary.name)
        context.replace(out_dir / CONTEXT_MODEL)
    return out_dir / CONTEXT_MODEL


def rejected_message(rejected: list[Placement], htp: HtpOptions) -> str:
    listing = "\n  ".join(str(p) for p in rejected)
    return (f"the QNN HTP (v{htp.htp_arch}, soc_model {htp.soc_model}) rejects {len(rejected)} node(s):\n  {listing}\n"
            "change the model, or set qnn.allow_cpu_fallback = true in the target profile to run them on the CPU")


def lower(artifact: Artifact, ctx: RunContext, workdir: Path, config) -> PassResult:
    target = ctx.target
    htp = HtpOptions.of(target)
    shapes = input_shapes(ctx, artifact.spec)
    static = workdir / STATIC_QDQ
    model = onnx.load(str(artifact.path))
    gelus = fuse_erf_gelu(model)
    write_atomic(static, fix_shapes(model, shapes).SerializeToString())
    fallback = target.settings.allow_cpu_fallback
    on_cpu = cpu_nodes(static, htp)
    if on_cpu and not fallback:
        raise CompressError(rejected_message(on_cpu, htp))
    if on_cpu:
        ctx.progress.log(f"  {len(on_cpu)} node(s) run on the CPU (qnn.allow_cpu_fallback): "
                         + ", ".join(f"{p.name} ({p.op})" for p in on_cpu))
    ctx.progress.log(f"  compiling for the HTP v{htp.htp_arch} (soc_model {htp.soc_model}) in the QNN HTP simulator")
    engine = compile_context(static, workdir / ENGINE_DIR, htp, fallback)
    binaries = sorted(p.name for p in engine.parent.glob("*.bin"))
    shipped = engine.stat().st_size + sum((engine.parent / b).stat().st_size for b in binaries)
    # the context model only names the compiled graph: what an app ships is both files
    meta = {**artifact.meta, "engine_built": True, "onnx": f"../{STATIC_QDQ}",
            "publish": {ENGINE_DIR: ".", "model.onnx": f"../{STATIC_QDQ}"},
            "device_bytes": {"bytes": shipped, "what": "context model + compiled HTP graph"}}
    metrics = {"engine_built": True, "htp_arch": htp.htp_arch, "soc_model": htp.soc_model,
               "input_shapes": {k: list(v) for k, v in shapes.items()}, "gelus_fused": gelus, "context_model": CONTEXT_MODEL,
               "context_binaries": binaries, "context_bytes": shipped,
               "cpu_fallback_allowed": fallback, "cpu_nodes": [p.as_dict() for p in on_cpu]}
    return PassResult(Artifact(ENGINE, artifact.spec, sha256_file(engine), path=engine, meta=meta), metrics)
