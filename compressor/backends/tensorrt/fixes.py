"""Safe automatic fixes for a QDQ graph bound for TensorRT.

Every fix is exact: onnxruntime gives bit-identical outputs before and after (constants are
computed by onnxruntime's own kernels; the Q/DQ rewrites are identities on the quantized values).

- constant folding, dead-node removal and topological sort: onnx-graphsurgeon (NVIDIA's graph
  tool, the one TensorRT's docs point to). Its folding never folds QuantizeLinear /
  DequantizeLinear, which is what a QDQ graph needs.
- DequantizeLinear of an int32/int16 constant (a quantized bias) -> float constant.
- QuantizeLinear of a float constant (a float-stored weight) -> int8 initializer.
- uint8 Q/DQ with zero point 128 -> int8 with zero point 0 (the same values shifted by 128).
- Q(DQ(q)) with identical parameters -> q (a redundant requantization).
- duplicate Q/DQ nodes on one tensor with identical parameters -> one (a horizontal merge).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...errors import CompressError
from .graph import DQ, Q, QDQ_OPS, GraphIndex

FOLD_SIZE_LIMIT = 16 << 20  # bytes: larger computed constants stay as ops (e.g. a huge Expand)

Fix = Callable[[onnx.ModelProto], list[str]]  # edits the model in place, returns what it changed
FIXES: dict[str, Fix] = {}


def fix(name: str):
    def register(fn: Fix) -> Fix:
        FIXES[name] = fn
        return fn
    return register


def autofix(model: onnx.ModelProto, profile=None) -> tuple[onnx.ModelProto, list[str]]:
    """A fixed copy of `model` and a human-readable line per change. `profile` is accepted for
    symmetry with `lint` (no fix depends on it yet)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    changes: list[str] = []
    for fn in FIXES.values():
        changes.extend(fn(fixed))
    try:
        onnx.checker.check_model(fixed)
    except onnx.checker.ValidationError as e:  # a bug here, not the user's: say where it came from
        raise CompressError(f"TensorRT autofix produced an invalid graph: {str(e).splitlines()[0]}") from None
    return fixed, changes


# -- helpers ----------------------------------------------------------------------------------


def _names(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _replace_uses(model: onnx.ModelProto, old: str, new: str) -> None:
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _drop_value_info(model: onnx.ModelProto, names: set[str]) -> None:
    keep = [v for v in model.graph.value_info if v.name not in names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)


def _remove_nodes(model: onnx.ModelProto, doomed: list[onnx.NodeProto]) -> None:
    ids = {id(n) for n in doomed}
    keep = [n for n in model.graph.node if id(n) not in ids]
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _unique_name(model: onnx.ModelProto, base: str) -> str:
    taken = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output} | {
        i.name for i in model.graph.input}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _evaluate(model: onnx.ModelProto, node: onnx.NodeProto, index: GraphIndex) -> np.ndarray:
    """Run one Q or DQ node whose inputs are all constants with onnxruntime: the values it would compute."""
    import onnxruntime as ort

    inits = []
    for name in node.input:
        if name:
            t = TensorProto()
            t.CopyFrom(index.const_tensor(name))
            t.name = name
            inits.append(t)
    if node.op_type == Q:
        elem = index.qparams(node).elem_type
    else:  # DequantizeLinear: the scale's type
        elem = index.elem_type(node.input[1]) or TensorProto.FLOAT
    out = helper.make_tensor_value_info(node.output[0], elem, None)
    graph = helper.make_graph([node], "fold", [], [out], initializer=inits)
    one = helper.make_model(graph, opset_imports=list(model.opset_import))
    one.ir_version = model.ir_version
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(one.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {})[0]


def _fold_node_to_constant(model: onnx.ModelProto, node: onnx.NodeProto, index: GraphIndex) -> bool:
    if node.output[0] in index.graph_outputs:
        return False
    value = _evaluate(model, node, index)
    model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    _drop_value_info(model, {node.output[0]})
    return True


# -- fixes, in the order they run ---------------------------------------------------------------


