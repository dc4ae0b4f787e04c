"""Prunable structure of any torch.export-able CNN: coupled output-channel groups and whole residual
blocks (see structure.py for the contract).

Why our own analysis rather than Torch-Pruning's dependency graph: users hand us `torch.export`
programs (.pt2), whose module is an aten-level FX graph with parameters as get_attr nodes and no
nn.Conv2d / nn.BatchNorm2d modules left, so Torch-Pruning's module-based dependency graph (and its
module-replacing pruners) do not apply. The graph itself says everything needed: cnn_groups.py
propagates channel spaces through the aten ops, cnn_shrink.py slices the parameters in place.

Gates are applied where a space is *read* by a conv or linear (and to a residual branch before its
add), not where it is produced: a pruned channel may still be non-zero after a bias, a BatchNorm or
a sigmoid, but it never reaches anything but channel-wise ops and the gated readers, so the gated
model equals the shrunk one exactly, whatever ops lie between.
"""
from __future__ import annotations

import contextlib

import torch
from torch import fx, nn

from .cnn_groups import Analysis, Block, Layer, Segment, analyse, module_path
from .structure import UnitGroup


class GatePoint(nn.Module):
    """Identity, or a multiply by `scale` while a CnnStructure.gated context is open."""

    def __init__(self):
        super().__init__()
        self.scale: torch.Tensor | None = None

    def forward(self, x):
        return x if self.scale is None else x * self.scale


