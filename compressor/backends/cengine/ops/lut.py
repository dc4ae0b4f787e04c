"""Fusion: an element-wise function of one int8 tensor -> a 256-entry table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..ir import Buf, Op
from ..values import CV, QV, Unsupported, WV, node_attr
from .registry import FUSIONS

if TYPE_CHECKING:
    from ..lower import Lowering


LUT_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Erf", "Tanh", "Sigmoid", "Relu", "Clip", "Sqrt", "Exp", "Log",
                     "Neg", "Abs", "Pow", "Reciprocal", "Identity", "Softplus", "Elu", "LeakyRelu", "HardSigmoid",
                     "HardSwish", "Gelu", "Max", "Min", "Cast", "Floor", "Ceil", "Round", "Sign", "Mish"})


# single ops the int8 handlers already run exactly (requantizations, clamps)
AFFINE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Relu", "Clip", "Identity", "Cast"})


def _const_array(L: Lowering, name: str):
    v = L.val.get(name)
    if isinstance(v, CV):
        return np.asarray(v.arr)
    if isinstance(v, WV):
        return v.dequant()
    p = L.producer.get(name)
    if p is not None and p.op_type == "Constant" and v is None:
        a = next((a for a in p.attribute if a.name == "value"), None)
        return onnx.numpy_helper.to_array(a.t) if a is not None else None
    return None


def _lut_node_ok(L: Lowering, n, known: set[str]) -> bool:
    if n.op_type not in LUT_OPS or (n.op_type == "Cast" and node_attr(n, "to") != onnx.TensorProto.FLOAT):
        return False
    for i in n.input:
        if not i or i in known:
            continue
        c = _const_array(L, i)
        if c is None or c.size != 1:
            return False
    return True


def lut_island(L: Lowering, node) -> bool:
    """The element-wise ops between a DequantizeLinear and a QuantizeLinear that are functions of
    that one int8 tensor (GELU as Div -> Erf -> Add -> Mul -> Mul, SiLU, tanh, ...) become one table
    lookup: the table is the QDQ graph itself, run by onnxruntime on all 256 int8 values."""
    if node.op_type not in LUT_OPS:
        return False
    srcs = {i for i in node.input if i and _const_array(L, i) is None}
    if len(srcs) != 1:
        return False
    x = srcs.pop()
    xv = L.val.get(x)
    if not isinstance(xv, QV) or not _lut_node_ok(L, node, {x}):
        return False
    pos = L.order[id(node)]
    members = {id(node): node}
    known = {x, *[o for o in node.output if o]}

    def backfill(name: str, depth: int = 0):
        """Nodes (after `node`) computing `name` from x and constants alone, or None."""
        if name in known or _const_array(L, name) is not None:
            return []
        p = L.producer.get(name)
        if p is None or depth > 8 or L.order.get(id(p), -1) <= pos or p.op_type not in LUT_OPS:
            return None
        got = [p]
        for i in p.input:
            if i:
                sub = backfill(i, depth + 1)
                if sub is None:
                    return None
                got += sub
        return got

    changed = True
    while changed and len(members) < 32:
        changed = False
        for name in list(known - {x}):
            for c in L.consumers.get(name, []):
                if id(c) in members or c.op_type == "QuantizeLinear" or c.op_type not in LUT_OPS:
                    continue
                extra = []
                for i in c.input:
                    if i and i not in known and _const_array(L, i) is None:
                        sub = backfill(i)
                        if sub is None:
                            extra = None
                            break
                        extra += sub
                if extra is None:
                    continue
                trial = known | {o for e in extra for o in e.output if o}
                if not all(_lut_node_ok(L, e, trial) for e in extra) or not _lut_node_ok(L, c, trial):
                    continue
                for e in extra + [c]:
                    members[id(e)] = e
                    known.update(o for o in e.output if o)
                changed = True
    if len(members) < 2 and node.op_type in AFFINE_OPS:
        return False
    exits = []
    for m in members.values():
        for o in m.output:
            if not o:
                continue
            outside = [c for c in L.consumers.get(o, []) if id(c) not in members]
            if o in L.graph_outputs or any(c.op_type != "QuantizeLinear" for c in outside):
                return False
            if outside:
                exits.append((o, outside))
    if len(exits) != 1:
        return False
    out, qs = exits[0]
    try:
        params = {(np.float32(s), z) for s, z in (L._q_params(q) for q in qs)}
    except Unsupported:  # not an int8 per-tensor QuantizeLinear: the handlers report it
        return False
    if len(params) != 1:
        return False
    s, z = L._q_params(qs[0])
    order = sorted(members.values(), key=lambda n: L.order[id(n)])
    table = _tabulate(L, x, xv.buf, order, qs[0])
    xb = xv.buf
    ct = L.g.const("lut", "int8_t", table)
    y = L.new_buf(qs[0].output[0], xb.shape, "i8", s, z)
    L.add_op(Op("lut", [xb], [y], lambda c: [f"ce_lut_q8({xb.numel}, {c.ptr(xb)}, {ct}, {c.ptr(y)});"],
                node=",".join(n.name for n in order), inplace=0))
    for n in list(order) + list(qs):
        L.skip.add(id(n))
    L.bind([q.output[0] for q in qs], QV(y))
    return True


def _tabulate(L: Lowering, x: str, xb: Buf, nodes, q) -> np.ndarray:
    """Run the nodes and the QuantizeLinear on the 256 dequantized int8 values (onnxruntime, no
    graph optimizations: the QDQ semantics the engine matches)."""
    from onnx import helper

    vals = (np.arange(-128, 128, dtype=np.int32) - xb.zp).astype(np.float32) * np.float32(xb.scale)
    inits, seen = [], {x}
    for n in list(nodes) + [q]:
        for i in n.input:
            if i and i not in seen and not any(i in m.output for m in nodes):
                seen.add(i)
                inits.append(onnx.numpy_helper.from_array(np.asarray(_const_array(L, i)), i))
    graph = helper.make_graph(list(nodes) + [q], "lut", [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [256])],
                              [helper.make_empty_tensor_value_info(q.output[0])], inits)
    model = helper.make_model(graph, opset_imports=list(L.model.opset_import))
    model.ir_version = L.model.ir_version
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        out = sess.run(None, {x: vals})[0]
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        out = ReferenceEvaluator(model).run(None, {x: vals})[0]
    out = np.asarray(out).reshape(-1)
    if out.size != 256 or out.dtype != np.int8:
        raise Unsupported("element-wise chain does not map int8 to int8 one to one")
    return out.astype(np.int8)


FUSIONS.append(lut_island)
