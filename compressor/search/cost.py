"""What a candidate costs, measured on its graph at batch 1: parameters, MACs and peak activation
memory. One forward pass gives all three, for any module (an aten graph derived from the teacher,
a built-in family's nn.Module), so every searcher compares candidates on one scale."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from ..prune.cnn_groups import concrete_shapes


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int  # multiply-accumulates per sample (convolutions, linears, matmuls)
    peak_activation_bytes: int | None  # largest sum of live activation tensors while the graph runs (None: no graph)

    def as_dict(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs, "peak_activation_bytes": self.peak_activation_bytes}


def as_graph(module: nn.Module) -> fx.GraphModule:
    """An FX graph of `module`: itself where it is one (aten graphs), else a symbolic trace (the
    built-in families' modules trace; their nodes are module calls, which is all the cost needs)."""
    return module if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module)


def peak_activation_bytes(gm: fx.GraphModule, example: tuple[torch.Tensor, ...], shapes: dict | None = None) -> int:
    """Each node's output is allocated when it runs and freed after its last user ran (inputs
    included, parameters excluded): the peak of that running sum, in the order the graph runs.
    An estimate of what an engine's arena needs (engines may fuse or reuse more)."""
    shapes = shapes if shapes is not None else concrete_shapes(gm, example)
    sizes = {n: _nbytes(s, example) for n, s in shapes.items() if n.op not in ("get_attr", "output")}
    last_use: dict[fx.Node, int] = {}
    order = list(gm.graph.nodes)
    for i, node in enumerate(order):
        for arg in node.all_input_nodes:
            last_use[arg] = i
    live = peak = 0
    frees: dict[int, int] = {}
    for i, node in enumerate(order):
        live += sizes.get(node, 0)
        peak = max(peak, live)
        if node in sizes:
            end = last_use.get(node, i)
            frees[end] = frees.get(end, 0) + sizes[node]
        live -= frees.pop(i, 0)
    return int(peak)


def _nbytes(shape, example) -> int:
    itemsize = example[0].element_size() if example[0].is_floating_point() else 4
    if not shape:
        return 0
    if isinstance(shape[0], tuple) or shape[0] is None:  # a tuple of tensors
        return sum(_nbytes(s, example) for s in shape if s)
    count = 1
    for d in shape:
        count *= int(d)
    return count * itemsize


def measure_graph(gm: fx.GraphModule, example: tuple[torch.Tensor, ...]) -> tuple[Cost, dict]:
    """A graph's costs at the example's batch, and every node's output shape, from one run."""
    counter = FlopCounterMode(display=False)
    with counter:
        shapes = concrete_shapes(gm, example)
    params = sum(p.numel() for p in gm.parameters())
    return Cost(int(params), int(counter.get_total_flops() // 2), peak_activation_bytes(gm, example, shapes)), shapes


def measure_cost(module: nn.Module, example: tuple[torch.Tensor, ...], graph: fx.GraphModule | None = None) -> Cost:
    """Params, MACs and peak activation bytes of any module at the example's batch (1, or a static
    batch). The graph is `graph` (an aten copy of the module) where given, else the module traced;
    a module that does not trace is measured eagerly and has no peak (None)."""
    try:
        gm = graph if graph is not None else as_graph(module)
    except Exception:  # noqa: BLE001 - symbolic tracing fails on data-dependent Python
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module(*example)
        return Cost(sum(p.numel() for p in module.parameters()), int(counter.get_total_flops() // 2), None)
    return measure_graph(gm, example)[0]
