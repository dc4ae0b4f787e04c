"""QuantizeLinear / DequantizeLinear, requantization, and Relu/Clip (a clamp, on int8 or float values)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..fixedpoint import quantize_value, small_multipliers
from ..ir import Buf, Op
from ..values import CV, FV, QV, Unsupported, WV, flt, node_attr
from .registry import handler

if TYPE_CHECKING:
    from ..lower import Lowering


@handler("DequantizeLinear")
def dequantize_linear(L: Lowering, node):
    v = L.value(node.input[0])
    scale = L.const(node.input[1]).astype(np.float64)
    zp = (L.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.int8))
    axis = node_attr(node, "axis", 1)
    if isinstance(v, WV):  # Q -> DQ of a constant: the quantized constant itself
        L.bind(node.output[0], v)
        return
    if isinstance(v, CV):
        q = v.arr
        if q.dtype not in (np.int8, np.uint8, np.int32):
            raise Unsupported(f"DequantizeLinear of a {q.dtype} initializer")
        if q.dtype == np.uint8:
            raise Unsupported("uint8 weights (int8 symmetric weights expected)")
        L.bind(node.output[0], WV(q, scale, zp.astype(np.int64), axis % max(q.ndim, 1)))
        return
    if isinstance(v, QV):
        b = v.buf
        if scale.size != 1:
            raise Unsupported("per-channel activation dequantization")
        s, z = float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])
        if zp.dtype != np.int8:
            raise Unsupported(f"{zp.dtype} activations (int8 expected)")
        if b.same_quant(s, z):
            L.bind(node.output[0], QV(b))
        else:  # the same bytes read with other parameters
            L.bind(node.output[0], QV(Buf(L.unique(b.name + "_v"), b.shape, "i8", s, z, alias=b)))
        return
    raise Unsupported("DequantizeLinear of a float tensor")


@handler("QuantizeLinear")
def quantize_linear(L: Lowering, node):
    v = L.value(node.input[0])
    s, z = L._q_params(node)
    out = node.output[0]
    if isinstance(v, FV):
        fb = v.buf
        qb = L.new_buf(out, fb.shape, "i8", s, z)
        n = fb.numel
        L.add_op(Op("quantize", [fb], [qb], lambda c: [
            f"ce_quantize_f32({n}, {c.ptr(fb)}, {flt(s)}, {z}, {c.ptr(qb)});"], node=node.name))
        ext = fb.root().external or ""
        if ext.startswith("in:"):
            L.g.input_quants[int(ext[3:])] = (s, z)
        L.bind(out, QV(qb))
    elif isinstance(v, QV):
        x = v.buf
        if x.same_quant(s, z):
            L.bind(out, QV(x))
        else:
            L.bind(out, QV(requant(L, x, s, z, -128, 127, out, node.name)))
    elif isinstance(v, (CV, WV)):
        arr = v.arr if isinstance(v, CV) else v.dequant()
        q = np.clip(np.rint(arr.astype(np.float32) / np.float32(s)) + z, -128, 127).astype(np.int8)
        L.bind(out, WV(q, np.asarray(s, np.float64), np.asarray(z, np.int64), 0))
    else:
        raise Unsupported("QuantizeLinear of an unsupported value")


def requant(L: Lowering, x: Buf, s: float, z: int, lo: int, hi: int, name: str, node_name: str) -> Buf:
    """int8 -> int8 with other quantization parameters (and a clamp range)."""
    (m,), shift = small_multipliers([x.scale / s])
    y = L.new_buf(name, x.shape, "i8", s, z)
    n = x.numel
    L.add_op(Op("requant", [x], [y], lambda c: [
        f"ce_requant_q8({n}, {c.ptr(x)}, {x.zp}, {m}, {shift}, {c.ptr(y)}, {z}, {lo}, {hi});"],
        node=node_name, inplace=0))
    return y


@handler("Relu", "Clip")
def relu_clip(L: Lowering, node):
    v = L.value(node.input[0])
    if isinstance(v, FV):
        x = v.buf
        lo_r, hi_r = (0.0, None) if node.op_type == "Relu" else L._clip_range(node)
        y = L.new_buf(node.output[0], x.shape, "f32")
        lo_s = flt(lo_r) if lo_r is not None else "-INFINITY"
        hi_s = flt(hi_r) if hi_r is not None else "INFINITY"
        L.add_op(Op("relu_f32", [x], [y], lambda c: [
            f"ce_relu_f32({x.numel}, {c.ptr(x)}, {c.ptr(y)}, {lo_s}, {hi_s});"], node=node.name, inplace=0))
        L.bind(node.output[0], FV(y))
        return
    x = L.q_input(node.input[0])
    lo_r, hi_r = (0.0, None) if node.op_type == "Relu" else L._clip_range(node)
    sink = L.sink(node.output[0], required=False)
    s, z = (sink.scale, sink.zp) if sink else (x.scale, x.zp)
    lo = max(sink.lo if sink else -128, quantize_value(lo_r, s, z) if lo_r is not None else -128)
    hi = min(sink.hi if sink else 127, quantize_value(hi_r, s, z) if hi_r is not None else 127)
    name = sink.names[0] if sink else node.output[0]
    if x.same_quant(s, z):
        y = L.new_buf(name, x.shape, "i8", s, z)
        L.add_op(Op("clamp", [x], [y], lambda c: [
            f"ce_clamp_q8({x.numel}, {c.ptr(x)}, {c.ptr(y)}, {lo}, {hi});"], node=node.name, inplace=0))
    else:
        y = requant(L, x, s, z, lo, hi, name, node.name)
    if sink:
        L.use_sink(sink, y)
    else:
        L.bind(node.output[0], QV(y))
