"""Per-layer sensitivity: quantize one layer at a time and measure how far the output moves."""
from __future__ import annotations

import torch
from torch import nn

from ..distill import batched_outputs, output_error
from ..evaluators import Evaluator
from ..progress import Progress
from .fakequant import OFF, QUANTIZE, fake_quants
from .graph import Layer


def set_layers(model: nn.Module, layers: list[Layer], enabled: set[str]) -> None:
    on = {fq for layer in layers if layer.node in enabled for fq in layer.fake_quants}
    for name, m in fake_quants(model):
        m.state = QUANTIZE if name in on else OFF


def analyse(model: nn.Module, layers: list[Layer], inputs: tuple[torch.Tensor, ...], teacher_out: torch.Tensor,
            evaluate: Evaluator, batch: int, progress: Progress) -> list[dict]:
    """One row per layer, most sensitive first. Leaves every layer quantized afterwards."""
    rows = []
    teacher_np = teacher_out.numpy()
    for layer in progress.bar(layers, desc="sensitivity"):
        set_layers(model, layers, {layer.node})
        out = batched_outputs(model, inputs, batch)
        rows.append({"layer": layer.node, "op": layer.kind, "output_error": output_error(out, teacher_out),
                     "metric_vs_teacher": evaluate(out.numpy(), teacher_np, None)["metric"]})
    set_layers(model, layers, {layer.node for layer in layers})
    return sorted(rows, key=lambda r: -r["output_error"])