@fix("constant-fold")
def _constant_fold(model: onnx.ModelProto) -> list[str]:
    before = [n.op_type for n in model.graph.node]
    _graphsurgeon_pass(model, fold=True)
    after = [n.op_type for n in model.graph.node]
    if len(after) >= len(before):
        return []
    gone: dict[str, int] = {}
    for op in before:
        gone[op] = gone.get(op, 0) + 1
    for op in after:
        gone[op] -= 1
    ops = ", ".join(f"{k} x{v}" for k, v in sorted(gone.items()) if v > 0)
    return [f"constant-folded or removed {len(before) - len(after)} nodes that depend on constants only ({ops})"]


def _fold_constant_qdq(model: onnx.ModelProto, op: str, dtypes: tuple[int, ...]) -> tuple[GraphIndex, list]:
    """Evaluate every `op` (Q or DQ) whose input is a constant of one of `dtypes`; its output becomes
    an initializer of the same name."""
    index = GraphIndex(model)
    folded = [node for node in index.nodes
              if node.op_type == op and index.is_const(node.input[0]) and index.elem_type(node.input[0]) in dtypes
              and (op != Q or index.qparams(node).scale is not None) and _fold_node_to_constant(model, node, index)]
    _remove_nodes(model, folded)
    return index, folded


@fix("fold-bias-dq")
def _fold_bias_dq(model: onnx.ModelProto) -> list[str]:
    index, folded = _fold_constant_qdq(model, DQ, (TensorProto.INT32, TensorProto.INT16, TensorProto.UINT16))
    if not folded:
        return []
    return [f"folded {len(folded)} DequantizeLinear of int32/int16 constants (quantized biases, which TensorRT "
            f"does not take) into float constants: {_names([index.label(n) for n in folded])}"]


@fix("fold-weight-q")
def _fold_weight_q(model: onnx.ModelProto) -> list[str]:
    index, folded = _fold_constant_qdq(model, Q, (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16,
                                                   TensorProto.DOUBLE))
    if not folded:
        return []
    return [f"stored {len(folded)} float weights as quantized initializers (folded their QuantizeLinear): "
            f"{_names([index.label(n) for n in folded])}"]


def _is_zp128(index: GraphIndex, node: onnx.NodeProto) -> bool:
    p = index.qparams(node)
    return (p.elem_type == TensorProto.UINT8 and p.zero_point is not None and p.zero_point.size > 0
            and bool(np.all(p.zero_point == 128)))


def uint8_convertible(index: GraphIndex) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """The uint8 (zero point 128) Q and DQ nodes that can become int8 together: a Q whose every consumer is
    such a DQ, and a DQ fed by such a Q or by a uint8 constant."""
    qs = [n for n in index.nodes if n.op_type == Q and _is_zp128(index, n)
          and n.output[0] not in index.graph_outputs
          and all(c.op_type == DQ and _is_zp128(index, c) and c.input[0] == n.output[0]
                  for c in index.consumers.get(n.output[0], []))]
    q_outputs = {n.output[0] for n in qs}
    dqs = [n for n in index.nodes if n.op_type == DQ and _is_zp128(index, n)
           and (n.input[0] in q_outputs or (index.is_const(n.input[0])
                                            and index.elem_type(n.input[0]) == TensorProto.UINT8))]
    return qs, dqs


