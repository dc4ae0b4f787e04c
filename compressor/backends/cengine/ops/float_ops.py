"""Float islands: Softmax, LayerNormalization, Gelu (where int8 hurts accuracy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..ir import Op
from ..values import FV, Unsupported, flt, node_attr
from .registry import handler

if TYPE_CHECKING:
    from ..lower import Lowering


def _last_axis_rows(shape, axis) -> tuple[int, int]:
    axis = axis % len(shape)
    cols = int(np.prod(shape[axis:], dtype=np.int64))
    return int(np.prod(shape, dtype=np.int64)) // cols, cols


@handler("Softmax")
def softmax(L: Lowering, node):
    x = L.f_input(node.input[0])
    opset = max((o.version for o in L.model.opset_import if o.domain in ("", "ai.onnx")), default=13)
    axis = node_attr(node, "axis", -1 if opset >= 13 else 1) % len(x.shape)
    if opset >= 13 and axis != len(x.shape) - 1:
        raise Unsupported("Softmax over an axis other than the last")
    rows, cols = _last_axis_rows(x.shape, axis)
    y = L.new_buf(node.output[0], x.shape, "f32")
    L.add_op(Op("softmax", [x], [y], lambda c: [
        f"ce_softmax_f32({rows}, {cols}, {c.ptr(x)}, {c.ptr(y)});"], node=node.name))
    L.bind(node.output[0], FV(y))


@handler("LayerNormalization")
def layernorm(L: Lowering, node):
    x = L.f_input(node.input[0])
    axis = node_attr(node, "axis", -1) % len(x.shape)
    rows, cols = _last_axis_rows(x.shape, axis)
    eps = float(node_attr(node, "epsilon", 1e-5))
    gamma = L.const(node.input[1]).astype(np.float32).reshape(-1)
    beta = (L.const(node.input[2]).astype(np.float32).reshape(-1)
            if len(node.input) > 2 and node.input[2] else None)
    if gamma.size != cols or (beta is not None and beta.size != cols):
        raise Unsupported("LayerNormalization scale/bias shape")
    cg = L.g.const("gamma", "float", gamma)
    cb = L.g.const("beta", "float", beta) if beta is not None else "(const float *)0"
    y = L.new_buf(node.output[0], x.shape, "f32")
    for o in node.output[1:]:
        if o and L.consumers.get(o):
            raise Unsupported("LayerNormalization mean/inv-std outputs")
    L.add_op(Op("layernorm", [x], [y], lambda c: [
        f"ce_layernorm_f32({rows}, {cols}, {c.ptr(x)}, {cg}, {cb}, {flt(eps)}, {c.ptr(y)});"],
        node=node.name))
    L.bind(node.output[0], FV(y))


@handler("Gelu")
def gelu(L: Lowering, node):
    approx = node_attr(node, "approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    if approx != "none":
        raise Unsupported("Gelu with approximate='tanh'")
    x = L.f_input(node.input[0])
    y = L.new_buf(node.output[0], x.shape, "f32")
    L.add_op(Op("gelu", [x], [y], lambda c: [
        f"ce_gelu_f32({x.numel}, {c.ptr(x)}, {c.ptr(y)});"], node=node.name, inplace=0))
    L.bind(node.output[0], FV(y))
