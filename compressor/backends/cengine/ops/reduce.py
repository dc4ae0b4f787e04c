"""Reductions: ReduceMean over int8 values (requantized), and the float reductions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..fixedpoint import quantize_multiplier
from ..ir import Op
from ..values import FV, QV, Unsupported, node_attr
from .registry import handler

if TYPE_CHECKING:
    from ..lower import Lowering


@handler("ReduceMean")
def reduce_mean(L: Lowering, node):
    """Mean over trailing axes (e.g. a global average pool exported as ReduceMean): int8 when a
    QuantizeLinear follows, float otherwise."""
    v = L.value(node.input[0])
    sink = L.sink(node.output[0], required=False) if isinstance(v, QV) else None
    axes = reduce_axes(L, node, len(L.shape(node.input[0])))
    r = len(L.shape(node.input[0]))
    if sink is None or axes != list(range(r - len(axes), r)):
        return reduce_f32(L, node)
    x = L.q_input(node.input[0])
    rows = int(np.prod(x.shape[: r - len(axes)], dtype=np.int64))
    n = int(np.prod(x.shape[r - len(axes):], dtype=np.int64))
    if sink.lo != -128 or sink.hi != 127:
        raise Unsupported("activation fused after ReduceMean")
    mult, shift = quantize_multiplier(x.scale / (sink.scale * n))
    y = L.new_buf(sink.names[0], L.shape(node.output[0]), "i8", sink.scale, sink.zp)
    L.add_op(Op("gap", [x], [y], lambda c: [
        f"ce_global_avgpool_q8({rows}, {n}, {c.ptr(x)}, {x.zp}, {c.ptr(y)}, {mult}, {shift}, {sink.zp});"],
        node=node.name, macs=rows * n))
    L.use_sink(sink, y)


REDUCE = {"ReduceSum": "CE_RSUM", "ReduceMean": "CE_RMEAN", "ReduceMax": "CE_RMAX", "ReduceMin": "CE_RMIN",
          "ReduceSumSquare": "CE_RSUMSQ", "ReduceL2": "CE_RL2"}


def reduce_axes(L: Lowering, node, r: int) -> list[int]:
    axes = node_attr(node, "axes")
    if len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in L.const(node.input[1]).reshape(-1)]
    if not axes:
        if node_attr(node, "noop_with_empty_axes", 0):
            raise Unsupported(f"{node.op_type} with noop_with_empty_axes")
        axes = list(range(r))
    return sorted(int(a) % r for a in axes)


@handler("ReduceSum", "ReduceMax", "ReduceMin", "ReduceSumSquare", "ReduceL2")
def reduce_f32(L: Lowering, node):
    x = L.f_input(node.input[0])
    r = len(x.shape)
    axes = reduce_axes(L, node, r)
    if axes != list(range(axes[0], axes[-1] + 1)):
        raise Unsupported(f"{node.op_type} over axes that are not adjacent")
    outer = int(np.prod(x.shape[:axes[0]], dtype=np.int64))
    n = int(np.prod(x.shape[axes[0]:axes[-1] + 1], dtype=np.int64))
    inner = int(np.prod(x.shape[axes[-1] + 1:], dtype=np.int64))
    y = L.new_buf(node.output[0], L.shape(node.output[0]), "f32")
    if y.numel != outer * inner:
        raise Unsupported(f"{node.op_type} output shape")
    op = REDUCE[node.op_type]
    L.add_op(Op("reduce_f32", [x], [y], lambda c: [
        f"ce_reduce_f32({op}, {outer}, {n}, {inner}, {c.ptr(x)}, {c.ptr(y)});"], node=node.name))
    L.bind(node.output[0], FV(y))
