"""Where DisWOT reads a network: its last feature map (the last tensor with spatial axes before the
last weighted layer) and its logits, on any FX graph (an aten graph derived from the teacher, or a
traced built-in family module). A network whose last weighted layer is not a Linear giving (N, K)
scores has no classifier head: only the relation similarity applies to it."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx, nn

from ..capture import WEIGHTED, op_kind
from ..distill.taps import Tap
from ..model_io import first_output
from ..prune.cnn_groups import concrete_shapes
from .cost import as_graph

_WEIGHTED_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def weighted_kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """"conv" / "linear" for a weighted layer, as an aten op or a module call; None otherwise."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return ("linear" if isinstance(module, nn.Linear) else "conv") if isinstance(module, _WEIGHTED_MODULES) else None
    kind = op_kind(node)
    return kind if kind in WEIGHTED else None


@dataclass
class FeatureReader:
    graph: fx.GraphModule
    tap: Tap
    has_classifier: bool

    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(last feature map, first output) on `inputs`; the map keeps its autograd link to the output."""
        out = first_output(self.graph(*inputs))
        return self.tap.value, out


def _feature_map(value, shapes: dict) -> tuple[fx.Node | None, fx.Node | None]:
    """Back from the last weighted layer's input through pooling and flattening: the first tensor
    with spatial axes and more than one position (the map class activations are read on), and the
    first with spatial axes of size 1 (a global pool's output: the fallback where no larger map
    exists). Stopping at the pooled (N, C, 1, 1) tensor left one position per class "map", so the
    semantic similarity compared only the signs of class scores."""
    seen, pooled = set(), None
    while isinstance(value, fx.Node) and value not in seen:
        seen.add(value)
        shape = shapes.get(value)
        if isinstance(shape, tuple) and len(shape) >= 3 and all(isinstance(d, int) for d in shape):
            if math.prod(shape[2:]) > 1:
                return value, pooled
            pooled = pooled or value
        inputs = [a for a in value.all_input_nodes if a.op not in ("get_attr",)]
        value = inputs[0] if len(inputs) == 1 else None
    return None, pooled


def feature_reader(module: nn.Module, example: tuple[torch.Tensor, ...], classification: bool,
                   shapes: dict | None = None) -> FeatureReader | None:
    """A reader for `module` (tapped in place when it is a graph module; a traced copy otherwise,
    sharing its parameters); None when the graph has no weighted layer with a feature map before it.
    `shapes`: the graph's node shapes where already known (cost.measure_graph)."""
    gm = as_graph(module)
    shapes = shapes if shapes is not None else concrete_shapes(gm, example)
    weighted = [n for n in gm.graph.nodes if weighted_kind(gm, n)]
    if not weighted:
        return None
    last = weighted[-1]
    value, pooled = _feature_map(last.args[0], shapes)
    value = value or pooled
    if value is None:
        return None
    tap = Tap()
    name = "diswot_feature_tap"
    gm.add_submodule(name, tap)
    with gm.graph.inserting_after(value):
        node = gm.graph.call_module(name, (value,))
    for user in list(value.users):
        if user is not node:
            user.replace_input_with(value, node)
    gm.recompile()
    out_shape = shapes.get(last)
    head = weighted_kind(gm, last) == "linear" and isinstance(out_shape, tuple) and len(out_shape) == 2
    return FeatureReader(gm, tap, classification and head)
