"""Which channels of an aten-level CNN graph can be pruned together: channel spaces and residual blocks.

A *channel space* is a set of channels that must be kept or removed together wherever they flow.
Each conv (not depthwise) and each linear starts one; channel-wise ops (activations, batch norm,
pooling, dropout, bias adds, depthwise convs) carry it on; an elementwise add or multiply of two
tensors unifies their spaces (union-find: a residual stream becomes one space); a concat along the
channel axis gives a *layout* of several segments; a flatten maps each channel to H*W features of
the next linear. A space that reaches the graph's input or output, or an op this analysis does not
understand, is fixed: conservative, but never wrong.

Every tensor's channel axis is axis 1 (N, C, ...), which holds for NCHW convs and for the (N, C)
features a linear head reads; a linear over more axes (a Transformer's) is left alone.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx

aten = torch.ops.aten


@dataclass(frozen=True)
class Segment:
    space: int  # a space id (resolve with Spaces.find)
    count: int  # channels of that space in this segment
    rep: int = 1  # features per channel (a flatten of C x H x W gives H*W)


Layout = tuple  # tuple[Segment, ...] along axis 1, or None when not tracked (fixed)


class Spaces:
    """Union-find over channel spaces; a union is fixed if any member is."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.producers: list[list[fx.Node]] = []

    def new(self, size: int, producer: fx.Node | None = None, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.fixed.append(fixed)
        self.producers.append([producer] if producer is not None else [])
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if self.size[a] != self.size[b]:  # cannot happen in a well-typed graph; stay safe
            self.fixed[a] = self.fixed[b] = True
            return
        lo, hi = min(a, b), max(a, b)  # the older space names the union
        self.parent[hi] = lo
        self.fixed[lo] = self.fixed[lo] or self.fixed[hi]
        self.producers[lo] = self.producers[lo] + self.producers[hi]

    def fix(self, layout: Layout | None) -> None:
        for seg in layout or ():
            self.fixed[self.find(seg.space)] = True

    def prunable(self, s: int) -> bool:
        return not self.fixed[self.find(s)]


@dataclass
class Layer:
    """A conv or linear: what its cost and its sliced weights depend on."""

    node: fx.Node
    kind: str  # "conv" | "depthwise" | "linear" | "fixed"
    inputs: Layout | None  # the input's layout (None: input channels fixed)
    outputs: Layout | None  # the output's layout
    cin: int
    cout: int
    per_pair: float  # MACs per (input channel, output channel) pair: kernel area x output positions
    weight_per_pair: float  # weights per pair: the kernel area
    bias: bool
    blocks: list[str] = field(default_factory=list)  # enclosing removable blocks


@dataclass
class Block:
    add: fx.Node
    shortcut: fx.Node  # the add's input that survives removal
    branch_arg: int  # which of the add's args is the branch
    nodes: list[fx.Node]  # the branch, in graph order
    name: str = ""


@dataclass
class Analysis:
    spaces: Spaces
    layouts: dict[fx.Node, Layout | None]
    shapes: dict[fx.Node, tuple[int, ...]]
    layers: list[Layer]
    consumers: list[fx.Node]  # convs/linears that read a layout with a prunable segment
    blocks: list[Block]


def module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


# --- shapes -----------------------------------------------------------------------------------

class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm):
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple] = {}

    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n] = tuple(out.shape)
        elif isinstance(out, (tuple, list)):
            self.shapes[n] = tuple(tuple(o.shape) if isinstance(o, torch.Tensor) else None for o in out)
        return out


def concrete_shapes(gm: fx.GraphModule, example_inputs: tuple) -> dict[fx.Node, tuple]:
    rec = _ShapeRecorder(gm)
    with torch.no_grad():
        rec.run(*example_inputs)
    return rec.shapes


# --- op registries ----------------------------------------------------------------------------

# one tensor in, the same channels out (channel c depends only on channel c)
CHANNELWISE = {
    aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default,
    aten.clamp.default, aten.clamp_.default, aten.clamp_min.default, aten.clamp_max.default,
    aten.silu.default, aten.silu_.default, aten.sigmoid.default, aten.sigmoid_.default,
    aten.hardswish.default, aten.hardswish_.default, aten.hardsigmoid.default, aten.gelu.default,
    aten.tanh.default, aten.leaky_relu.default, aten.leaky_relu_.default, aten.elu.default,
    aten.relu6.default, aten.dropout.default, aten.clone.default, aten.contiguous.default,
    aten.alias.default, aten.max_pool2d.default, aten.avg_pool2d.default, aten.max_pool1d.default,
    aten.avg_pool1d.default, aten.adaptive_avg_pool2d.default, aten.adaptive_avg_pool1d.default,
    aten.adaptive_max_pool2d.default, aten.max_pool2d_with_indices.default,
    aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default,
    aten.detach.default, aten.dropout_.default, aten.feature_dropout.default,
}
BATCHNORM = {aten.batch_norm.default: (1, 2, 3, 4), aten._native_batch_norm_legit_no_training.default: (1, 2, 3, 4)}
ELEMENTWISE = {
    aten.add.Tensor, aten.add_.Tensor, aten.mul.Tensor, aten.mul_.Tensor, aten.sub.Tensor,
    aten.sub_.Tensor, aten.div.Tensor, aten.div_.Tensor,
}
CONVS = {aten.conv1d.default: 6, aten.conv2d.default: 6, aten.convolution.default: 8}  # -> groups arg
FLATTENS = {aten.flatten.using_ints, aten.view.default, aten.reshape.default, aten._unsafe_view.default,
            aten.squeeze.dims, aten.squeeze.dim, aten.mean.dim}