@fix("uint8-to-int8")
def _uint8_to_int8(model: onnx.ModelProto) -> list[str]:
    index = GraphIndex(model)
    qs, dqs = uint8_convertible(index)
    q_outputs = {n.output[0] for n in qs}
    if not qs and not dqs:
        return []
    zero_names: dict[str, str] = {}

    def int8_zero(zp_name: str) -> str:
        if zp_name not in zero_names:
            zp = index.const_array(zp_name)
            name = _unique_name(model, f"{zp_name}_int8")
            model.graph.initializer.append(numpy_helper.from_array(np.zeros(zp.shape, np.int8), name))
            zero_names[zp_name] = name
        return zero_names[zp_name]

    shifted: dict[str, str] = {}
    for node in qs + dqs:
        if node.op_type == DQ and node.input[0] not in q_outputs:
            src = node.input[0]
            if src not in shifted:
                data = index.const_array(src).astype(np.int16) - 128
                shifted[src] = _unique_name(model, f"{src}_int8")
                model.graph.initializer.append(numpy_helper.from_array(data.astype(np.int8), shifted[src]))
            node.input[0] = shifted[src]
        node.input[2] = int8_zero(node.input[2])
    _drop_value_info(model, q_outputs)
    return [f"rewrote {len(qs) + len(dqs)} uint8 Q/DQ with zero point 128 as int8 with zero point 0 (same values): "
            f"{_names([index.label(n) for n in qs + dqs])}"]


@fix("collapse-requantize")
def _collapse_requantize(model: onnx.ModelProto) -> list[str]:
    index = GraphIndex(model)
    removed = []
    for node in index.nodes:
        if node.op_type != Q or node.output[0] in index.graph_outputs:
            continue
        dq = index.producer.get(node.input[0])
        if dq is None or dq.op_type != DQ:
            continue
        if index.qparams(dq).same_as(index.qparams(node)):
            _replace_uses(model, node.output[0], dq.input[0])
            removed.append(node)
    _remove_nodes(model, removed)
    if not removed:
        return []
    return [f"removed {len(removed)} redundant requantizations Q(DQ(x)) with the same scale and zero point: "
            f"{_names([index.label(n) for n in removed])}"]


@fix("merge-duplicate-qdq")
def _merge_duplicates(model: onnx.ModelProto) -> list[str]:
    index = GraphIndex(model)
    kept: dict[tuple[str, str], list[onnx.NodeProto]] = {}
    removed = []
    for node in index.nodes:
        if node.op_type not in QDQ_OPS:
            continue
        group = kept.setdefault((node.op_type, node.input[0]), [])
        p = index.qparams(node)
        twin = next((k for k in group if index.qparams(k).same_as(p)), None)
        if twin is None or node.output[0] in index.graph_outputs:
            group.append(node)
            continue
        _replace_uses(model, node.output[0], twin.output[0])
        removed.append(node)
    _remove_nodes(model, removed)
    if not removed:
        return []
    return [f"merged {len(removed)} duplicate Q/DQ nodes (same tensor, same parameters): "
            f"{_names([index.label(n) for n in removed])}"]


@fix("cleanup")
def _cleanup(model: onnx.ModelProto) -> list[str]:
    nodes, inits = len(model.graph.node), len(model.graph.initializer)
    _graphsurgeon_pass(model, fold=False)
    dn, di = nodes - len(model.graph.node), inits - len(model.graph.initializer)
    parts = [f"{n} {what}" for n, what in ((dn, "dead nodes"), (di, "unused initializers")) if n > 0]
    return [f"removed {' and '.join(parts)}"] if parts else []


def _graphsurgeon_pass(model: onnx.ModelProto, fold: bool) -> None:
    """Constant folding (optional), cleanup and toposort with onnx-graphsurgeon, in place."""
    try:
        import onnx_graphsurgeon as gs
    except ImportError:
        raise CompressError("the TensorRT backend needs onnx-graphsurgeon: pip install onnx-graphsurgeon==0.6.1") from None
    graph = gs.import_onnx(model)
    if fold:
        graph.fold_constants(size_threshold=FOLD_SIZE_LIMIT, error_ok=True)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    keep = {f: getattr(model, f) for f in ("ir_version", "producer_name", "producer_version", "domain",
                                            "model_version", "doc_string")}
    props = list(model.metadata_props)
    opsets = list(model.opset_import)
    model.CopyFrom(out)
    for f, v in keep.items():
        setattr(model, f, v)
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    del model.opset_import[:]
    model.opset_import.extend(opsets)


def describe(changes: list[str]) -> str:
    return "\n".join(f"- {c}" for c in changes) if changes else "- nothing to fix"