class CnnStructure:
    def __init__(self, gm: fx.GraphModule, analysis: Analysis):
        self.model = gm
        self.analysis = analysis
        spaces = analysis.spaces
        self.group_of: dict[int, str] = {}  # space root -> group name
        self.groups: list[UnitGroup] = []
        taken: set[str] = set()
        order = _order(gm)
        firsts = {spaces.find(s): min(spaces.producers[spaces.find(s)], key=order.get)
                  for s in range(len(spaces.parent)) if spaces.prunable(s)}
        for root, first in sorted(firsts.items(), key=lambda item: order[item[1]]):
            path = module_path(first)
            name = f"{path or first.name}:out"
            if name in taken:
                name = f"{path}.{first.name}:out"
            taken.add(name)
            self.group_of[root] = name
            self.groups.append(UnitGroup(name, "channels", spaces.size[root], 1, path or first.name))
        self.blocks: dict[str, Block] = {}
        for block in analysis.blocks:
            inside = set(block.nodes)
            contains = tuple(g for r, g in self.group_of.items() if all(p in inside for p in spaces.producers[r]))
            path = module_path(block.add) or block.add.name
            block.name = f"{path}:block" if f"{path}:block" not in taken else f"{block.add.name}:block"
            taken.add(block.name)
            self.blocks[block.name] = block
            self.groups.append(UnitGroup(block.name, "block", 1, 0, path, contains))
            for layer in analysis.layers:
                if layer.node in inside:
                    layer.blocks.append(block.name)
        self.gates: dict[str, tuple] = {}  # GatePoint name -> ("layout", layout, rank) | ("block", name)
        self._insert_gate_points()

    # --- gate points, inserted once ---------------------------------------------------------

    def _insert_gate_points(self) -> None:
        gm, a = self.model, self.analysis
        for node in a.consumers:
            x = node.args[0]
            self._gate(node, 0, ("layout", a.layouts[x], len(a.shapes[x])))
        for block in self.blocks.values():
            self._gate(block.add, block.branch_arg, ("block", block.name))
        gm.graph.lint()
        gm.recompile()

    def _gate(self, node: fx.Node, arg: int, spec: tuple) -> None:
        name = f"prune_gate_{len(self.gates)}"
        self.model.add_submodule(name, GatePoint())
        value = node.args[arg]
        with self.model.graph.inserting_before(node):
            gate = self.model.graph.call_module(name, (value,))
        gate.meta = {k: v for k, v in value.meta.items() if k in ("val", "tensor_meta", "nn_module_stack")}
        node.update_arg(arg, gate)
        self.gates[name] = spec

    # --- the Structure protocol --------------------------------------------------------------

    def count(self, seg: Segment, counts: dict) -> torch.Tensor | int:
        group = self.group_of.get(self.analysis.spaces.find(seg.space))
        return counts[group] if group in counts else seg.count

    @contextlib.contextmanager
    def gated(self, gates: dict[str, torch.Tensor]):
        points = {name: self.model.get_submodule(name) for name in self.gates}
        try:
            for name, spec in self.gates.items():
                points[name].scale = self._scale(spec, gates)
            yield self.model
        finally:
            for point in points.values():
                point.scale = None

    def _scale(self, spec: tuple, gates: dict) -> torch.Tensor | None:
        if spec[0] == "block":
            return gates[spec[1]].reshape(()) if spec[1] in gates else None
        _, layout, rank = spec
        like = next(iter(gates.values()), torch.ones(()))
        parts = []
        for seg in layout:
            group = self.group_of.get(self.analysis.spaces.find(seg.space))
            part = gates[group] if group in gates else torch.ones(seg.count, device=like.device, dtype=like.dtype)
            parts.append(part.repeat_interleave(seg.rep) if seg.rep > 1 else part)
        return torch.cat(parts).reshape(1, -1, *([1] * (rank - 2)))

    def expected_cost(self, counts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Params and MACs (per sample, at the example input's sizes) of every conv and linear, in
        float64 so that full counts reproduce the exact integer totals."""
        counts = {k: torch.as_tensor(v).double() for k, v in counts.items()}
        macs = params = torch.zeros((), dtype=torch.float64)
        for layer in self.analysis.layers:
            m, p = self._layer_cost(layer, counts)
            for block in layer.blocks:
                if block in counts:
                    m, p = m * counts[block], p * counts[block]
            macs, params = macs + m, params + p
        return {"params": params, "macs": macs}

    def layer_macs(self, counts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """MACs per conv/linear (keyed by module path, else node name), scaled by their enclosing
        blocks' counts: the report's per-layer view."""
        counts = {k: torch.as_tensor(v).double() for k, v in counts.items()}
        out = {}
        for layer in self.analysis.layers:
            macs = self._layer_cost(layer, counts)[0]
            for block in layer.blocks:
                macs = macs * counts[block] if block in counts else macs
            out[module_path(layer.node) or layer.node.name] = macs
        return out

    def _layer_cost(self, layer: Layer, counts: dict):
        def channels(layout, default):
            return default if layout is None else sum(self.count(s, counts) * s.rep for s in layout)

        cout = channels(layer.outputs, layer.cout)
        bias = cout if layer.bias else 0
        if layer.kind == "depthwise":
            return layer.per_pair * cout, layer.weight_per_pair * cout + bias
        cin = channels(layer.inputs, layer.cin)
        return layer.per_pair * cin * cout, layer.weight_per_pair * cin * cout + bias

    def shrink(self, keep: dict[str, torch.Tensor]) -> nn.Module:
        from .cnn_shrink import shrink

        return shrink(self, keep)


def _order(gm: fx.GraphModule) -> dict[fx.Node, int]:
    return {n: i for i, n in enumerate(gm.graph.nodes)}


def discover_cnn(gm: fx.GraphModule, example_inputs: tuple) -> CnnStructure | None:
    """The prunable structure of an aten-level graph module (to_graph_module, then fold_batchnorm);
    None when nothing in it can be pruned. Inserts the (identity) gate points into `gm`."""
    analysis = analyse(gm, example_inputs)
    if not any(analysis.spaces.prunable(s) for s in range(len(analysis.spaces.parent))) and not analysis.blocks:
        return None
    return CnnStructure(gm, analysis)


def macs_of(structure: CnnStructure) -> int:
    """The unpruned model's conv + linear MACs per sample."""
    from .structure import full_counts

    return int(round(structure.expected_cost(full_counts(structure))["macs"].item()))


__all__ = ["CnnStructure", "GatePoint", "discover_cnn", "macs_of"]