NEUTRAL = {aten._assert_tensor_metadata.default}  # reads a value, changes nothing


def _arg(node: fx.Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def conv_groups(node: fx.Node) -> int:
    return int(_arg(node, CONVS[node.target], "groups", 1) or 1)


def _total(layout: Layout) -> int:
    return sum(s.count * s.rep for s in layout)


class _Propagation:
    def __init__(self, gm: fx.GraphModule, shapes: dict):
        self.gm, self.shapes = gm, shapes
        self.spaces = Spaces()
        self.layouts: dict[fx.Node, Layout | None] = {}
        self.layers: list[Layer] = []

    def shape(self, node) -> tuple | None:
        s = self.shapes.get(node) if isinstance(node, fx.Node) else None
        return s if s is not None and all(isinstance(d, int) for d in s) else None

    def layout(self, node) -> Layout | None:
        return self.layouts.get(node) if isinstance(node, fx.Node) else None

    def unknown(self, node: fx.Node) -> None:
        for a in node.all_input_nodes:
            self.spaces.fix(self.layout(a))
        self.layouts[node] = None

    def fresh(self, node: fx.Node, channels: int, fixed: bool = False) -> Layout:
        return (Segment(self.spaces.new(channels, node, fixed), channels),)

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = self.shape(node)
                self.layouts[node] = self.fresh(node, shape[1], fixed=True) if shape and len(shape) >= 2 else None
            elif node.op == "get_attr":
                self.layouts[node] = None  # parameters are sliced by the op that reads them
            elif node.op == "output":
                self.unknown(node)
            elif node.op == "call_function":
                self.visit(node)
            else:
                self.unknown(node)

    def visit(self, node: fx.Node) -> None:
        t = node.target
        if t in NEUTRAL:
            self.layouts[node] = None
        elif t in CHANNELWISE:
            self.layouts[node] = self.layout(node.args[0])
        elif t is operator.getitem:
            src = node.args[0]
            passes = isinstance(src, fx.Node) and src.target in CHANNELWISE and node.args[1] == 0
            self.layouts[node] = self.layout(src) if passes else None
            if not passes:
                self.unknown(node)
        elif t in ELEMENTWISE:
            self.elementwise(node)
        elif t in CONVS:
            self.conv(node)
        elif t == aten.linear.default:
            self.linear(node)
        elif t == aten.cat.default:
            self.cat(node)
        elif t in FLATTENS:
            self.flatten(node)
        else:
            self.unknown(node)

    def elementwise(self, node: fx.Node) -> None:
        out = self.shape(node)
        tensors = [a for a in node.args[:2] if isinstance(a, fx.Node) and a.op != "get_attr"]
        if out is None or len(out) < 2 or node.kwargs.get("alpha", 1) != 1:
            return self.unknown(node)
        full = []  # operands that span the channel axis
        for a in tensors:
            shape = self.shape(a)
            if shape is None:
                return self.unknown(node)
            extent = shape[1 - (len(out) - len(shape))] if len(shape) >= len(out) - 1 else 1
            if extent != 1 or out[1] == 1:
                full.append(a)
        for a in node.args[:2]:  # a parameter with its own channel extent is sliced along with the space
            if isinstance(a, fx.Node) and a.op == "get_attr" and self.shape(a) is None:
                return self.unknown(node)
        layouts = [self.layout(a) for a in full]
        if not layouts or any(l is None for l in layouts):
            return self.unknown(node)
        first = layouts[0]
        for other in layouts[1:]:
            if [(s.count, s.rep) for s in other] != [(s.count, s.rep) for s in first]:
                self.spaces.fix(first)
                return self.unknown(node)
            for a, b in zip(first, other):
                self.spaces.union(a.space, b.space)
        self.layouts[node] = first

    def conv(self, node: fx.Node) -> None:
        x, w = node.args[0], node.args[1]
        out, xin, wshape = self.shape(node), self.shape(x), self.shape(w)
        bias = _arg(node, 2, "bias") is not None
        groups = conv_groups(node)
        transposed = node.target == aten.convolution.default and bool(node.args[6])
        if out is None or xin is None or wshape is None or transposed:
            return self.unknown(node)
        cin, cout = xin[1], out[1]
        area = 1
        for d in wshape[2:]:
            area *= d
        positions = 1
        for d in out[2:]:
            positions *= d
        layout = self.layout(x)
        if groups == 1 and layout is not None and all(s.rep == 1 for s in layout):
            self.layouts[node] = self.fresh(node, cout)
            self.layers.append(Layer(node, "conv", layout, self.layouts[node], cin, cout, area * positions, area, bias))
        elif groups == cin == cout and layout is not None and all(s.rep == 1 for s in layout):
            self.layouts[node] = layout  # depthwise: channel c only reads channel c
            self.layers.append(Layer(node, "depthwise", layout, layout, cin, cout, area * positions, area, bias))
        else:  # grouped convs (or unknown inputs) keep their channels
            self.spaces.fix(layout)
            self.layouts[node] = self.fresh(node, cout, fixed=groups != 1)
            self.layers.append(Layer(node, "fixed" if groups != 1 else "conv", None, self.layouts[node], cin, cout,
                                     area * positions / groups, area / groups, bias))

    def linear(self, node: fx.Node) -> None:
        x = node.args[0]
        out, xin = self.shape(node), self.shape(x)
        bias = _arg(node, 2, "bias") is not None
        if out is None or xin is None:
            return self.unknown(node)
        layout = self.layout(x) if len(xin) == 2 else None
        if len(xin) != 2:
            self.spaces.fix(self.layout(x))
        rows = 1
        for d in out[:-1]:
            rows *= d
        per_sample = rows // out[0] if len(out) > 1 else 1
        self.layouts[node] = self.fresh(node, out[-1]) if len(out) == 2 else None
        self.layers.append(Layer(node, "linear", layout, self.layouts[node], xin[-1], out[-1], per_sample, 1, bias))

    def cat(self, node: fx.Node) -> None:
        tensors, dim = node.args[0], _arg(node, 1, "dim", 0)
        out = self.shape(node)
        layouts = [self.layout(t) for t in tensors]
        if out is None or len(out) < 2 or dim not in (1, 1 - len(out)) or any(l is None for l in layouts):
            return self.unknown(node)
        self.layouts[node] = tuple(s for l in layouts for s in l)

    def flatten(self, node: fx.Node) -> None:
        x = node.args[0]
        xin, out, layout = self.shape(x), self.shape(node), self.layout(x)
        if node.target == aten.mean.dim:
            dims = [d % len(xin) for d in node.args[1]] if xin else []
            if xin is None or 0 in dims or 1 in dims:
                return self.unknown(node)
            self.layouts[node] = layout
            return
        if xin is None or out is None or layout is None or len(xin) < 2 or len(out) != 2 or out[0] != xin[0]:
            return self.unknown(node)
        spatial = 1
        for d in xin[2:]:
            spatial *= d
        if out[1] != xin[1] * spatial:
            return self.unknown(node)
        self.layouts[node] = tuple(Segment(s.space, s.count, s.rep * spatial) for s in layout)


# --- residual blocks --------------------------------------------------------------------------

def _branch(add: fx.Node, branch: fx.Node, shortcut: fx.Node) -> list[fx.Node] | None:
    """The nodes computing `branch` from `shortcut` alone, if they feed nothing but `add`."""
    seen: set[fx.Node] = set()
    stack = [branch]
    while stack:
        n = stack.pop()
        if n in seen or n is shortcut:
            continue
        if n.op == "placeholder":
            return None
        seen.add(n)
        stack.extend(n.all_input_nodes)
    allowed = seen | {add}
    for n in list(seen):
        for u in n.users:
            if u not in allowed and u.target in NEUTRAL:
                seen.add(u)
            elif u not in allowed:
                return None
    if not any(n.target in CONVS for n in seen):
        return None
    order = {n: i for i, n in enumerate(add.graph.nodes)}
    return sorted((n for n in seen if n.op != "get_attr" or all(u in seen for u in n.users)), key=order.get)


def find_blocks(gm: fx.GraphModule) -> list[Block]:
    blocks = []
    for node in gm.graph.nodes:
        if node.target not in (aten.add.Tensor, aten.add_.Tensor) or node.kwargs.get("alpha", 1) != 1:
            continue
        a, b = node.args[:2]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or a is b:
            continue
        for branch_arg, (branch, shortcut) in enumerate(((a, b), (b, a))):
            nodes = _branch(node, branch, shortcut)
            if nodes:
                blocks.append(Block(node, shortcut, branch_arg, nodes))
                break
    return blocks


def analyse(gm: fx.GraphModule, example_inputs: tuple) -> Analysis:
    shapes = concrete_shapes(gm, example_inputs)
    prop = _Propagation(gm, shapes)
    prop.run()
    blocks = find_blocks(gm)
    consumers = [l.node for l in prop.layers if l.kind in ("conv", "linear") and l.inputs is not None
                 and any(prop.spaces.prunable(s.space) for s in l.inputs)]
    return Analysis(prop.spaces, prop.layouts, shapes, prop.layers, consumers, blocks)
