"""Pooling on int8 values: MaxPool, AveragePool (with ceil_mode), GlobalAveragePool."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..fixedpoint import quantize_multiplier, quantize_multipliers
from ..ir import Buf, Op
from ..values import QV, Unsupported, node_attr
from .conv import conv_pads
from .registry import handler

if TYPE_CHECKING:
    from ..lower import Lowering


def _pool_geometry(L: Lowering, node, x: Buf, widen: bool = True):
    """C, H, W, Ho, Wo, kernel, strides, dilations, pads (top, left, bottom, right).

    The output size is onnxruntime's: floor or (ceil_mode=1) ceil of (H + pads - (k-1)*d - 1) / s,
    + 1, where with ceil_mode a last window that would start past the input and its top/left pad
    is dropped (ONNX shape inference before opset 22 keeps it; onnxruntime does not). With
    `widen` the bottom/right pads grow so every window lies inside the padded plane (MaxPool's
    padded copy); otherwise they are the model's own (AveragePool needs them for its divisor)."""
    _, C, H, W = x.shape
    k = list(node_attr(node, "kernel_shape"))
    s = list(node_attr(node, "strides", [1, 1]))
    d = list(node_attr(node, "dilations", [1, 1]))
    pads = conv_pads(node, (H, W), k, s, d)
    auto = node_attr(node, "auto_pad", b"NOTSET")
    ceil = bool(node_attr(node, "ceil_mode", 0)) and (auto.decode() if isinstance(auto, bytes) else auto) == "NOTSET"
    out = []
    for i, n in enumerate((H, W)):
        span = n + pads[i] + pads[i + 2] - (k[i] - 1) * d[i] - 1
        o = (-(-span // s[i]) if ceil else span // s[i]) + 1
        if ceil and (o - 1) * s[i] >= n + pads[i]:
            o -= 1
        out.append(o)
    Ho, Wo = out
    if Ho < 1 or Wo < 1:
        raise Unsupported(f"pooling window larger than the padded input ({H}x{W})")
    if widen:  # ceil_mode: widen the bottom/right padding so every window is inside the padded plane
        pads[2] = max(pads[2], (Ho - 1) * s[0] + (k[0] - 1) * d[0] + 1 - H - pads[0])
        pads[3] = max(pads[3], (Wo - 1) * s[1] + (k[1] - 1) * d[1] + 1 - W - pads[1])
    return C, H, W, Ho, Wo, k, s, d, pads


@handler("MaxPool")
def maxpool(L: Lowering, node):
    x = L.q_input(node.input[0])
    if len(x.shape) != 4:
        raise Unsupported("only 2-D pooling is supported")
    if len(node.output) > 1 and node.output[1] and L.consumers.get(node.output[1]):
        raise Unsupported("MaxPool indices output")
    C, H, W, Ho, Wo, k, s, d, p = _pool_geometry(L, node, x)
    y = L.new_buf(node.output[0], (1, C, Ho, Wo), "i8", x.scale, x.zp)
    op = Op("maxpool", [x], [y], None, node=node.name)
    op.scratch = (H + p[0] + p[2]) * (W + p[1] + p[3]) if any(p) else 0

    def emit(c):
        st = c.decl("pool", lambda nm: (
            f"static const ce_pool_t {nm} = {{ {C}, {H}, {W}, {Ho}, {Wo}, {k[0]}, {k[1]}, {s[0]}, {s[1]}, "
            f"{d[0]}, {d[1]}, {p[0]}, {p[1]}, {p[2]}, {p[3]}, {x.zp}, {x.zp}, 0, 0, 0 }};"))
        return [f"ce_maxpool_q8(&{st}, {c.ptr(x)}, {c.ptr(y)}, {c.scratch(op)});"]

    op.emit = emit
    L.add_op(op)
    L.bind(node.output[0], QV(y))


@handler("AveragePool")
def avgpool(L: Lowering, node):
    x = L.q_input(node.input[0])
    if len(x.shape) != 4:
        raise Unsupported("only 2-D pooling is supported")
    C, H, W, Ho, Wo, k, s, d, p = _pool_geometry(L, node, x, widen=False)
    cip = int(node_attr(node, "count_include_pad", 0))
    sink = L.sink(node.output[0])
    n = k[0] * k[1]
    mult, shift = quantize_multipliers([x.scale / (sink.scale * c) for c in range(1, n + 1)])
    cm, cs = L.g.const("m", "int32_t", mult), L.g.const("s", "int32_t", shift)
    y = L.new_buf(sink.names[0], (1, C, Ho, Wo), "i8", sink.scale, sink.zp)
    op = Op("avgpool", [x], [y], None, node=node.name, macs=C * Ho * Wo * n)  # no scratch
    if sink.lo != -128 or sink.hi != 127:
        raise Unsupported("activation fused after AveragePool")

    def emit(c):
        st = c.decl("pool", lambda nm: (
            f"static const ce_pool_t {nm} = {{ {C}, {H}, {W}, {Ho}, {Wo}, {k[0]}, {k[1]}, {s[0]}, {s[1]}, "
            f"{d[0]}, {d[1]}, {p[0]}, {p[1]}, {p[2]}, {p[3]}, {x.zp}, {sink.zp}, {cip}, {cm}, {cs} }};"))
        return [f"ce_avgpool_q8(&{st}, {c.ptr(x)}, {c.ptr(y)}, {c.scratch(op)});"]

    op.emit = emit
    L.add_op(op)
    L.use_sink(sink, y)


@handler("GlobalAveragePool")
def global_avgpool(L: Lowering, node):
    x = L.q_input(node.input[0])
    if len(x.shape) < 3:
        raise Unsupported("GlobalAveragePool on a tensor without spatial dims")
    C = int(x.shape[1])
    hw = int(np.prod(x.shape[2:], dtype=np.int64))
    sink = L.sink(node.output[0])
    if sink.lo != -128 or sink.hi != 127:
        raise Unsupported("activation fused after GlobalAveragePool")
    mult, shift = quantize_multiplier(x.scale / (sink.scale * hw))
    y = L.new_buf(sink.names[0], (1, C) + (1,) * (len(x.shape) - 2), "i8", sink.scale, sink.zp)
    L.add_op(Op("gap", [x], [y], lambda c: [
        f"ce_global_avgpool_q8({C}, {hw}, {c.ptr(x)}, {x.zp}, {c.ptr(y)}, {mult}, {shift}, {sink.zp});"],
        node=node.name, macs=C * hw))
    L.use_sink(sink, y)
