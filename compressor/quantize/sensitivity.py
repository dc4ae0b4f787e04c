"""Per-layer sensitivity: quantize one layer at a time and measure how far the output moves."""
from __future__ import annotations

import torch
from torch import fx, nn

from ..distill import batched_outputs, divergence, output_error
from ..evaluators import Evaluator
from ..progress import Progress
from .fakequant import OFF, QUANTIZE, fake_quants
from .graph import Layer, op_kind

CONV_GROUPS_ARG = {torch.ops.aten.conv2d.default: 6, torch.ops.aten.conv1d.default: 6,
                   torch.ops.aten.convolution.default: 8}


def set_layers(model: nn.Module, layers: list[Layer], enabled: set[str], kept: str = OFF) -> None:
    """Quantize the layers in `enabled`; the others' quantizers go to `kept` (OFF: float, WIDE: the
    target's 16-bit fallback)."""
    on = {fq for layer in layers if layer.node in enabled for fq in layer.fake_quants}
    for name, m in fake_quants(model):
        m.state = QUANTIZE if name in on else kept


def describe_op(node: fx.Node) -> str:
    """The op's kind, with "depthwise" for a conv with one input channel per group: the layers a
    per-tensor activation range costs most, named so the table shows them."""
    kind = op_kind(node) or str(node.target)
    index = CONV_GROUPS_ARG.get(node.target)
    groups = node.args[index] if index is not None and len(node.args) > index else 1
    return f"{kind} (depthwise)" if kind == "conv" and isinstance(groups, int) and groups > 1 else kind


def analyse(model: fx.GraphModule, layers: list[Layer], inputs: tuple[torch.Tensor, ...], teacher_out: torch.Tensor,
            evaluate: Evaluator, batch: int, progress: Progress, task: str = "", temperature: float = 4.0) -> list[dict]:
    """One row per layer, most sensitive (largest divergence from the teacher: compressor.distill's
    selection measure) first. Leaves every layer quantized afterwards."""
    rows = []
    teacher_np = teacher_out.numpy()
    nodes = {n.name: n for n in model.graph.nodes}
    for layer in progress.bar(layers, desc="sensitivity"):
        set_layers(model, layers, {layer.node})
        out = batched_outputs(model, inputs, batch)
        rows.append({"layer": layer.node, "op": describe_op(nodes[layer.node]) if layer.node in nodes else layer.kind,
                     "divergence": divergence(out, teacher_out, task, temperature),
                     "output_error": output_error(out, teacher_out),
                     "metric_vs_teacher": evaluate(out.numpy(), teacher_np, None)["metric"]})
    set_layers(model, layers, {layer.node for layer in layers})
    return sorted(rows, key=lambda r: -r["divergence"])
