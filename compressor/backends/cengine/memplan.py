"""Static memory plan: every arena buffer gets an offset; buffers whose lifetimes do not overlap
share memory.

Lifetimes are op indices [first write, last read] of each storage root (aliases such as Reshape
views share their root's storage). Element-wise ops may write in place over an input that dies at
that op. A kernel's scratch memory lives only during its op. Two buffers whose lifetimes overlap
(share an op index) never share a byte: an op's output never overlaps its inputs or its scratch
unless the op declared that output in place (then it is an alias, one storage root).

Placement (an offline interval-packing problem, NP-hard in general) runs a few greedy passes and
keeps the smallest arena: each pass takes the buffers in one order (largest first, longest-lived
first, largest size x lifetime first, earliest first, activations before scratch) and puts each
at the best-fitting gap (the smallest free range that holds it; or the lowest one) among the
already placed buffers alive at the same time; one more pass places each op's scratch in the
best-fitting gap left by the best activation-only placement. `peak_live` is the largest sum of
simultaneously live activation buffers (scratch excluded): a lower bound for any arena, so
`arena / peak_live` measures waste (scratch included).

Elastic scratch: the im2col tile of a general convolution (`params["general"]`, scratch =
K * ntile + 32) can be narrowed. When no plan keeps the arena within MAX_OVER_PEAK x peak_live
(and the other scratch does not exceed that anyway), the planner places the activations alone and
narrows each tile that does not fit to the widest one (a multiple of TILE_STEP columns, at least
MIN_TILE) that fits in the memory free during its op below that bound: memory up to the bound,
then speed. Tiles only change how the work is cut, never the result. This is what a small net
needs, where one 16-column tile is a quarter of its activations (ResTiny: 1.26x -> 1.20x, the
narrowed 3x3 conv costs RVV ~7% more instructions for the whole net).
"""

from __future__ import annotations

from dataclasses import dataclass

from .ir import Buf, Graph

ALIGN = 16
SLACK = 32  # host SIMD kernels may read up to 32 bytes past a buffer: keep that inside the arena
MAX_OVER_PEAK = 1.2  # narrow im2col tiles before letting the arena grow past this x peak_live
MIN_TILE = 8  # narrowest im2col tile (output positions) the planner gives a general convolution
TILE_STEP = 4  # narrowed tiles are a multiple of this many output positions


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


# an item to place: (key, size, first op, last op); key is id(root buf) or ("scratch", id(op));
# item lists are built in graph order
Item = tuple


def _gaps(placed: list[tuple[int, int, int, int]], a: int, b: int):
    """Free ranges [lo, hi) (the last one unbounded: hi None) during ops a..b."""
    busy = sorted((o, o + s) for o, s, pa, pb in placed if pa <= b and a <= pb)
    lo = 0
    for blo, bhi in busy:
        if blo > lo:
            yield lo, blo
        lo = max(lo, bhi)
    yield lo, None


def _fit(placed, size: int, a: int, b: int, best: bool, limit: int | None = None) -> int | None:
    """Offset for a buffer of `size` alive during ops a..b: the smallest gap that holds it (best)
    or the lowest; None if it must end above `limit`."""
    choice = None
    for lo, hi in _gaps(placed, a, b):
        room = (hi if hi is not None else 1 << 62) - lo
        if room < size or (limit is not None and lo + size > limit):
            continue
        if not best:
            return lo
        if choice is None or room < choice[0]:
            choice = (room, lo)
    return choice[1] if choice else None


def _pack(items: list[Item], best: bool) -> tuple[dict, int]:
    placed: list[tuple[int, int, int, int]] = []
    where: dict = {}
    for key, size, a, b in items:
        off = _fit(placed, size, a, b, best)
        placed.append((off, size, a, b))
        where[key] = off
    return where, max((o + s for o, s, _, _ in placed), default=0)


def _orders(items: list[Item]) -> list[list[Item]]:
    def is_scratch(it):
        return isinstance(it[0], tuple)

    # stable sorts: ties keep the items' order (graph order), so plans are reproducible
    return [
        sorted(items, key=lambda it: (-it[1], it[2])),  # largest first
        sorted(items, key=lambda it: (-(it[3] - it[2]), -it[1], it[2])),  # longest-lived first
        sorted(items, key=lambda it: (-it[1] * (it[3] - it[2] + 1), it[2])),  # largest area first
        sorted(items, key=lambda it: (it[2], -it[1])),  # in order of creation
        sorted(items, key=lambda it: (is_scratch(it), -it[1], it[2])),  # activations, then scratch
    ]


def _best_pack(items: list[Item]) -> tuple[dict, int]:
    best = None
    for order in _orders(items):
        for bf in (True, False):
            where, top = _pack(order, bf)
            if best is None or top < best[1]:
                best = (where, top)
    return best


