"""Layout: views (Reshape and friends), Transpose, Concat, Slice and Split (strided copies)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..fixedpoint import small_multipliers
from ..ir import Buf, Op
from ..values import FV, QV, TV, Unsupported, WV, node_attr
from .broadcast import collapse
from .registry import handler

if TYPE_CHECKING:
    from ..lower import Lowering


def act(L: Lowering, name: str) -> Buf:
    v = L.value(name)
    if isinstance(v, (QV, FV, TV)):
        return v.buf
    raise Unsupported(f"input '{name}' is not an activation")


def wrap(buf: Buf):
    """The value kind of a buffer: int8 -> QV, float -> FV, integer/bool -> TV."""
    return QV(buf) if buf.dtype == "i8" else (FV(buf) if buf.dtype == "f32" else TV(buf))


@handler("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")
def reshape(L: Lowering, node):
    x = act(L, node.input[0])
    out_shape = L.shapes.get(node.output[0])
    if out_shape is None:
        if node.op_type == "Flatten":
            ax = node_attr(node, "axis", 1) % len(x.shape)
            out_shape = (int(np.prod(x.shape[:ax], dtype=np.int64)), int(np.prod(x.shape[ax:], dtype=np.int64)))
        elif node.op_type == "Reshape":
            tgt = [int(t) for t in L.const(node.input[1]).reshape(-1)]
            tgt = [x.shape[i] if t == 0 and not node_attr(node, "allowzero", 0) else t for i, t in enumerate(tgt)]
            out_shape = np.empty(x.shape, np.int8).reshape(tgt).shape
        elif node.op_type in ("Identity", "Dropout"):
            out_shape = x.shape
        else:
            raise Unsupported("unknown output shape")
    if int(np.prod(out_shape, dtype=np.int64)) != x.numel:
        raise Unsupported("reshape changes the number of elements")
    y = Buf(L.unique(node.output[0]), tuple(int(s) for s in out_shape), x.dtype, x.scale, x.zp, alias=x)
    L.bind(node.output[0], wrap(y))


@handler("Transpose")
def transpose(L: Lowering, node):
    v = L.value(node.input[0])
    if isinstance(v, WV):  # a transposed weight (Linear exported as MatMul(x, W^T)): still a weight
        perm = list(node_attr(node, "perm", list(range(v.q.ndim))[::-1]))
        axis = perm.index(v.axis) if v.scale.size > 1 else 0
        L.bind(node.output[0], WV(np.ascontiguousarray(np.transpose(v.q, perm)), v.scale, v.zp, axis))
        return
    x = act(L, node.input[0])
    r = len(x.shape)
    if r > 6:
        raise Unsupported("Transpose of rank > 6")
    perm = list(node_attr(node, "perm", list(range(r))[::-1]))
    out_shape = tuple(x.shape[p] for p in perm)
    y = L.new_buf(node.output[0], out_shape, x.dtype, x.scale, x.zp)
    es = x.nbytes // max(1, x.numel)
    cd = L.g.const("dims", "int32_t", np.asarray(x.shape, np.int32))
    cp = L.g.const("perm", "int32_t", np.asarray(perm, np.int32))
    L.add_op(Op("transpose", [x], [y], lambda c: [
        f"ce_transpose({r}, {cd}, {cp}, {es}, {c.ptr(x)}, {c.ptr(y)});"], node=node.name))
    L.bind(node.output[0], wrap(y))


@handler("Concat")
def concat(L: Lowering, node):
    xs = [act(L, i) for i in node.input if i]
    out_shape = L.shape(node.output[0])
    axis = node_attr(node, "axis") % len(out_shape)
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


def _strided_copy(L: Lowering, node, x: Buf, out_name: str, starts, counts, steps):
    """y = x[start_i : start_i + count_i * step_i : step_i] along every axis (steps > 0)."""
    natural = [int(np.prod(x.shape[i + 1:], dtype=np.int64)) for i in range(len(x.shape))]
    out_shape = tuple(int(c) for c in counts)
    offset = int(sum(s * st for s, st in zip(starts, natural)))
    xs = [st * sp if c > 1 else 0 for st, sp, c in zip(natural, steps, counts)]
    if int(np.prod(out_shape, dtype=np.int64)) == x.numel:  # the whole tensor
        L.bind(out_name, wrap(Buf(L.unique(out_name), out_shape, x.dtype, x.scale, x.zp, alias=x)))
        return
    dims, (sx,) = collapse(out_shape, [xs])
    y = L.new_buf(out_name, out_shape, x.dtype, x.scale, x.zp)
    cd = L.g.const("dims", "int32_t", np.asarray(dims, np.int32))
    cs = L.g.const("st", "int32_t", np.asarray(sx, np.int32))
    es = x.nbytes // max(1, x.numel)
    L.add_op(Op("slice", [x], [y], lambda c: [
        f"ce_broadcast_copy({len(dims)}, {cd}, {cs}, {es}, {c.ptr(x)} + {offset}, {c.ptr(y)});"], node=node.name))
    L.bind(out_name, wrap(y))


@handler("Slice")
def slice_op(L: Lowering, node):
    x = act(L, node.input[0])
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
    x = act(L, node.input[0])
    r = len(x.shape)
    axis = node_attr(node, "axis", 0) % r
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
