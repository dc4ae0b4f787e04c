"""MatMul: by a quantized constant (fully connected), or of two activations in float."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..fixedpoint import quantize_multiplier
from ..ir import Buf, Op
from ..values import FV, QV, Unsupported, WV
from .gemm import bias_add, fc
from .registry import handler
from .weights import channel_scales

if TYPE_CHECKING:
    from ..lower import Lowering


@handler("MatMul")
def matmul(L: Lowering, node):
    bv = L.value(node.input[1])
    out_shape = L.shape(node.output[0])
    if isinstance(bv, WV) and isinstance(L.value(node.input[0]), QV):
        a = L.q_input(node.input[0])
        if bv.q.ndim != 2:
            raise Unsupported("MatMul with a weight that is not 2-D")
        K, M = bv.q.shape
        ws = channel_scales(bv, M, 1)
        T = a.numel // K
        fused = bias_add(L, node.output[0], M)
        bias, out_name, extra = (fused[1], fused[0].output[0], [fused[0]]) if fused else (None, None, [])
        fc(L, node, a, np.ascontiguousarray(bv.q.T), ws, bias, T, L.shape(out_name) if out_name else out_shape,
            out_name=out_name, fused=extra)
        return
    va = L.value(node.input[0])
    sink = (L.sink(node.output[0], required=False)
            if isinstance(va, QV) and isinstance(bv, QV) else None)
    if sink is None:
        return _matmul_f32(L, node, L.f_operand(node.input[0]), L.f_operand(node.input[1]), out_shape)
    a, b = va.buf, bv.buf
    T, K, M, batch, bbatch = _matmul_dims(a, b)
    if bbatch not in (1, batch):
        raise Unsupported("MatMul broadcast pattern")
    mult, shift = quantize_multiplier(a.scale * b.scale / sink.scale)
    y = L.new_buf(sink.names[0], out_shape, "i8", sink.scale, sink.zp)
    bstep = K * M if bbatch > 1 else 0
    L.add_op(Op("matmul", [a, b], [y], lambda c: [
        f"for (int i = 0; i < {batch}; i++)",
        f"    ce_matmul_q8({T}, {M}, {K}, {c.ptr(a)} + i * {T * K}, {K}, {a.zp}, {c.ptr(b)} + i * {bstep}, "
        f"{M}, {b.zp}, {c.ptr(y)} + i * {T * M}, {M}, {mult}, {shift}, {sink.zp}, {sink.lo}, {sink.hi});"],
        node=node.name, macs=batch * T * M * K))
    L.use_sink(sink, y)


def _matmul_dims(a: Buf, b: Buf) -> tuple[int, int, int, int, int]:
    """T, K, M and the two operands' batch counts (products of their leading dims) of a @ b."""
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise Unsupported("MatMul of vectors")
    T, K = a.shape[-2:]
    K2, M = b.shape[-2:]
    if K != K2:
        raise Unsupported("MatMul broadcast pattern")
    return (T, K, M, int(np.prod(a.shape[:-2], dtype=np.int64)), int(np.prod(b.shape[:-2], dtype=np.int64)))


def _matmul_f32(L: Lowering, node, a: Buf, b: Buf, out_shape):
    """Float MatMul (attention scores and context): batched over the leading dims, one operand's
    batch may be 1 (broadcast)."""
    T, K, M, abatch, bbatch = _matmul_dims(a, b)
    batch = max(abatch, bbatch)
    if abatch not in (1, batch) or bbatch not in (1, batch) or int(np.prod(out_shape, dtype=np.int64)) != batch * T * M:
        raise Unsupported("MatMul broadcast pattern")
    y = L.new_buf(node.output[0], out_shape, "f32")
    astep, bstep = (T * K if abatch > 1 else 0), (K * M if bbatch > 1 else 0)
    L.add_op(Op("matmul_f32", [a, b], [y], lambda c: [
        f"for (int i = 0; i < {batch}; i++)",
        f"    ce_matmul_f32({T}, {M}, {K}, {c.ptr(a)} + i * {astep}, {K}, {c.ptr(b)} + i * {bstep}, {M}, "
        f"{c.ptr(y)} + i * {T * M}, {M});"], node=node.name, macs=batch * T * M * K))
    L.bind(node.output[0], FV(y))
