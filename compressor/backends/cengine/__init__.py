"""C engine backend: a QDQ ONNX model -> a self-contained C99 int8 engine for RISC-V (and hosts).

    info = generate(Path("model_qdq.onnx"), Path("out/engine"))   # model.h, model.c, Makefile, ...
    binary = compile_engine(Path("out/engine"), "rv64gcv")        # clang-16, RVV 1.0 kernels
    y = run_engine(Path("out/engine"), x, "rv64gcv")              # under qemu-riscv64
    report = verify(Path("model_qdq.onnx"), Path("out/engine"), x)

The engine takes the model's inputs as they are (float32, quantized inside with the model's
input QuantizeLinear parameters; int64 token ids and attention masks; int8), at batch 1 and static
shapes (`dims` gives symbolic dimensions such as the sequence length), and writes one float32
output. Kernels live in native/cengine/ and are copied into every engine directory, so it can be
copied to a board as is. A multi-input model's inputs go to `run_engine` as a list of arrays.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from compressor.errors import CompressError

from .lower import Lowering
from .memplan import apply_inplace, live_bytes, plan
from .toolchain import (APT_INSTALL, ARCHS, RiscvToolchain, code_bytes, compile_engine, count_instructions,
                        host_latency_ns, make_runner, missing_tools, run_engine)

__all__ = ["unsupported_ops", "unsupported_nodes", "generate", "compile_engine", "run_engine",
           "count_instructions", "verify", "ARCHS", "APT_INSTALL", "missing_tools", "host_latency_ns",
           "code_bytes", "make_runner", "RiscvToolchain"]

# im2col tiles may use up to this share of the peak live activations (and at least 2 KiB)
SCRATCH_SHARE = 0.125


def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(str(model))
    except Exception as e:  # noqa: BLE001
        raise CompressError(f"cannot read ONNX model '{model}': {e}") from e


def unsupported_nodes(model, dims: dict[str, int] | None = None) -> list[tuple[str, str, str]]:
    """(op type, node name, reason) for every node the C engine cannot run."""
    low = Lowering(_load(model), dims=dims)
    low.run()
    return low.errors


def unsupported_ops(model: onnx.ModelProto, dims: dict[str, int] | None = None) -> list[str]:
    """Op types (in graph order, each once) of the nodes the C engine cannot run; [] if none."""
    seen: list[str] = []
    for op, _, _ in unsupported_nodes(model, dims):
        if op not in seen:
            seen.append(op)
    return seen


def _format_errors(errors, structure=()) -> str:
    ops = []
    for op, _, _ in errors:
        if op not in ops:
            ops.append(op)
    lines = [f"  {op} '{name}': {why}" for op, name, why in errors]
    parts = list(structure)
    if errors:
        parts.append(f"the C engine cannot run {len(errors)} node(s) of this model; unsupported ops: "
                     f"{', '.join(ops)}\n" + "\n".join(lines))
    return "\n".join(parts)


def _tune_scratch(graph) -> None:
    peak, _ = live_bytes(graph)
    budget = max(2048, int(peak * SCRATCH_SHARE))
    for op in graph.ops:
        if op.params.get("general"):
            K, ohw = op.params["K"], op.params["ohw"]
            nt = max(16, (budget // K) // 16 * 16)
            nt = min(nt, 256, ohw)
            op.params["ntile"] = nt
            op.scratch = K * nt + 32  # + slack for the host's 32-byte vector moves


DTYPE_NAME = {"f32": "float32", "i8": "int8", "i64": "int64", "i32": "int32", "u8": "bool"}


def generate(onnx_path: Path, out_dir: Path, name: str = "model", dims: dict[str, int] | None = None,
             toolchain: RiscvToolchain | None = None) -> dict:
    """Write <name>.h, <name>.c, runner.c, Makefile and cengine/ (kernels) into out_dir.

    `dims`: values of symbolic input dimensions by name, e.g. {"sequence": 128} (the batch is
    always 1; unnamed ones default to lower.DEFAULT_DIM). `toolchain`: the RISC-V cross compiler,
    emulator and VLEN the Makefile and every later build and run use (default: rv64gcv.toml's,
    clang-16, qemu-riscv64, VLEN 128). Raises CompressError listing every
    unsupported node before writing anything. Returns the engine info (also saved as
    out_dir/engine.json).
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not name.isidentifier():
        raise CompressError(f"engine name '{name}' is not a C identifier")
    low = Lowering(_load(onnx_path), name, dims)
    graph = low.run()
    if low.errors or low.structure_errors:
        raise CompressError(_format_errors(low.errors, low.structure_errors))
    apply_inplace(graph)
    _tune_scratch(graph)
    mem = plan(graph)
    from .emit import write_engine

    toolchain = toolchain or RiscvToolchain()
    write_engine(out_dir, graph, mem, name, onnx_path.name, toolchain)
    ob = graph.output
    kinds: dict[str, int] = {}
    for op in graph.ops:
        kinds[op.kind] = kinds.get(op.kind, 0) + 1
    inputs = [{"name": nm, "shape": list(b.shape), "dtype": DTYPE_NAME[b.dtype],
               "scale": q[0] if q else None, "zero_point": q[1] if q else None}
              for nm, b, q in zip(graph.input_names, graph.inputs, graph.input_quants)]
    info = {
        "name": name,
        "source": str(onnx_path),
        "input": inputs[0],
        "inputs": inputs,
        "dims": dict(low.dims),
        "output": {"name": graph.output_name, "shape": list(ob.shape), "dtype": "float32",
                   "scale": graph.output_quant[0] if graph.output_quant else None,
                   "zero_point": graph.output_quant[1] if graph.output_quant else None},
        "arena_bytes": mem.arena_bytes,
        "peak_live_bytes": mem.peak_live,
        "scratch_max_bytes": mem.scratch_max,
        "weight_bytes": graph.weight_bytes,
        "macs": graph.macs,
        "n_ops": len(graph.ops),
        "ops": kinds,
        "layers": [{"kind": op.kind, "node": op.node} for op in graph.ops],  # kernel calls in order (profiling)
        "toolchain": toolchain.to_json(),
        "files": sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()
                        and "build" not in p.parts),
    }
    (out_dir / "engine.json").write_text(json.dumps(info, indent=2))
    return info


def verify(onnx_path: Path, out_dir: Path, inputs, **kw) -> dict:
    from .verification import verify as _verify

    return _verify(onnx_path, out_dir, inputs, **kw)
