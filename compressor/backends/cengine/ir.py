"""The engine's intermediate representation: buffers and the ops that read and write them.

A `Buf` is one tensor of the engine, int8 (with its per-tensor scale and zero point), float32, or
an integer/boolean tensor (int64/int32 token ids, a bool mask: "i64", "i32", "u8").
Buffers live in the static arena unless they are the user's inputs or output (`external`), and
several buffers may share storage (`alias`: Reshape/Flatten views, in-place element-wise ops).
An `Op` is one kernel call; it knows how to print itself as C once the memory plan has given
every buffer an address.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

ESIZE = {"i8": 1, "f32": 4, "i64": 8, "i32": 4, "u8": 1}
CTYPE = {"i8": "int8_t", "f32": "float", "i64": "int64_t", "i32": "int32_t", "u8": "uint8_t"}
# the kernels' type codes (cengine.h: CE_F32, CE_I8, CE_I64, CE_I32, CE_U8)
TYPE_CODE = {"f32": 0, "i8": 1, "i64": 2, "i32": 3, "u8": 4}


@dataclass(eq=False)
class Buf:
    name: str
    shape: tuple[int, ...]
    dtype: str = "i8"  # "i8" | "f32" | "i64" | "i32" | "u8" (bool)
    scale: float = 1.0
    zp: int = 0
    external: str | None = None  # "in:<k>" (k-th input) | "out" (user memory) | "const:<array>": not in the arena
    alias: Buf | None = None  # storage shared with this buffer (same bytes)
    onnx: str = ""  # the ONNX tensor it holds (for traces)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.numel * ESIZE[self.dtype]

    def root(self) -> Buf:
        b = self
        while b.alias is not None:
            b = b.alias
        return b

    def same_quant(self, scale: float, zp: int) -> bool:
        return self.dtype == "i8" and int(self.zp) == int(zp) and np.float32(self.scale) == np.float32(scale)


@dataclass(eq=False)
class Op:
    kind: str  # short kernel name for reports: conv, dwconv, gemm, add, ...
    inputs: list[Buf]
    outputs: list[Buf]
    emit: Callable[["EmitContext"], list[str]]  # C statements (after memory planning)
    node: str = ""  # the ONNX node(s) it comes from, for comments
    scratch: int = 0  # bytes of temporary memory the kernel needs
    inplace: int | None = None  # index of an input whose storage the output may reuse
    macs: int = 0
    params: dict = field(default_factory=dict)  # tunables set after lowering (e.g. conv ntile)


@dataclass
class Graph:
    ops: list[Op] = field(default_factory=list)
    consts: list[tuple[str, str, np.ndarray]] = field(default_factory=list)  # (cname, ctype, data)
    inputs: list[Buf] = field(default_factory=list)  # the model inputs, in ONNX order
    input_names: list[str] = field(default_factory=list)
    # per input: (scale, zp) the engine quantizes that float input with (None: not quantized)
    input_quants: list[tuple[float, int] | None] = field(default_factory=list)
    output: Buf | None = None
    output_name: str = ""
    output_quant: tuple[float, int] | None = None  # (scale, zp) of the int8 tensor behind the output

    # the first input (single-input models, and the `input` of the info struct)
    @property
    def input(self) -> Buf | None:
        return self.inputs[0] if self.inputs else None

    @property
    def input_name(self) -> str:
        return self.input_names[0] if self.input_names else ""

    @property
    def input_quant(self) -> tuple[float, int] | None:
        return self.input_quants[0] if self.input_quants else None

    def const(self, prefix: str, ctype: str, data) -> str:
        name = f"{prefix}_{len(self.consts)}"
        arr = np.ascontiguousarray(np.asarray(data))
        self.consts.append((name, ctype, arr.reshape(-1)))
        return name

    @property
    def weight_bytes(self) -> int:
        return int(sum(a.size * _csize(t) for _, t, a in self.consts))

    @property
    def macs(self) -> int:
        return int(sum(op.macs for op in self.ops))


def _csize(ctype: str) -> int:
    return {"int8_t": 1, "uint8_t": 1, "int32_t": 4, "int64_t": 8, "float": 4}[ctype]


class EmitContext:
    """What an op needs to print its C call: pointers to its buffers and a place for structs."""

    def __init__(self, offsets: dict[int, int], arena_name: str, scratch: dict[int, int]):
        self.offsets = offsets  # id(root buf) -> arena offset
        self.arena = arena_name
        self.scratch_offsets = scratch  # id(op) -> arena offset of its scratch
        self.decls: list[str] = []  # file-scope declarations (const structs)
        self._n = 0

    def ptr(self, buf: Buf) -> str:
        r = buf.root()
        ctype = CTYPE[buf.dtype]
        if r.external and r.external.startswith("in:"):
            return f"(({ctype} *)ins[{int(r.external[3:])}])"
        if r.external == "out":
            return f"(({ctype} *)out)"
        if r.external and r.external.startswith("const:"):
            return f"(({ctype} *){r.external[6:]})"
        return f"(({ctype} *)({self.arena} + {self.offsets[id(r)]}))"

    def scratch(self, op: Op) -> str:
        if not op.scratch:
            return "(int8_t *)0"
        return f"({self.arena} + {self.scratch_offsets[id(op)]})"

    def decl(self, prefix: str, text_fn: Callable[[str], str]) -> str:
        name = f"{prefix}{self._n}"
        self._n += 1
        self.decls.append(text_fn(name))
        return name
