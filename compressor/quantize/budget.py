"""Which layers stay in the target's higher precision: `keep_float` most sensitive ones, then, under
an accuracy budget, more (most sensitive first, by the sensitivity table's divergence) until the
quantized model's top-1 agreement with the teacher (task metric against the teacher's outputs, not
labels) on the validation slice has lost at most the budget from the float model the pass was given
(a pruned student's own distance to the teacher is not quantization's to make up).

A budget that only keeping every layer in float meets is not met: an "int8" engine without one
integer layer is the float model under another name. The pass then fails (exit 3, the sensitivity
table in the report) unless `unmet_budget = "keep-float"` asks for the float engine; `float_cost`
says what the kept layers cost in weights and MACs either way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx, nn

from ..distill import Fidelity
from ..progress import Progress
from .fakequant import OFF, FakeQuant
from .graph import Layer, _attr, op_kind
from .sensitivity import set_layers

UNMET = ("fail", "keep-float")  # what an accuracy budget that only all-float meets does


@dataclass
class KeptLayers:
    layers: list[str]
    budget_met: bool  # False: the budget was only met with every layer kept (or not at all)
    drop: float | None  # the validation metric's drop with these layers kept, or, where the budget is not
    # met, with one layer fewer kept (None: no budget checked)


def keep_float(student: nn.Module, layers: list[Layer], table: list[dict], keep: int, budget: float,
               score: Callable[[nn.Module], Fidelity], float_val_metric: float, progress: Progress,
               kept_state: str = OFF) -> KeptLayers:
    """`float_val_metric`: the validation metric of the float model the pass was given; the budget is
    what quantizing may lose from it. `kept_state`: what a kept layer's quantizers do (OFF: float;
    WIDE: 16-bit activations, the target's int16 fallback)."""
    everything = {layer.node for layer in layers}
    count, drop = min(keep, len(table)), None
    while True:
        kept = [row["layer"] for row in table[:count]]
        set_layers(student, layers, everything - set(kept), kept_state)
        if not budget:
            return KeptLayers(kept, True, None)
        if count == len(table):  # `drop`: with all but one kept, the last that had an int8 layer
            return KeptLayers(kept, False, drop)
        drop = float_val_metric - score(student).metric
        if drop <= budget:
            progress.log(f"  accuracy budget {budget}: validation drop {drop:.4f} "
                         f"with {count} layer(s) kept in higher precision")
            return KeptLayers(kept, True, drop)
        count += 1


def float_cost(gm: fx.GraphModule, layers: list[Layer], kept: list[str]) -> dict[str, float]:
    """What the kept layers hold: their share of the quantized layers' weights and of their MACs per
    sample, and how many more bytes their weights take in fp32 than in int8."""
    sizes = {}
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), FakeQuant) or node.target[:3] != "wq_":
            continue
        source = node.args[0]
        if not (isinstance(source, fx.Node) and source.op == "get_attr"):
            continue
        weight = _attr(gm, source.target)
        for user in node.users:
            out = user.meta.get("val")
            positions = 1  # output positions per sample: a conv's pixels, a token sequence's tokens
            if isinstance(out, torch.Tensor) and out.dim() > 2:
                # int(): a dynamic dimension's size is a symbolic number, which the report cannot format
                positions = int(out[0, 0].numel() if op_kind(user) == "conv" else out[0, ..., 0].numel())
            sizes[user.name] = (weight.numel(), weight.numel() * positions)
    names = {layer.node for layer in layers}
    total_w = sum(w for n, (w, _) in sizes.items() if n in names) or 1
    total_m = sum(m for n, (_, m) in sizes.items() if n in names) or 1
    kept_w = sum(sizes.get(n, (0, 0))[0] for n in kept)
    kept_m = sum(sizes.get(n, (0, 0))[1] for n in kept)
    return {"weights_fraction": kept_w / total_w, "macs_fraction": kept_m / total_m, "extra_bytes": 3 * kept_w}
