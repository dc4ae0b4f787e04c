"""Bias correction after calibration: the shift that quantizing a layer's weights adds to each
output channel's expected value, measured on the calibration data and folded into the bias.

For a Conv/Linear with float weights W and fake-quantized weights Wq, the quantized layer computes
op(x, Wq) = op(x, W) + op(x, Wq - W). The second term's mean over the calibration samples (and
positions) is a per-channel offset that int8 rounding adds systematically: a depthwise conv's 9
weights per channel round with few terms to average out, so its offset is largest. Subtracting it
from the bias removes it (NNCF's fast bias correction does the same; here one pass over the data,
with each layer's input as the quantized network gives it).
"""
from __future__ import annotations

import torch
from torch import fx, nn

from .fakequant import FakeQuant
from .graph import WEIGHT_ARG, Layer, _attr

BIAS_ARG = 2  # aten conv1d/conv2d/convolution and linear: (input, weight, bias, ...)


def _weights(gm: fx.GraphModule, layers: list[Layer]) -> dict[fx.Node, fx.Node]:
    """layer op node -> the get_attr node of its float weight, for layers whose weight is fake-quantized."""
    kinds = {layer.node: layer.kind for layer in layers if layer.kind in ("conv", "linear")}
    found = {}
    for node in gm.graph.nodes:
        if node.name not in kinds:
            continue
        wq = node.args[WEIGHT_ARG[kinds[node.name]]]
        if (isinstance(wq, fx.Node) and wq.op == "call_module" and isinstance(gm.get_submodule(wq.target), FakeQuant)
                and isinstance(wq.args[0], fx.Node) and wq.args[0].op == "get_attr"):
            found[node] = wq.args[0]
    return found


class _ShiftMeter(fx.Interpreter):
    """Runs the quantized graph and, at each measured layer, also op(x, Wq - W) without bias."""

    def __init__(self, gm: fx.GraphModule, weights: dict[fx.Node, fx.Node]):
        super().__init__(gm, garbage_collect_values=False)  # the float weights are read after their last use
        self.weights = weights
        self.sums: dict[fx.Node, torch.Tensor] = {}
        self.counts: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n in self.weights:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            delta = args[1] - self.env[self.weights[n]]
            shift = n.target(args[0], delta, None, *args[BIAS_ARG + 1:], **kwargs)
            channel = shift.dim() - 1 if n.target == torch.ops.aten.linear.default else 1  # conv: N C ...
            dims = [d for d in range(shift.dim()) if d != channel]
            self.sums[n] = self.sums.get(n, 0) + shift.sum(dim=dims)
            self.counts[n] = self.counts.get(n, 0) + shift.numel() // shift.shape[channel]
        return out


def expected_shifts(gm: fx.GraphModule, layers: list[Layer], inputs: tuple[torch.Tensor, ...],
                    batch: int) -> dict[str, torch.Tensor]:
    """Per layer (by node name): the mean per-channel output shift its weight quantization adds."""
    meter = _ShiftMeter(gm, _weights(gm, layers))
    with torch.no_grad():
        for start in range(0, inputs[0].shape[0], batch):
            meter.run(*(x[start:start + batch] for x in inputs))
    return {n.name: meter.sums[n] / meter.counts[n] for n in meter.sums}


def apply_shifts(gm: fx.GraphModule, shifts: dict[str, torch.Tensor], sign: float = -1.0) -> None:
    """Add `sign` x shift to each layer's bias (a zero bias is added where the layer has none);
    `sign = -1` corrects, `+1` undoes a correction."""
    for node in gm.graph.nodes:
        if node.name not in shifts:
            continue
        shift = shifts[node.name]
        bias_node = node.args[BIAS_ARG] if len(node.args) > BIAS_ARG else None
        if bias_node is None:
            name = f"{node.name}_corrected_bias"
            gm.register_parameter(name, nn.Parameter(torch.zeros_like(shift)))
            with gm.graph.inserting_before(node):
                bias_node = gm.graph.get_attr(name)
            node.args = (*node.args[:BIAS_ARG], bias_node, *node.args[BIAS_ARG + 1:])
        bias = _attr(gm, bias_node.target)
        with torch.no_grad():
            bias.add_(sign * shift.to(bias.dtype))
    gm.recompile()
