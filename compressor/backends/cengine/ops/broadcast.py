"""Broadcasting for the float element-wise kernels: per-input strides over the output, collapsed axes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..ir import Buf, Op
from ..values import FV, Unsupported

if TYPE_CHECKING:
    from ..lower import Lowering


def bstrides(shape, out_shape) -> list[int]:
    """Element strides to read a tensor of `shape` at every index of `out_shape` (numpy
    broadcasting): 0 along the axes it is broadcast on."""
    r = len(out_shape)
    full = [1] * (r - len(shape)) + [int(d) for d in shape]
    st, acc = [0] * r, 1
    for i in range(r - 1, -1, -1):
        st[i] = 0 if full[i] == 1 else acc
        acc *= full[i]
    return st


def collapse(out_shape, strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
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


def broadcast_args(L: Lowering, out_shape, bufs: list[Buf]) -> tuple[int, str, list[str]]:
    dims, sts = collapse(out_shape, [bstrides(b.shape, out_shape) for b in bufs])
    cd = L.g.const("dims", "int32_t", np.asarray(dims, np.int32))
    return len(dims), cd, [L.g.const("st", "int32_t", np.asarray(s, np.int32)) for s in sts]


def binary_f32(L: Lowering, node, op: str, a: Buf, b: Buf):
    try:
        out_shape = tuple(int(d) for d in np.broadcast_shapes(a.shape, b.shape))
    except ValueError:
        raise Unsupported(f"{node.op_type} of shapes {a.shape} and {b.shape}") from None
    rank, cd, (sa, sb) = broadcast_args(L, out_shape, [a, b])
    y = L.new_buf(node.output[0], out_shape, "f32")
    L.add_op(Op("binary_f32", [a, b], [y], lambda c: [
        f"ce_binary_f32({op}, {rank}, {cd}, {sa}, {sb}, {c.ptr(a)}, {c.ptr(b)}, {c.ptr(y)});"],
        node=node.name, inplace=0 if tuple(a.shape) == out_shape else None))
    L.bind(node.output[0], FV(y))