def _pack_all(acts: list[Item], scratch: list[Item]) -> tuple[dict, int, list]:
    """The smallest of: every order over all items; the best activation-only packing with each
    scratch (one per op, so scratches never meet) then put in the best-fitting gap of its op.
    Also returns that activation-only placement."""
    where, _ = _best_pack(acts)
    placed = [(where[k], s, a, b) for k, s, a, b in acts]
    act_placed = list(placed)
    where = dict(where)
    for key, size, a, b in sorted(scratch, key=lambda it: (-it[1], it[2])):
        off = _fit(placed, size, a, b, True)
        placed.append((off, size, a, b))
        where[key] = off
    top = max((o + s for o, s, _, _ in placed), default=0)
    joint, jtop = _best_pack(acts + scratch)
    return (joint, jtop, act_placed) if jtop < top else (where, top, act_placed)


def _narrow_tiles(graph: Graph, act_placed: list, limit: int, elastic: set[int]) -> None:
    """Narrow every elastic im2col tile whose scratch does not fit below `limit` in the memory the
    activations leave free during its op, to the widest multiple of TILE_STEP columns that does
    (never below MIN_TILE)."""
    for t, op in enumerate(graph.ops):
        if id(op) not in elastic or _fit(act_placed, _align(op.scratch), t, t, True, limit) is not None:
            continue
        K, nt = int(op.params["K"]), int(op.params["ntile"])
        room = max(min(limit if hi is None else hi, limit) - lo for lo, hi in _gaps(act_placed, t, t))
        new = max(MIN_TILE, min(nt, (room - 32) // K // TILE_STEP * TILE_STEP))
        if new < nt:
            op.params["ntile"] = new
            op.scratch = K * new + 32  # as ce_conv2d_scratch(): + slack for 32-byte vector moves


def _items(graph: Graph) -> tuple[list[Item], list[Item]]:
    acts = [(key, _align(r.nbytes), a, b) for key, (r, a, b) in lifetimes(graph).items()]
    scratch = [(("scratch", id(op)), _align(op.scratch), t, t) for t, op in enumerate(graph.ops) if op.scratch]
    return acts, scratch


def plan(graph: Graph) -> Plan:
    """The memory plan (may narrow elastic im2col tiles: see the module docstring)."""
    peak, peak_op = live_bytes(graph)
    acts, scratch = _items(graph)
    where, top, act_placed = _pack_all(acts, scratch)
    elastic = {id(op) for op in graph.ops if op.scratch and op.params.get("general") and op.params.get("K")}
    act_top = max((o + s for o, s, _, _ in act_placed), default=0)
    limit = max(act_top, (int(peak * MAX_OVER_PEAK) - SLACK) // ALIGN * ALIGN)
    if top > limit and elastic:
        # what the other scratch needs anyway: narrowing a tile below that gains nothing
        fixed = [it for it in scratch if it[0][1] not in elastic]
        limit = max(limit, _pack_all(acts, fixed)[1])
    if top > limit and elastic:
        saved = {id(op): (op.params["ntile"], op.scratch) for op in graph.ops if id(op) in elastic}
        _narrow_tiles(graph, act_placed, limit, elastic)
        where2, top2, _ = _pack_all(*_items(graph))
        if top2 < top:
            where, top = where2, top2
        else:  # no gain: keep the wide tiles
            for op in graph.ops:
                if id(op) in saved:
                    op.params["ntile"], op.scratch = saved[id(op)]
    p = Plan(
        offsets={k: v for k, v in where.items() if not isinstance(k, tuple)},
        scratch_offsets={k[1]: v for k, v in where.items() if isinstance(k, tuple)},
        arena_bytes=_align(max(top, ALIGN)) + SLACK,
        peak_live=peak,
        peak_op=peak_op,
        scratch_max=max((op.scratch for op in graph.ops), default=0),
    )
    bad = overlaps(graph, p)
    if bad:  # a bug in the planner, never a property of the model
        raise RuntimeError(f"memory plan overlaps live buffers: {bad[:3]}")
    return p


def overlaps(graph: Graph, p: Plan) -> list[tuple[str, str, int]]:
    """Pairs of arena ranges (activation storage roots and op scratch) that are alive at the same
    op and share a byte, or that reach past the arena's end (less its slack): [] for a valid plan.
    Each entry is (name, name, op index)."""
    rng = []  # (name, lo, hi, first op, last op)
    for key, (r, a, b) in lifetimes(graph).items():
        off = p.offsets[key]
        rng.append((r.name, off, off + r.nbytes, a, b))
    for t, op in enumerate(graph.ops):
        if op.scratch:
            off = p.scratch_offsets[id(op)]
            rng.append((f"scratch of op {t} ({op.kind})", off, off + op.scratch, t, t))
    bad = []
    end = p.arena_bytes - SLACK
    for i, (n1, lo1, hi1, a1, b1) in enumerate(rng):
        if lo1 < 0 or hi1 > end:
            bad.append((n1, "arena end", a1))
        for n2, lo2, hi2, a2, b2 in rng[i + 1:]:
            if a1 <= b2 and a2 <= b1 and lo1 < hi2 and lo2 < hi1:
                bad.append((n1, n2, max(a1, a2)))
    return bad
