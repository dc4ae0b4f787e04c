"""Op handlers: one function per ONNX op type (a registry, not an if-chain).

Each handler reads its inputs' values from the `Lowering`, appends `ir.Op`s (kernel calls) and
binds its outputs. A handler raises `Unsupported` with a reason when it cannot lower the node;
the lowering collects every such node so the user sees them all at once.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from .fixedpoint import quantize_multiplier, quantize_multipliers, quantize_value, small_multipliers
from .ir import TYPE_CODE, Buf, Op
from .lower import CV, FV, QV, TV, WV, Lowering, Unsupported, _attr, flt

HANDLERS: dict[str, Callable[[Lowering, onnx.NodeProto], None]] = {}
# tried, in order, on every node before its handler; a fusion returns True when it lowered the node
# (and claimed the nodes it fused with)
FUSIONS: list[Callable[[Lowering, onnx.NodeProto], bool]] = []


def handler(*op_types: str):
    def deco(fn):
        for t in op_types:
            HANDLERS[t] = fn
        return fn

    return deco


def supported_op_types() -> list[str]:
    return sorted(HANDLERS)


def _i32(xs) -> str:
    return ", ".join(str(int(x)) for x in xs)


# ---- constants --------------------------------------------------------------------------------
def fold_constant(L: Lowering, node: onnx.NodeProto) -> None:
    """Evaluate a node whose inputs are all constants (shape arithmetic) with ONNX's reference."""
    from onnx.reference import ReferenceEvaluator

    feeds = {i: L.val[i].arr for i in node.input if i}
    opset = [o for o in L.model.opset_import]
    graph = onnx.helper.make_graph(
        [node], "fold",
        [onnx.helper.make_tensor_value_info(i, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for i, a in feeds.items()],
        [onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o])
    try:
        model = onnx.helper.make_model(graph, opset_imports=opset)
        outs = ReferenceEvaluator(model).run(None, feeds)
    except Exception as e:  # noqa: BLE001
        raise Unsupported(f"cannot fold constant {node.op_type}: {e}") from e
    for name, arr in zip([o for o in node.output if o], outs):
        L.val[name] = CV(np.asarray(arr))


@handler("Constant")
def constant(L: Lowering, node):
    for a in node.attribute:
        if a.name == "value":
            L.bind(node.output[0], CV(onnx.numpy_helper.to_array(a.t)))
            return
        if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            v = onnx.helper.get_attribute_value(a)
            dt = np.float32 if "float" in a.name else np.int64
            L.bind(node.output[0], CV(np.asarray(v, dt)))
            return
    raise Unsupported("Constant without a tensor value")


@handler("Shape")
def shape_op(L: Lowering, node):
    shp = np.asarray(L.shape(node.input[0]), np.int64)
    start, end = _attr(node, "start", 0), _attr(node, "end", None)
    L.bind(node.output[0], CV(shp[start:end]))


# ---- quantize / dequantize ------------------------------------------------------------------
@handler("DequantizeLinear")
def dequantize_linear(L: Lowering, node):
    v = L.value(node.input[0])
    scale = L.const(node.input[1]).astype(np.float64)
    zp = (L.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.int8))
    axis = _attr(node, "axis", 1)
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
            L.bind(out, QV(_requant(L, x, s, z, -128, 127, out, node.name)))
    elif isinstance(v, (CV, WV)):
        arr = v.arr if isinstance(v, CV) else v.dequant()
        q = np.clip(np.rint(arr.astype(np.float32) / np.float32(s)) + z, -128, 127).astype(np.int8)
        L.bind(out, WV(q, np.asarray(s, np.float64), np.asarray(z, np.int64), 0))
    else:
        raise Unsupported("QuantizeLinear of an unsupported value")


def _requant(L: Lowering, x: Buf, s: float, z: int, lo: int, hi: int, name: str, node_name: str) -> Buf:
    """int8 -> int8 with other quantization parameters (and a clamp range)."""
    (m,), shift = small_multipliers([x.scale / s])
    y = L.new_buf(name, x.shape, "i8", s, z)
    n = x.numel
    L.add_op(Op("requant", [x], [y], lambda c: [
        f"ce_requant_q8({n}, {c.ptr(x)}, {x.zp}, {m}, {shift}, {c.ptr(y)}, {z}, {lo}, {hi});"],
        node=node_name, inplace=0))
    return y


# ---- convolution ------------------------------------------------------------------------------
def _conv_pads(node, in_hw, k, s, d):
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    auto = _attr(node, "auto_pad", b"NOTSET")
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


def _bias_int(L: Lowering, name: str | None, m: int, real_scale: np.ndarray) -> np.ndarray:
    """int32 bias in units of in_scale * w_scale[c]."""
    if not name:
        return np.zeros(m, np.int64)
    v = L.value(name)
    if isinstance(v, WV) and v.q.dtype == np.int32:
        bs = np.broadcast_to(v.scale.reshape(-1), (m,)).astype(np.float64)
        q = v.q.reshape(-1).astype(np.int64) - np.broadcast_to(v.zp.reshape(-1), (m,))
        if np.allclose(bs, real_scale, rtol=1e-6, atol=0):
            return q
        return np.rint(q * bs / real_scale).astype(np.int64)
    real = L.const(name).reshape(-1).astype(np.float64)
    return np.rint(np.broadcast_to(real, (m,)) / real_scale).astype(np.int64)


