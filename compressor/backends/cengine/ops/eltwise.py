"""Element-wise ops: Add/Sub and Mul/Div (int8 when quantized, else float), Max/Min, unary float ops, Pow."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..fixedpoint import quantize_multiplier, small_multipliers
from ..ir import Buf, Op
from ..values import CV, FV, QV, Unsupported, WV
from .broadcast import binary_f32
from .registry import handler

if TYPE_CHECKING:
    from ..lower import Lowering


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
        return binary_f32(L, node, "CE_ADD" if node.op_type == "Add" else "CE_SUB",
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


def scalar_const(L: Lowering, name: str) -> float | None:
    v = L.value(name)
    if isinstance(v, (CV, WV)):
        arr = v.arr if isinstance(v, CV) else v.dequant()
        if arr.size == 1:
            return float(arr.reshape(-1)[0])
    return None


@handler("Mul", "Div")
def mul(L: Lowering, node):
    k0, k1 = scalar_const(L, node.input[0]), scalar_const(L, node.input[1])
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
            return binary_f32(L, node, op, L.f_operand(node.input[0]), L.f_operand(node.input[1]))
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
        return binary_f32(L, node, op, L.f_operand(node.input[0]), L.f_operand(node.input[1]))
    out_shape, n, (a, _), (b, _), (bn, binner) = _full_and_broadcast(
        L, node, [(L.q_input(node.input[0]), 1), (L.q_input(node.input[1]), 1)])
    mult, shift = quantize_multiplier(a.scale * b.scale / sink.scale)
    y = L.new_buf(sink.names[0], out_shape, "i8", sink.scale, sink.zp)
    L.add_op(Op("mul", [a, b], [y], lambda c: [
        f"ce_mul_q8({n}, {c.ptr(a)}, {a.zp}, {c.ptr(b)}, {b.zp}, {bn}, {binner}, {mult}, {shift}, "
        f"{c.ptr(y)}, {sink.zp}, {sink.lo}, {sink.hi});"], node=node.name, macs=n, inplace=0))
    L.use_sink(sink, y)


@handler("Max", "Min")
def max_min(L: Lowering, node):
    if len([i for i in node.input if i]) != 2:
        raise Unsupported(f"{node.op_type} of {len(node.input)} inputs (2 supported)")
    binary_f32(L, node, "CE_MAX" if node.op_type == "Max" else "CE_MIN",
                L.f_operand(node.input[0]), L.f_operand(node.input[1]))


UNARY = {"Sqrt": "CE_SQRT", "Erf": "CE_ERF", "Neg": "CE_NEG", "Abs": "CE_ABS", "Exp": "CE_EXP",
         "Reciprocal": "CE_RECIP", "Tanh": "CE_TANH", "Sigmoid": "CE_SIGMOID"}


def unary_f32(L: Lowering, node, op: str, x: Buf):
    y = L.new_buf(node.output[0], x.shape, "f32")
    L.add_op(Op("unary_f32", [x], [y], lambda c: [
        f"ce_unary_f32({op}, {x.numel}, {c.ptr(x)}, {c.ptr(y)});"], node=node.name, inplace=0))
    L.bind(node.output[0], FV(y))


@handler(*UNARY)
def unary(L: Lowering, node):
    unary_f32(L, node, UNARY[node.op_type], L.f_input(node.input[0]))


@handler("Pow")
def pow_op(L: Lowering, node):
    e = scalar_const(L, node.input[1])
    if e not in (0.5, 1.0, 2.0):
        raise Unsupported("Pow with an exponent other than the constants 0.5, 1 and 2")
    x = L.f_input(node.input[0])
    if e == 1.0:
        L.bind(node.output[0], FV(x))
        return
    unary_f32(L, node, "CE_SQRT" if e == 0.5 else "CE_SQUARE", x)
