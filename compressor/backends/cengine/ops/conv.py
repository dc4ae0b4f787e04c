"""Conv: int8 convolution with the following QuantizeLinear fused (fixed-point requantization)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..fixedpoint import quantize_multipliers
from ..ir import Op
from ..values import Unsupported, node_attr
from .registry import handler
from .weights import bias_int, channel_scales, check_range

if TYPE_CHECKING:
    from ..lower import Lowering


def conv_pads(node, in_hw, k, s, d):
    pads = list(node_attr(node, "pads", [0, 0, 0, 0]))
    auto = node_attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i in range(2):
            out = -(-in_hw[i] // s[i])
            total = max(0, (out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - in_hw[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    return pads


@handler("Conv")
def conv(L: Lowering, node):
    w = L.weight(node.input[1])
    x = L.q_input(node.input[0])
    if len(x.shape) != 4 or w.q.ndim != 4:
        raise Unsupported("only 2-D convolutions (NCHW) are supported")
    M, cg, kh, kw = (int(d) for d in w.q.shape)
    _, C, H, W = x.shape
    groups = int(node_attr(node, "group", 1))
    s = list(node_attr(node, "strides", [1, 1]))
    d = list(node_attr(node, "dilations", [1, 1]))
    pads = conv_pads(node, (H, W), (kh, kw), s, d)
    out_shape = L.shape(node.output[0])
    if cg * groups != C or M % groups:
        raise Unsupported("inconsistent group count")
    if kw > 64:
        raise Unsupported("kernels wider than 64")
    Ho, Wo = int(out_shape[2]), int(out_shape[3])
    sink = L.sink(node.output[0])
    ws = channel_scales(w, M, 0)
    real_scale = x.scale * ws
    bias = bias_int(L, node.input[2] if len(node.input) > 2 else None, M, real_scale)
    wq = w.q.astype(np.int8)
    wsum = wq.reshape(M, -1).astype(np.int64).sum(1)
    bias_c = bias - x.zp * wsum
    real_m = real_scale / sink.scale
    check_range(255.0 * np.abs(wq.reshape(M, -1).astype(np.int64)).sum(1) + np.abs(bias), real_m)
    if np.any(np.abs(bias_c) >= 2**31):
        raise Unsupported("bias out of int32 range")
    mult, shift = quantize_multipliers(real_m)
    y = L.new_buf(sink.names[0], (1, M, Ho, Wo), "i8", sink.scale, sink.zp)
    cw = L.g.const("w", "int8_t", wq)
    cb = L.g.const("b", "int32_t", bias_c.astype(np.int32))
    cm = L.g.const("m", "int32_t", mult)
    cs = L.g.const("s", "int32_t", shift)
    depthwise = groups > 1 and groups == C == M and s[1] <= 16 and kh * kw <= 64
    pointwise = kh == kw == 1 and s == [1, 1] and not any(pads) and groups == 1
    kind = "dwconv" if depthwise else ("pwconv" if pointwise else "conv")
    K = cg * kh * kw
    op = Op(kind, [x], [y], None, node=node.name, macs=M * Ho * Wo * K)
    op.params.update(K=K, ohw=Ho * Wo, general=not (depthwise or pointwise), ntile=Ho * Wo)
    if depthwise and (any(pads) or s[1] > 1):  # padded (and column-phased) plane copy
        op.scratch = (H + pads[0] + pads[2]) * (W + pads[1] + pads[3]) + 32  # + vector slack
    sh, sw, dh, dw = s[0], s[1], d[0], d[1]
    pt, pl, pb, pr = pads

    def emit(c, op=op):
        st = c.decl("conv", lambda nm: (
            f"static const ce_conv_t {nm} = {{ {C}, {H}, {W}, {M}, {Ho}, {Wo}, {kh}, {kw}, {sh}, {sw}, "
            f"{dh}, {dw}, {pt}, {pl}, {pb}, {pr}, {groups}, {x.zp}, {sink.zp}, {sink.lo}, {sink.hi}, "
            f"{op.params['ntile']}, {cw}, {cb}, {cm}, {cs} }};"))
        return [f"ce_conv2d(&{st}, {c.ptr(x)}, {c.ptr(y)}, {c.scratch(op)});"]

    op.emit = emit
    L.add_op(op)
    L.use_sink(sink, y)