def _channel_scales(w: WV, m: int, axis: int) -> np.ndarray:
    if np.any(w.zp != 0):
        raise Unsupported("asymmetric weights (weight zero point must be 0)")
    if w.q.dtype != np.int8:
        raise Unsupported(f"{w.q.dtype} weights (int8 expected)")
    sc = w.scale.reshape(-1).astype(np.float64)
    if sc.size == 1:
        return np.full(m, sc[0])
    if w.axis != axis or sc.size != m:
        raise Unsupported("weights quantized per channel along an axis other than the output channels")
    return sc


def _check_range(acc_bound: np.ndarray, real_m: np.ndarray) -> None:
    if np.any(acc_bound * real_m >= 2.0**30) or np.any(acc_bound >= 2.0**31):
        raise Unsupported("accumulator range too large for 32-bit requantization")


@handler("Conv")
def conv(L: Lowering, node):
    w = L.weight(node.input[1])
    x = L.q_input(node.input[0])
    if len(x.shape) != 4 or w.q.ndim != 4:
        raise Unsupported("only 2-D convolutions (NCHW) are supported")
    M, cg, kh, kw = (int(d) for d in w.q.shape)
    _, C, H, W = x.shape
    groups = int(_attr(node, "group", 1))
    s = list(_attr(node, "strides", [1, 1]))
    d = list(_attr(node, "dilations", [1, 1]))
    pads = _conv_pads(node, (H, W), (kh, kw), s, d)
    out_shape = L.shape(node.output[0])
    if cg * groups != C or M % groups:
        raise Unsupported("inconsistent group count")
    if kw > 64:
        raise Unsupported("kernels wider than 64")
    Ho, Wo = int(out_shape[2]), int(out_shape[3])
    sink = L.sink(node.output[0])
    ws = _channel_scales(w, M, 0)
    real_scale = x.scale * ws
    bias = _bias_int(L, node.input[2] if len(node.input) > 2 else None, M, real_scale)
    wq = w.q.astype(np.int8)
    wsum = wq.reshape(M, -1).astype(np.int64).sum(1)
    bias_c = bias - x.zp * wsum
    real_m = real_scale / sink.scale
    _check_range(255.0 * np.abs(wq.reshape(M, -1).astype(np.int64)).sum(1) + np.abs(bias), real_m)
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


# ---- fully connected / matmul ------------------------------------------------------------------
def _fc(L: Lowering, node, a: Buf, wmk: np.ndarray, ws: np.ndarray, bias_name: str | None, T: int,
        out_shape, alpha: float = 1.0, beta: float = 1.0, out_name: str | None = None, fused=()):
    """int8 A x W^T (+ bias): int8 output when a QuantizeLinear follows `out_name`, else float
    (the int32 accumulators scaled). `fused`: nodes (a bias Add) lowered with it."""
    out_name = out_name or node.output[0]
    M, K = wmk.shape
    real_scale = a.scale * ws * alpha
    bias = _bias_int(L, bias_name, M, real_scale / beta) if bias_name else np.zeros(M, np.int64)
    bias_c = bias - a.zp * wmk.astype(np.int64).sum(1)
    if np.any(np.abs(bias_c) >= 2**31):
        raise Unsupported("bias out of int32 range")
    sink = L.sink(out_name, required=False)
    cw = L.g.const("w", "int8_t", wmk.astype(np.int8))
    cb = L.g.const("b", "int32_t", bias_c.astype(np.int32))
    macs = T * M * K
    if sink is not None:
        real_m = real_scale / sink.scale
        _check_range(255.0 * np.abs(wmk.astype(np.int64)).sum(1) + np.abs(bias), real_m)
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


def _bias_add(L: Lowering, name: str, M: int):
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
    if _attr(node, "transA", 0):
        raise Unsupported("Gemm with transA=1")
    w = L.weight(node.input[1])
    if len(a.shape) != 2 or w.q.ndim != 2:
        raise Unsupported("Gemm on tensors that are not 2-D")
    trans_b = _attr(node, "transB", 0)
    wmk = w.q if trans_b else w.q.T
    M = wmk.shape[0]
    ws = _channel_scales(w, M, 0 if trans_b else 1)
    alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
    _fc(L, node, a, np.ascontiguousarray(wmk), ws, node.input[2] if len(node.input) > 2 and node.input[2] else None,
        a.shape[0], (a.shape[0], M), alpha, beta)


