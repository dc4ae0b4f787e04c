"""Static memory plan: every arena buffer gets an offset; buffers whose lifetimes do not overlap
share memory.

Lifetimes are op indices [first write, last read] of each storage root (aliases such as Reshape
views share their root's storage). Element-wise ops may write in place over an input that dies at
that op. A kernel's scratch memory lives only during its op. Placement is greedy: largest first,
each at the lowest offset that does not collide with an already placed buffer alive at the same
time (first fit over the gaps). `peak_live` is the largest sum of simultaneously live activation
buffers (scratch excluded): a lower bound for any arena, so `arena / peak_live` measures waste.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ir import Buf, Graph

ALIGN = 16
SLACK = 32  # host SIMD kernels may read up to 32 bytes past a buffer: keep that inside the arena


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Plan:
    offsets: dict[int, int]  # id(root buf) -> offset
    scratch_offsets: dict[int, int]  # id(op) -> offset
    arena_bytes: int
    peak_live: int
    peak_op: int
    scratch_max: int


def _in_arena(b: Buf) -> bool:
    return b.root().external is None


def apply_inplace(graph: Graph) -> None:
    """Let element-wise ops overwrite an input that is not read after them."""
    last: dict[int, int] = {}
    for t, op in enumerate(graph.ops):
        for b in op.inputs + op.outputs:
            last[id(b.root())] = t
    for t, op in enumerate(graph.ops):
        if op.inplace is None:
            continue
        x, y = op.inputs[op.inplace], op.outputs[0]
        rx, ry = x.root(), y.root()
        if rx is ry or not _in_arena(x) or not _in_arena(y) or y.alias is not None:
            continue
        if rx.nbytes != ry.nbytes or x.nbytes != y.nbytes or x.dtype != y.dtype:
            continue
        if last.get(id(rx), -1) != t:
            continue
        if any(b.root() is rx for b in op.inputs if b is not x):  # read twice (e.g. x + x)
            continue
        y.alias = rx
        last[id(rx)] = max(last.get(id(ry), t), t)


def lifetimes(graph: Graph) -> dict[int, tuple[Buf, int, int]]:
    life: dict[int, tuple[Buf, int, int]] = {}
    for t, op in enumerate(graph.ops):
        for b in op.inputs + op.outputs:
            if not _in_arena(b):
                continue
            r = b.root()
            if id(r) in life:
                _, s, e = life[id(r)]
                life[id(r)] = (r, min(s, t), max(e, t))
            else:
                life[id(r)] = (r, t, t)
    return life


def live_bytes(graph: Graph) -> tuple[int, int]:
    """(peak live activation bytes, op index where it occurs); scratch excluded."""
    life = lifetimes(graph)
    peak, where = 0, 0
    for t in range(len(graph.ops)):
        s = sum(_align(r.nbytes) for r, a, b in life.values() if a <= t <= b)
        if s > peak:
            peak, where = s, t
    return peak, where


def plan(graph: Graph) -> Plan:
    life = lifetimes(graph)
    items = [(key, _align(r.nbytes), a, b) for key, (r, a, b) in life.items()]
    for t, op in enumerate(graph.ops):
        if op.scratch:
            items.append((("scratch", id(op)), _align(op.scratch), t, t))
    # largest first; ties: earlier start first (deterministic)
    items.sort(key=lambda it: (-it[1], it[2], str(it[0])))
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, start, end)
    where: dict = {}
    for key, size, a, b in items:
        busy = sorted((o, o + s) for o, s, pa, pb in placed if pa <= b and a <= pb)
        off = 0
        for lo, hi in busy:
            if off + size <= lo:
                break
            off = max(off, hi)
        placed.append((off, size, a, b))
        where[key] = off
    arena = max((o + s for o, s, _, _ in placed), default=0)
    peak, peak_op = live_bytes(graph)
    return Plan(
        offsets={k: v for k, v in where.items() if not isinstance(k, tuple)},
        scratch_offsets={k[1]: v for k, v in where.items() if isinstance(k, tuple)},
        arena_bytes=_align(max(arena, ALIGN)) + SLACK,
        peak_live=peak,
        peak_op=peak_op,
        scratch_max=max((op.scratch for op in graph.ops), default=0),
    )
