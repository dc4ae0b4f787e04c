"""Model preparation for the lowering: fix the symbolic input dimensions and know every tensor's shape.

Shapes are static: the batch (the first dimension of every input) is 1 and every other symbolic
input dimension takes its value from `dims` (by name, e.g. {"sequence": 128}) or DEFAULT_DIM.
ONNX shape inference comes first; what it cannot resolve, onnxruntime tells by running the model
once at those shapes.
"""

from __future__ import annotations

import numpy as np
import onnx

from compressor.errors import CompressError, first_line

from .values import node_attr

DEFAULT_DIM = 128  # a symbolic input dimension other than the batch (e.g. the sequence length)


def resolve_dims(model: onnx.ModelProto, dims: dict[str, int] | None = None) -> dict[str, int]:
    """Value of every symbolic input dimension: the batch (axis 0) is 1, others from `dims` by name
    (or DEFAULT_DIM). Unnamed dimensions get keys like 'input_ids:1'."""
    dims = {str(k): int(v) for k, v in (dims or {}).items()}
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, int] = {}
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            key = d.dim_param or f"{vi.name}:{axis}"
            if key in out:
                continue
            out[key] = dims.get(key, 1 if axis == 0 else DEFAULT_DIM)
            if out[key] < 1:
                raise CompressError(f"dimension '{key}' must be at least 1, got {out[key]}")
    return out


def prepare_model(model: onnx.ModelProto, dims: dict[str, int] | None = None,
                  notes: list[str] | None = None) -> onnx.ModelProto:
    """Copy, fix the symbolic input dimensions (`resolve_dims`), infer all shapes (`notes` gets
    why onnxruntime could not run the model at those shapes, if it could not)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    values = resolve_dims(m, dims)
    inits = {i.name for i in m.graph.initializer}
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        is_input = any(vi is i for i in m.graph.input)
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if not d.HasField("dim_value") or d.dim_value <= 0:
                key = d.dim_param or f"{vi.name}:{axis}"
                if key in values or is_input or axis == 0:
                    v = values.get(key, 1)
                    d.Clear()
                    d.dim_value = v
                else:  # an output dimension no input names: left to shape inference
                    d.Clear()
    del m.graph.value_info[:]
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception as e:  # noqa: BLE001 - report as a user error
        raise CompressError(f"ONNX shape inference failed: {e}") from e
    _forget_shapes_after_ceil_pools(m)
    why = _fill_shapes_with_onnxruntime(m)
    if why and notes is not None:
        notes.append(why)
    return m


CEIL_POOLS = ("MaxPool", "AveragePool", "LpPool")


def _forget_shapes_after_ceil_pools(m: onnx.ModelProto) -> None:
    """Before opset 22, ONNX shape inference keeps a ceil_mode pool's last window where it would
    start past the input and its top/left pad; onnxruntime (and our kernels) drop it. Forget the
    inferred shapes from such a pool on, so onnxruntime's take their place."""
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 22)
    if opset >= 22:
        return
    stale = {o for n in m.graph.node if n.op_type in CEIL_POOLS and node_attr(n, "ceil_mode", 0) for o in n.output}
    if not stale:
        return
    for n in m.graph.node:  # topological order: a node reading a stale tensor makes its outputs stale
        if any(i in stale for i in n.input):
            stale.update(n.output)
    keep = [vi for vi in m.graph.value_info if vi.name not in stale]
    del m.graph.value_info[:]
    m.graph.value_info.extend(keep)
    for vi in m.graph.output:
        if vi.name in stale:
            vi.type.tensor_type.ClearField("shape")


def run_at_static_shapes(m: onnx.ModelProto, outputs: list[str]):
    """Run the (shape-fixed) model once with onnxruntime on zero inputs, fetching `outputs`:
    (arrays, None), or (None, why it failed)."""
    try:
        import onnxruntime as ort
        from onnx import helper

        probe = onnx.ModelProto()
        probe.CopyFrom(m)
        del probe.graph.output[:]
        probe.graph.output.extend(helper.make_empty_tensor_value_info(o) for o in outputs)
        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
        inits = {i.name for i in m.graph.initializer}
        feeds = {}
        for vi in m.graph.input:
            if vi.name in inits:
                continue
            t = vi.type.tensor_type
            dt = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
            feeds[vi.name] = np.zeros([d.dim_value for d in t.shape.dim], dt)
        return sess.run(None, feeds), None
    except Exception as e:  # noqa: BLE001 - reported by the caller
        return None, first_line(e)


def _fill_shapes_with_onnxruntime(m: onnx.ModelProto) -> str | None:
    """Shapes ONNX inference could not resolve (shape arithmetic, Expand, Where, ...): run the
    model once with onnxruntime on zero inputs and read every intermediate tensor's shape.
    Returns why that failed (None when it ran or was not needed)."""
    known = {vi.name for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)
             if vi.type.tensor_type.HasField("shape")
             and all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)}
    known |= {i.name for i in m.graph.initializer}
    missing = [o for n in m.graph.node for o in n.output if o and o not in known]
    if not missing:
        return None
    outs, why = run_at_static_shapes(m, missing)
    if outs is None:
        return why
    for name, arr in zip(missing, outs):
        arr = np.asarray(arr)
        m.graph.value_info.append(onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)))
    return None

