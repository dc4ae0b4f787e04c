"""Integer tensors: Cast, Expand, Where, Gather (token ids, attention masks, embeddings)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..ir import Buf, Op, TYPE_CODE
from ..values import CV, FV, QV, TV, Unsupported, WV, node_attr
from .broadcast import broadcast_args
from .registry import handler
from .shape import act, wrap

if TYPE_CHECKING:
    from ..lower import Lowering


ONNX_TYPES = {onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.INT8: "i8", onnx.TensorProto.INT64: "i64",
              onnx.TensorProto.INT32: "i32", onnx.TensorProto.BOOL: "u8"}


def _cast_kernel(L: Lowering, node, x: Buf, to: str) -> Buf:
    y = L.new_buf(node.output[0], x.shape, to)
    L.add_op(Op("cast", [x], [y], lambda c: [
        f"ce_cast({x.numel}, {TYPE_CODE[x.dtype]}, {c.ptr(x)}, {TYPE_CODE[to]}, {c.ptr(y)});"], node=node.name))
    return y


@handler("Cast")
def cast(L: Lowering, node):
    to = ONNX_TYPES.get(node_attr(node, "to"))
    if to is None:
        raise Unsupported(f"Cast to {onnx.TensorProto.DataType.Name(node_attr(node, 'to'))}")
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
        L.bind(node.output[0], wrap(Buf(L.unique(node.output[0]), x.shape, x.dtype, alias=x)))
        return
    L.bind(node.output[0], wrap(_cast_kernel(L, node, x, to)))


@handler("Expand")
def expand(L: Lowering, node):
    v = L.value(node.input[0])
    x = L.f_operand(node.input[0]) if isinstance(v, (CV, WV)) else act(L, node.input[0])
    out_shape = tuple(int(d) for d in L.shape(node.output[0]))
    if int(np.prod(out_shape, dtype=np.int64)) == x.numel:
        y = Buf(L.unique(node.output[0]), out_shape, x.dtype, x.scale, x.zp, alias=x)
    else:
        rank, cd, (sx,) = broadcast_args(L, out_shape, [x])
        y = L.new_buf(node.output[0], out_shape, x.dtype, x.scale, x.zp)
        es = x.nbytes // max(1, x.numel)
        L.add_op(Op("expand", [x], [y], lambda c: [
            f"ce_broadcast_copy({rank}, {cd}, {sx}, {es}, {c.ptr(x)}, {c.ptr(y)});"], node=node.name))
    L.bind(node.output[0], wrap(y))


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
    rank, cd, (sc, sa, sb) = broadcast_args(L, out_shape, [cond, a, b])
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
        if table.ndim < 1 or node_attr(node, "axis", 0) % table.ndim != 0:
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
        L.bind(node.output[0], wrap(y))
        return
    x = act(L, node.input[0])
    axis = node_attr(node, "axis", 0) % len(x.shape)
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    es = x.nbytes // max(1, x.numel)
    inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64)) * es
    y = L.new_buf(node.output[0], out_shape, x.dtype, x.scale, x.zp)
    L.add_op(Op("gather", [x] + ins, [y], lambda c: [
        f"ce_gather({outer}, {x.shape[axis]}, {inner}, {nidx}, {ip(c)}, {icode}, {c.ptr(x)}, {c.ptr(y)});"],
        node=node.name))
    L.bind(node.output[0], wrap(y))
