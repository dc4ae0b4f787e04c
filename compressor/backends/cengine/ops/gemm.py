"""Gemm and the fully connected kernel that MatMul by a constant weight shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..fixedpoint import quantize_multipliers
from ..ir import Buf, Op
from ..values import CV, FV, Unsupported, WV, node_attr
from .registry import handler
from .weights import bias_int, channel_scales, check_range

if TYPE_CHECKING:
    from ..lower import Lowering


def fc(L: Lowering, node, a: Buf, wmk: np.ndarray, ws: np.ndarray, bias_name: str | None, T: int,
        out_shape, alpha: float = 1.0, beta: float = 1.0, out_name: str | None = None, fused=()):
    """int8 A x W^T (+ bias): int8 output when a QuantizeLinear follows `out_name`, else float
    (the int32 accumulators scaled). `fused`: nodes (a bias Add) lowered with it."""
    out_name = out_name or node.output[0]
    M, K = wmk.shape
    real_scale = a.scale * ws * alpha
    bias = bias_int(L, bias_name, M, real_scale / beta) if bias_name else np.zeros(M, np.int64)
    bias_c = bias - a.zp * wmk.astype(np.int64).sum(1)
    if np.any(np.abs(bias_c) >= 2**31):
        raise Unsupported("bias out of int32 range")
    sink = L.sink(out_name, required=False)
    cw = L.g.const("w", "int8_t", wmk.astype(np.int8))
    cb = L.g.const("b", "int32_t", bias_c.astype(np.int32))
    macs = T * M * K
    if sink is not None:
        real_m = real_scale / sink.scale
        check_range(255.0 * np.abs(wmk.astype(np.int64)).sum(1) + np.abs(bias), real_m)
        mult, shift = quantize_multipliers(real_m)
        cm = L.g.const("m", "int32_t", mult)
        cs = L.g.const("s", "int32_t", shift)
        y = L.new_buf(sink.names[0], out_shape, "i8", sink.scale, sink.zp)
        L.add_op(Op("fc", [a], [y], lambda c: [
            f"ce_gemm_xw({T}, {M}, {K}, {c.ptr(a)}, {cw}, {c.ptr(y)}, {M}, {cb}, {cm}, {cs}, "
            f"{sink.zp}, {sink.lo}, {sink.hi}, (float *)0, (const float *)0);"],
            node=node.name, macs=macs))
        L.use_sink(sink, y)
    else:  # float output: acc * (s_a * s_w) + bias in float, as onnxruntime computes it
        fbias = (np.broadcast_to(L.const(bias_name).astype(np.float32).reshape(-1), (M,)) * np.float32(beta)
                 if bias_name else None)
        if fbias is not None:
            cb = L.g.const("b", "int32_t", (-a.zp * wmk.astype(np.int64).sum(1)).astype(np.int32))
        cf = L.g.const("fs", "float", real_scale.astype(np.float32))
        y = L.new_buf(out_name, out_shape, "f32")
        lines = lambda c: [  # noqa: E731
            f"ce_gemm_xw({T}, {M}, {K}, {c.ptr(a)}, {cw}, (int8_t *)0, {M}, {cb}, (const int32_t *)0, "
            f"(const int32_t *)0, 0, -128, 127, {c.ptr(y)}, {cf});"]
        if fbias is not None:
            cfb = L.g.const("fb", "float", fbias.astype(np.float32))
            dims, st, sb = (L.g.const("dims", "int32_t", np.asarray([T, M], np.int32)),
                            L.g.const("st", "int32_t", np.asarray([M, 1], np.int32)),
                            L.g.const("st", "int32_t", np.asarray([0, 1], np.int32)))
            lines0 = lines
            lines = lambda c: lines0(c) + [  # noqa: E731
                f"ce_binary_f32(CE_ADD, 2, {dims}, {st}, {sb}, {c.ptr(y)}, {cfb}, {c.ptr(y)});"]
        L.add_op(Op("fc", [a], [y], lines, node=node.name, macs=macs))
        L.bind(out_name, FV(y))
    for n in fused:  # the bias Add is part of this op
        L.skip.add(id(n))


def bias_add(L: Lowering, name: str, M: int):
    """The Add of a constant bias (M values along the last axis) that alone consumes `name` (a
    MatMul exported as MatMul + Add): (add node, bias tensor name), or None."""
    if name in L.graph_outputs:
        return None
    cons = L.data_consumers(name)
    if len(cons) != 1 or cons[0].op_type != "Add" or len(cons[0].input) != 2:
        return None
    add = cons[0]
    other = add.input[1] if add.input[0] == name else add.input[0]
    v = L.val.get(other)
    if other == name or not isinstance(v, (CV, WV)):
        return None
    arr = np.asarray(v.arr if isinstance(v, CV) else v.q)
    if arr.size != M or (arr.ndim and arr.shape[-1] != M) or arr.dtype.kind not in "fi":
        return None
    return add, other


@handler("Gemm")
def gemm(L: Lowering, node):
    a = L.q_input(node.input[0])
    if node_attr(node, "transA", 0):
        raise Unsupported("Gemm with transA=1")
    w = L.weight(node.input[1])
    if len(a.shape) != 2 or w.q.ndim != 2:
        raise Unsupported("Gemm on tensors that are not 2-D")
    trans_b = node_attr(node, "transB", 0)
    wmk = w.q if trans_b else w.q.T
    M = wmk.shape[0]
    ws = channel_scales(w, M, 0 if trans_b else 1)
    alpha, beta = float(node_attr(node, "alpha", 1.0)), float(node_attr(node, "beta", 1.0))
    fc(L, node, a, np.ascontiguousarray(wmk), ws, node.input[2] if len(node.input) > 2 and node.input[2] else None,
        a.shape[0], (a.shape[0], M), alpha, beta)