@handler("MatMul")
def matmul(L: Lowering, node):
    bv = L.value(node.input[1])
    out_shape = L.shape(node.output[0])
    if isinstance(bv, WV) and isinstance(L.value(node.input[0]), QV):
        a = L.q_input(node.input[0])
        if bv.q.ndim != 2:
            raise Unsupported("MatMul with a weight that is not 2-D")
        K, M = bv.q.shape
        ws = _channel_scales(bv, M, 1)
        T = a.numel // K
        fused = _bias_add(L, node.output[0], M)
        bias, out_name, extra = (fused[1], fused[0].output[0], [fused[0]]) if fused else (None, None, [])
        _fc(L, node, a, np.ascontiguousarray(bv.q.T), ws, bias, T, L.shape(out_name) if out_name else out_shape,
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


# ---- element-wise ------------------------------------------------------------------------------
def _broadcast(out_shape, b_shape) -> tuple[int, int] | None:
    """(bn, binner) such that b's element for output i is b[(i // binner) % bn], or None."""
    n = int(np.prod(out_shape, dtype=np.int64))
    bn = int(np.prod(b_shape, dtype=np.int64))
    if bn == 1:
        return 1, n
    if len(b_shape) > len(out_shape):
        return None
    full = [1] * (len(out_shape) - len(b_shape)) + [int(d) for d in b_shape]
    idx = [i for i, d in enumerate(full) if d != 1]
    if idx != list(range(idx[0], idx[-1] + 1)) or any(full[i] != out_shape[i] for i in idx):
        return None
    return bn, int(np.prod(out_shape[idx[-1] + 1:], dtype=np.int64))


def _full_and_broadcast(L: Lowering, node, xs: list[tuple[Buf, int]]):
    """Order two int8 inputs as (full-shape input, broadcast input) and give the kernel's (bn, binner)."""
    out_shape = L.shape(node.output[0])
    n = int(np.prod(out_shape, dtype=np.int64))
    (a, ca), (b, cb) = xs
    if a.numel != n:
        (a, ca), (b, cb) = (b, cb), (a, ca)
    if a.numel != n:
        raise Unsupported(f"{node.op_type} where neither input has the output shape")
    bc = (b.numel, 1) if b.numel == n else _broadcast(out_shape, b.shape)
    if bc is None:
        raise Unsupported(f"{node.op_type} broadcast of {b.shape} to {tuple(out_shape)}")
    return out_shape, n, (a, ca), (b, cb), bc


def _int8_operand(L: Lowering, name: str) -> bool:
    v = L.value(name)
    return isinstance(v, QV) or (isinstance(v, WV) and v.q.dtype == np.int8 and v.scale.size == 1)


@handler("Add", "Sub")
def add(L: Lowering, node):
    sink = (L.sink(node.output[0], required=False)
            if all(_int8_operand(L, i) for i in node.input[:2]) else None)
    if sink is None:  # a float sum (a residual into LayerNorm, a mask added to attention scores)
        return _binary_f32(L, node, "CE_ADD" if node.op_type == "Add" else "CE_SUB",
                           L.f_operand(node.input[0]), L.f_operand(node.input[1]))
    sign = -1 if node.op_type == "Sub" else 1
    out_shape, n, (a, ca), (b, cb), (bn, binner) = _full_and_broadcast(
        L, node, [(L.q_input(node.input[0]), 1), (L.q_input(node.input[1]), sign)])
    (ma, mb), shift = small_multipliers([ca * a.scale / sink.scale, cb * b.scale / sink.scale])
    y = L.new_buf(sink.names[0], out_shape, "i8", sink.scale, sink.zp)
    L.add_op(Op(node.op_type.lower(), [a, b], [y], lambda c: [
        f"ce_add_q8({n}, {c.ptr(a)}, {a.zp}, {ma}, {c.ptr(b)}, {b.zp}, {mb}, {bn}, {binner}, {shift}, "
        f"{c.ptr(y)}, {sink.zp}, {sink.lo}, {sink.hi});"], node=node.name, inplace=0))
    L.use_sink(sink, y)


def _scalar_const(L: Lowering, name: str) -> float | None:
    v = L.value(name)
    if isinstance(v, (CV, WV)):
        arr = v.arr if isinstance(v, CV) else v.dequant()
        if arr.size == 1:
            return float(arr.reshape(-1)[0])
    return None


@handler("Mul", "Div")
def mul(L: Lowering, node):
    k0, k1 = _scalar_const(L, node.input[0]), _scalar_const(L, node.input[1])
    op = "CE_MUL" if node.op_type == "Mul" else "CE_DIV"
    if node.op_type == "Div":
        if k1 == 0:
            raise Unsupported("Div by zero")
        k1, k0 = (1.0 / k1 if k1 is not None else None), None
    if k0 is not None or k1 is not None:  # x * constant scalar: a requantization
        xname = node.input[1] if k0 is not None else node.input[0]
        k = k0 if k0 is not None else k1
        sink = L.sink(node.output[0], required=False) if isinstance(L.value(xname), QV) and k != 0 else None
        if sink is None:  # float result (e.g. attention's q * d^-1/4): as onnxruntime computes it
            return _binary_f32(L, node, op, L.f_operand(node.input[0]), L.f_operand(node.input[1]))
        x = L.q_input(xname)
        (m,), shift = small_multipliers([x.scale * k / sink.scale])  # a negative k works too
        y = L.new_buf(sink.names[0], x.shape, "i8", sink.scale, sink.zp)
        L.add_op(Op("requant", [x], [y], lambda c: [
            f"ce_requant_q8({x.numel}, {c.ptr(x)}, {x.zp}, {m}, {shift}, {c.ptr(y)}, {sink.zp}, "
            f"{sink.lo}, {sink.hi});"], node=node.name, inplace=0))
        L.use_sink(sink, y)
        return
    sink = (L.sink(node.output[0], required=False)
            if node.op_type == "Mul" and all(isinstance(L.value(i), QV) for i in node.input[:2]) else None)
    if sink is None:
        return _binary_f32(L, node, op, L.f_operand(node.input[0]), L.f_operand(node.input[1]))
    out_shape, n, (a, _), (b, _), (bn, binner) = _full_and_broadcast(
        L, node, [(L.q_input(node.input[0]), 1), (L.q_input(node.input[1]), 1)])
    mult, shift = quantize_multiplier(a.scale * b.scale / sink.scale)
    y = L.new_buf(sink.names[0], out_shape, "i8", sink.scale, sink.zp)
    L.add_op(Op("mul", [a, b], [y], lambda c: [
        f"ce_mul_q8({n}, {c.ptr(a)}, {a.zp}, {c.ptr(b)}, {b.zp}, {bn}, {binner}, {mult}, {shift}, "
        f"{c.ptr(y)}, {sink.zp}, {sink.lo}, {sink.hi});"], node=node.name, macs=n, inplace=0))
    L.use_sink(sink, y)


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
        y = _requant(L, x, s, z, lo, hi, name, node.name)
    if sink:
        L.use_sink(sink, y)
    else:
        L.bind(node.output[0], QV(y))


# ---- pooling -------------------------------------------------------------------------------------
def _pool_geometry(L: Lowering, node, x: Buf, widen: bool = True):
    """C, H, W, Ho, Wo, kernel, strides, dilations, pads (top, left, bottom, right).

    The output size is onnxruntime's: floor or (ceil_mode=1) ceil of (H + pads - (k-1)*d - 1) / s,
    + 1, where with ceil_mode a last window that would start past the input and its top/left pad
    is dropped (ONNX shape inference before opset 22 keeps it; onnxruntime does not). With
    `widen` the bottom/right pads grow so every window lies inside the padded plane (MaxPool's
    padded copy); otherwise they are the model's own (AveragePool needs them for its divisor)."""
    _, C, H, W = x.shape
    k = list(_attr(node, "kernel_shape"))
    s = list(_attr(node, "strides", [1, 1]))
    d = list(_attr(node, "dilations", [1, 1]))
    pads = _conv_pads(node, (H, W), k, s, d)
    auto = _attr(node, "auto_pad", b"NOTSET")
    ceil = bool(_attr(node, "ceil_mode", 0)) and (auto.decode() if isinstance(auto, bytes) else auto) == "NOTSET"
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
    cip = int(_attr(node, "count_include_pad", 0))
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


@handler("ReduceMean")
def reduce_mean(L: Lowering, node):
    """Mean over trailing axes (e.g. a global average pool exported as ReduceMean): int8 when a
    QuantizeLinear follows, float otherwise."""
    v = L.value(node.input[0])
    sink = L.sink(node.output[0], required=False) if isinstance(v, QV) else None
    axes = _reduce_axes(L, node, len(L.shape(node.input[0])))
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


# ---- layout ------------------------------------------------------------------------------------
def _act(L: Lowering, name: str) -> Buf:
    v = L.value(name)
    if isinstance(v, (QV, FV, TV)):
        return v.buf
    raise Unsupported(f"input '{name}' is not an activation")


def _wrap(buf: Buf):
    """The value kind of a buffer: int8 -> QV, float -> FV, integer/bool -> TV."""
    return QV(buf) if buf.dtype == "i8" else (FV(buf) if buf.dtype == "f32" else TV(buf))


@handler("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")
def reshape(L: Lowering, node):
    x = _act(L, node.input[0])
    out_shape = L.shapes.get(node.output[0])
    if out_shape is None:
        if node.op_type == "Flatten":
            ax = _attr(node, "axis", 1) % len(x.shape)
            out_shape = (int(np.prod(x.shape[:ax], dtype=np.int64)), int(np.prod(x.shape[ax:], dtype=np.int64)))
        elif node.op_type == "Reshape":
            tgt = [int(t) for t in L.const(node.input[1]).reshape(-1)]
            tgt = [x.shape[i] if t == 0 and not _attr(node, "allowzero", 0) else t for i, t in enumerate(tgt)]
            out_shape = np.empty(x.shape, np.int8).reshape(tgt).shape
        elif node.op_type in ("Identity", "Dropout"):
            out_shape = x.shape
        else:
            raise Unsupported("unknown output shape")
    if int(np.prod(out_shape, dtype=np.int64)) != x.numel:
        raise Unsupported("reshape changes the number of elements")
    y = Buf(L.unique(node.output[0]), tuple(int(s) for s in out_shape), x.dtype, x.scale, x.zp, alias=x)
    L.bind(node.output[0], _wrap(y))


@handler("Transpose")
def transpose(L: Lowering, node):
    v = L.value(node.input[0])
    if isinstance(v, WV):  # a transposed weight (Linear exported as MatMul(x, W^T)): still a weight
        perm = list(_attr(node, "perm", list(range(v.q.ndim))[::-1]))
        axis = perm.index(v.axis) if v.scale.size > 1 else 0
        L.bind(node.output[0], WV(np.ascontiguousarray(np.transpose(v.q, perm)), v.scale, v.zp, axis))
        return
    x = _act(L, node.input[0])
    r = len(x.shape)
    if r > 6:
        raise Unsupported("Transpose of rank > 6")
    perm = list(_attr(node, "perm", list(range(r))[::-1]))
    out_shape = tuple(x.shape[p] for p in perm)
    y = L.new_buf(node.output[0], out_shape, x.dtype, x.scale, x.zp)
    es = x.nbytes // max(1, x.numel)
    cd = L.g.const("dims", "int32_t", np.asarray(x.shape, np.int32))
    cp = L.g.const("perm", "int32_t", np.asarray(perm, np.int32))
    L.add_op(Op("transpose", [x], [y], lambda c: [
        f"ce_transpose({r}, {cd}, {cp}, {es}, {c.ptr(x)}, {c.ptr(y)});"], node=node.name))
    L.bind(node.output[0], _wrap(y))


@handler("Concat")
def concat(L: Lowering, node):
    xs = [_act(L, i) for i in node.input if i]
    out_shape = L.shape(node.output[0])
    axis = _attr(node, "axis") % len(out_shape)
    dtypes = {x.dtype for x in xs}
    if len(dtypes) != 1:
        raise Unsupported("Concat of int8 and float tensors")
    dt = dtypes.pop()
    es = 1 if dt == "i8" else 4
    outer = int(np.prod(out_shape[:axis], dtype=np.int64))
    ystride = int(np.prod(out_shape[axis:], dtype=np.int64))
    if dt == "i8":
        sink = L.sink(node.output[0], required=False)
        if sink is None:
            if len({(np.float32(x.scale), x.zp) for x in xs}) != 1:
                raise Unsupported("Concat of tensors with different quantization and no QuantizeLinear after it")
            s, z = xs[0].scale, xs[0].zp
        else:
            s, z = sink.scale, sink.zp
            if sink.lo != -128 or sink.hi != 127:
                raise Unsupported("activation fused after Concat")
        y = L.new_buf(sink.names[0] if sink else node.output[0], out_shape, "i8", s, z)
    else:
        sink = None
        y = L.new_buf(node.output[0], out_shape, "f32")
    lines_fns = []
    off = 0
    for x in xs:
        chunk = x.numel // outer
        if dt == "f32" or x.same_quant(y.scale, y.zp):
            lines_fns.append(lambda c, x=x, off=off, chunk=chunk: [
                f"ce_copy_blocks({outer}, {chunk * es}, {c.ptr(x)}, (char *){c.ptr(y)} + {off * es}, {ystride * es});"])
        else:
            (m,), sh = small_multipliers([x.scale / y.scale])
            lines_fns.append(lambda c, x=x, off=off, chunk=chunk, m=m, sh=sh: [
                f"for (int o = 0; o < {outer}; o++)",
                f"    ce_requant_q8({chunk}, {c.ptr(x)} + o * {chunk}, {x.zp}, {m}, {sh}, "
                f"{c.ptr(y)} + {off} + o * {ystride}, {y.zp}, -128, 127);"])
        off += chunk
    L.add_op(Op("concat", xs, [y], lambda c: [ln for f in lines_fns for ln in f(c)], node=node.name))
    if sink is not None:
        L.use_sink(sink, y)
    else:
        L.bind(node.output[0], QV(y) if dt == "i8" else FV(y))


# ---- float islands -------------------------------------------------------------------------------
def _last_axis_rows(shape, axis) -> tuple[int, int]:
    axis = axis % len(shape)
    cols = int(np.prod(shape[axis:], dtype=np.int64))
    return int(np.prod(shape, dtype=np.int64)) // cols, cols


@handler("Softmax")
def softmax(L: Lowering, node):
    x = L.f_input(node.input[0])
    opset = max((o.version for o in L.model.opset_import if o.domain in ("", "ai.onnx")), default=13)
    axis = _attr(node, "axis", -1 if opset >= 13 else 1) % len(x.shape)
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
    axis = _attr(node, "axis", -1) % len(x.shape)
    rows, cols = _last_axis_rows(x.shape, axis)
    eps = float(_attr(node, "epsilon", 1e-5))
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
    approx = _attr(node, "approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    if approx != "none":
        raise Unsupported("Gelu with approximate='tanh'")
    x = L.f_input(node.input[0])
    y = L.new_buf(node.output[0], x.shape, "f32")
    L.add_op(Op("gelu", [x], [y], lambda c: [
        f"ce_gelu_f32({x.numel}, {c.ptr(x)}, {c.ptr(y)});"], node=node.name, inplace=0))
    L.bind(node.output[0], FV(y))


# ---- float element-wise ops with broadcasting ------------------------------------------------------
def _bstrides(shape, out_shape) -> list[int]:
    """Element strides to read a tensor of `shape` at every index of `out_shape` (numpy
    broadcasting): 0 along the axes it is broadcast on."""
    r = len(out_shape)
    full = [1] * (r - len(shape)) + [int(d) for d in shape]
    st, acc = [0] * r, 1
    for i in range(r - 1, -1, -1):
        st[i] = 0 if full[i] == 1 else acc
        acc *= full[i]
    return st


def _collapse(out_shape, strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 axes and merge axes every operand walks contiguously: rank 1..6 for the kernels."""
    dims = [int(d) for d in out_shape]
    keep = [i for i, d in enumerate(dims) if d != 1]
    dims = [dims[i] for i in keep]
    sts = [[s[i] for i in keep] for s in strides]
    if not dims:
        return [1], [[0] for _ in sts]
    i = len(dims) - 2
    while i >= 0:
        if all(s[i] == s[i + 1] * dims[i + 1] for s in sts):
            dims[i] *= dims[i + 1]
            del dims[i + 1]
            for s in sts:
                s[i] = s[i + 1]
                del s[i + 1]
        i -= 1
    if len(dims) > 6:
        raise Unsupported("broadcast over more than 6 dimensions")
    return dims, sts


def _broadcast_args(L: Lowering, out_shape, bufs: list[Buf]) -> tuple[int, str, list[str]]:
    dims, sts = _collapse(out_shape, [_bstrides(b.shape, out_shape) for b in bufs])
    cd = L.g.const("dims", "int32_t", np.asarray(dims, np.int32))
    return len(dims), cd, [L.g.const("st", "int32_t", np.asarray(s, np.int32)) for s in sts]


def _binary_f32(L: Lowering, node, op: str, a: Buf, b: Buf):
    try:
        out_shape = tuple(int(d) for d in np.broadcast_shapes(a.shape, b.shape))
    except ValueError:
        raise Unsupported(f"{node.op_type} of shapes {a.shape} and {b.shape}") from None
    rank, cd, (sa, sb) = _broadcast_args(L, out_shape, [a, b])
    y = L.new_buf(node.output[0], out_shape, "f32")
    L.add_op(Op("binary_f32", [a, b], [y], lambda c: [
        f"ce_binary_f32({op}, {rank}, {cd}, {sa}, {sb}, {c.ptr(a)}, {c.ptr(b)}, {c.ptr(y)});"],
        node=node.name, inplace=0 if tuple(a.shape) == out_shape else None))
    L.bind(node.output[0], FV(y))


@handler("Max", "Min")
def max_min(L: Lowering, node):
    if len([i for i in node.input if i]) != 2:
        raise Unsupported(f"{node.op_type} of {len(node.input)} inputs (2 supported)")
    _binary_f32(L, node, "CE_MAX" if node.op_type == "Max" else "CE_MIN",
                L.f_operand(node.input[0]), L.f_operand(node.input[1]))


UNARY = {"Sqrt": "CE_SQRT", "Erf": "CE_ERF", "Neg": "CE_NEG", "Abs": "CE_ABS", "Exp": "CE_EXP",
         "Reciprocal": "CE_RECIP", "Tanh": "CE_TANH", "Sigmoid": "CE_SIGMOID"}


def _unary_f32(L: Lowering, node, op: str, x: Buf):
    y = L.new_buf(node.output[0], x.shape, "f32")
    L.add_op(Op("unary_f32", [x], [y], lambda c: [
        f"ce_unary_f32({op}, {x.numel}, {c.ptr(x)}, {c.ptr(y)});"], node=node.name, inplace=0))
    L.bind(node.output[0], FV(y))


@handler(*UNARY)
def unary(L: Lowering, node):
    _unary_f32(L, node, UNARY[node.op_type], L.f_input(node.input[0]))


@handler("Pow")
def pow_op(L: Lowering, node):
    e = _scalar_const(L, node.input[1])
    if e not in (0.5, 1.0, 2.0):
        raise Unsupported("Pow with an exponent other than the constants 0.5, 1 and 2")
    x = L.f_input(node.input[0])
    if e == 1.0:
        L.bind(node.output[0], FV(x))
        return
    _unary_f32(L, node, "CE_SQRT" if e == 0.5 else "CE_SQUARE", x)


# ---- integer tensors: Cast, Expand, Where, Gather ---------------------------------------------------
ONNX_TYPES = {onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.INT8: "i8", onnx.TensorProto.INT64: "i64",
              onnx.TensorProto.INT32: "i32", onnx.TensorProto.BOOL: "u8"}


def _cast_kernel(L: Lowering, node, x: Buf, to: str) -> Buf:
    y = L.new_buf(node.output[0], x.shape, to)
    L.add_op(Op("cast", [x], [y], lambda c: [
        f"ce_cast({x.numel}, {TYPE_CODE[x.dtype]}, {c.ptr(x)}, {TYPE_CODE[to]}, {c.ptr(y)});"], node=node.name))
    return y


@handler("Cast")
def cast(L: Lowering, node):
    to = ONNX_TYPES.get(_attr(node, "to"))
    if to is None:
        raise Unsupported(f"Cast to {onnx.TensorProto.DataType.Name(_attr(node, 'to'))}")
    v = L.value(node.input[0])
    if isinstance(v, QV):
        if to == "f32":  # a QV already is the float tensor (e.g. gathered int8 embedding rows)
            L.bind(node.output[0], v)
            return
        x = L.f_input(node.input[0])
    elif isinstance(v, (FV, TV)):
        x = v.buf
    else:
        raise Unsupported("Cast of an unsupported value")
    if x.dtype == to:
        L.bind(node.output[0], _wrap(Buf(L.unique(node.output[0]), x.shape, x.dtype, alias=x)))
        return
    L.bind(node.output[0], _wrap(_cast_kernel(L, node, x, to)))


@handler("Expand")
def expand(L: Lowering, node):
    v = L.value(node.input[0])
    x = L.f_operand(node.input[0]) if isinstance(v, (CV, WV)) else _act(L, node.input[0])
    out_shape = tuple(int(d) for d in L.shape(node.output[0]))
    if int(np.prod(out_shape, dtype=np.int64)) == x.numel:
        y = Buf(L.unique(node.output[0]), out_shape, x.dtype, x.scale, x.zp, alias=x)
    else:
        rank, cd, (sx,) = _broadcast_args(L, out_shape, [x])
        y = L.new_buf(node.output[0], out_shape, x.dtype, x.scale, x.zp)
        es = x.nbytes // max(1, x.numel)
        L.add_op(Op("expand", [x], [y], lambda c: [
            f"ce_broadcast_copy({rank}, {cd}, {sx}, {es}, {c.ptr(x)}, {c.ptr(y)});"], node=node.name))
    L.bind(node.output[0], _wrap(y))


def _bool_operand(L: Lowering, name: str) -> Buf:
    v = L.value(name)
    if isinstance(v, TV) and v.buf.dtype == "u8":
        return v.buf
    if isinstance(v, CV):
        arr = np.asarray(v.arr).astype(np.uint8)
        cname = L.g.const("cond", "uint8_t", arr)
        return Buf(cname, tuple(arr.shape), "u8", external="const:" + cname)
    raise Unsupported(f"condition '{name}' is not a bool tensor")


@handler("Where")
def where(L: Lowering, node):
    cond = _bool_operand(L, node.input[0])
    a, b = L.f_operand(node.input[1]), L.f_operand(node.input[2])
    try:
        out_shape = tuple(int(d) for d in np.broadcast_shapes(cond.shape, a.shape, b.shape))
    except ValueError:
        raise Unsupported("Where of shapes that do not broadcast") from None
    rank, cd, (sc, sa, sb) = _broadcast_args(L, out_shape, [cond, a, b])
    y = L.new_buf(node.output[0], out_shape, "f32")
    L.add_op(Op("where", [cond, a, b], [y], lambda c: [
        f"ce_where_f32({rank}, {cd}, {sc}, {sa}, {sb}, {c.ptr(cond)}, {c.ptr(a)}, {c.ptr(b)}, {c.ptr(y)});"],
        node=node.name))
    L.bind(node.output[0], FV(y))


@handler("Gather")
def gather(L: Lowering, node):
    """Embedding lookups (a constant table, runtime token ids): float tables, int8 tables (raw, or
    behind a DequantizeLinear per tensor or per row: only the gathered rows are dequantized), and
    gathers of activations along any axis."""
    data, iv = L.value(node.input[0]), L.value(node.input[1])
    if isinstance(iv, TV) and iv.buf.dtype in ("i64", "i32"):
        idx, icode = iv.buf, TYPE_CODE[iv.buf.dtype]
        ins = [idx]
        ip = lambda c: c.ptr(idx)  # noqa: E731
    elif isinstance(iv, CV) and np.asarray(iv.arr).dtype.kind in "iu":
        arr = np.asarray(iv.arr).astype(np.int64)
        cname = L.g.const("idx", "int64_t", arr)
        idx, icode, ins = Buf(cname, tuple(arr.shape), "i64", external="const:" + cname), TYPE_CODE["i64"], []
        ip = lambda c: cname  # noqa: E731
    else:
        raise Unsupported("Gather indices must be an integer tensor")
    nidx = idx.numel
    out_shape = tuple(int(d) for d in L.shape(node.output[0]))
    if isinstance(data, (CV, WV)):
        table = np.asarray(data.arr if isinstance(data, CV) else data.q)
        if table.ndim < 1 or _attr(node, "axis", 0) % table.ndim != 0:
            raise Unsupported("Gather of a constant along an axis other than 0")
        rows, cols = table.shape[0], int(np.prod(table.shape[1:], dtype=np.int64))
        if isinstance(data, WV):
            if table.dtype != np.int8:
                raise Unsupported(f"Gather of a DequantizeLinear of {table.dtype}")
            if data.scale.size == 1:  # per tensor: the gathered rows are an int8 activation
                ct = L.g.const("emb", "int8_t", table)
                y = L.new_buf(node.output[0], out_shape, "i8", float(data.scale.reshape(-1)[0]),
                              int(data.zp.reshape(-1)[0]))
                L.add_op(Op("gather", ins, [y], lambda c: [
                    f"ce_gather(1, {rows}, {cols}, {nidx}, {ip(c)}, {icode}, {ct}, {c.ptr(y)});"], node=node.name))
                L.bind(node.output[0], QV(y))
                return
            if data.axis != 0 or data.scale.size != rows:
                raise Unsupported("Gather of a table quantized per column (per tensor or per row expected)")
            if np.unique(data.zp.reshape(-1)).size > 1:
                raise Unsupported("Gather of a table with a zero point per row")
            ct = L.g.const("emb", "int8_t", table)
            cs = L.g.const("emb_scale", "float", data.scale.reshape(-1).astype(np.float32))
            zp = int(data.zp.reshape(-1)[0])
            y = L.new_buf(node.output[0], out_shape, "f32")
            L.add_op(Op("gather", ins, [y], lambda c: [
                f"ce_gather_dq_rows({nidx}, {ip(c)}, {icode}, {rows}, {cols}, {ct}, {zp}, {cs}, 1, {c.ptr(y)});"],
                node=node.name))
            L.bind(node.output[0], FV(y))
            return
        dt = "f32" if table.dtype.kind == "f" else {np.dtype(np.int8): "i8", np.dtype(np.int64): "i64",
                                                    np.dtype(np.int32): "i32", np.dtype(np.bool_): "u8"}.get(table.dtype)
        if dt is None:
            raise Unsupported(f"Gather of a {table.dtype} table")
        ctype = {"f32": "float", "i8": "int8_t", "i64": "int64_t", "i32": "int32_t", "u8": "uint8_t"}[dt]
        ct = L.g.const("emb", ctype, table.astype({"f32": np.float32, "i8": np.int8, "i64": np.int64,
                                                   "i32": np.int32, "u8": np.uint8}[dt]))
        y = L.new_buf(node.output[0], out_shape, dt, 1.0, 0)  # raw int8 rows: scale 1 (a Cast reads them)
        es = y.nbytes // max(1, y.numel)
        L.add_op(Op("gather", ins, [y], lambda c: [
            f"ce_gather(1, {rows}, {cols * es}, {nidx}, {ip(c)}, {icode}, {ct}, {c.ptr(y)});"], node=node.name))
        L.bind(node.output[0], _wrap(y))
        return
    x = _act(L, node.input[0])
    axis = _attr(node, "axis", 0) % len(x.shape)
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    es = x.nbytes // max(1, x.numel)
    inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64)) * es
    y = L.new_buf(node.output[0], out_shape, x.dtype, x.scale, x.zp)
    L.add_op(Op("gather", [x] + ins, [y], lambda c: [
        f"ce_gather({outer}, {x.shape[axis]}, {inner}, {nidx}, {ip(c)}, {icode}, {c.ptr(x)}, {c.ptr(y)});"],
        node=node.name))
    L.bind(node.output[0], _wrap(y))


# ---- float reductions ---------------------------------------------------------------------------------
REDUCE = {"ReduceSum": "CE_RSUM", "ReduceMean": "CE_RMEAN", "ReduceMax": "CE_RMAX", "ReduceMin": "CE_RMIN",
          "ReduceSumSquare": "CE_RSUMSQ", "ReduceL2": "CE_RL2"}


def _reduce_axes(L: Lowering, node, r: int) -> list[int]:
    axes = _attr(node, "axes")
    if len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in L.const(node.input[1]).reshape(-1)]
    if not axes:
        if _attr(node, "noop_with_empty_axes", 0):
            raise Unsupported(f"{node.op_type} with noop_with_empty_axes")
        axes = list(range(r))
    return sorted(int(a) % r for a in axes)


@handler("ReduceSum", "ReduceMax", "ReduceMin", "ReduceSumSquare", "ReduceL2")
def reduce_f32(L: Lowering, node):
    x = L.f_input(node.input[0])
    r = len(x.shape)
    axes = _reduce_axes(L, node, r)
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


# ---- fusion: an element-wise function of one int8 tensor -> a 256-entry table ---------------------
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
    if n.op_type not in LUT_OPS or (n.op_type == "Cast" and _attr(n, "to") != onnx.TensorProto.FLOAT):
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


# ---- Slice / Split: strided copies ---------------------------------------------------------------
def _strided_copy(L: Lowering, node, x: Buf, out_name: str, starts, counts, steps):
    """y = x[start_i : start_i + count_i * step_i : step_i] along every axis (steps > 0)."""
    natural = [int(np.prod(x.shape[i + 1:], dtype=np.int64)) for i in range(len(x.shape))]
    out_shape = tuple(int(c) for c in counts)
    offset = int(sum(s * st for s, st in zip(starts, natural)))
    xs = [st * sp if c > 1 else 0 for st, sp, c in zip(natural, steps, counts)]
    if int(np.prod(out_shape, dtype=np.int64)) == x.numel:  # the whole tensor
        L.bind(out_name, _wrap(Buf(L.unique(out_name), out_shape, x.dtype, x.scale, x.zp, alias=x)))
        return
    dims, (sx,) = _collapse(out_shape, [xs])
    y = L.new_buf(out_name, out_shape, x.dtype, x.scale, x.zp)
    cd = L.g.const("dims", "int32_t", np.asarray(dims, np.int32))
    cs = L.g.const("st", "int32_t", np.asarray(sx, np.int32))
    es = x.nbytes // max(1, x.numel)
    L.add_op(Op("slice", [x], [y], lambda c: [
        f"ce_broadcast_copy({len(dims)}, {cd}, {cs}, {es}, {c.ptr(x)} + {offset}, {c.ptr(y)});"], node=node.name))
    L.bind(out_name, _wrap(y))


@handler("Slice")
def slice_op(L: Lowering, node):
    x = _act(L, node.input[0])
    r = len(x.shape)
    const = lambda i: [int(v) for v in L.const(node.input[i]).reshape(-1)] if len(node.input) > i and node.input[i] else None  # noqa: E731
    starts, ends = const(1), const(2)
    axes = const(3) or list(range(len(starts)))
    steps = const(4) or [1] * len(starts)
    st, cnt, sp = [0] * r, list(x.shape), [1] * r
    for a, s, e, p in zip(axes, starts, ends, steps):
        a %= r
        if p <= 0:
            raise Unsupported("Slice with a negative step")
        rng = range(x.shape[a])[slice(s, e, p)]
        st[a], cnt[a], sp[a] = (rng.start if len(rng) else 0), len(rng), p
    _strided_copy(L, node, x, node.output[0], st, cnt, sp)


@handler("Split")
def split_op(L: Lowering, node):
    x = _act(L, node.input[0])
    r = len(x.shape)
    axis = _attr(node, "axis", 0) % r
    start = 0
    for o in node.output:
        if not o:
            continue
        n = int(L.shapes[o][axis]) if o in L.shapes else None
        if n is None:
            raise Unsupported("Split with unknown output shapes")
        st, cnt = [0] * r, list(x.shape)
        st[axis], cnt[axis] = start, n
        _strided_copy(L, node, x, o, st, cnt, [1] * r)
        start += n
