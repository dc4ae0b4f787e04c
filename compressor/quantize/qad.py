"""Quantization-aware distillation: fine-tune the fake-quant student towards the float teacher.

Loss = kd_weight * KL(teacher || student) at temperature T (times T^2), for classifiers, or the
teacher-normalised MSE of the outputs for other tasks; + label_weight * cross-entropy when labels
exist; + feature_weight * normalised MSE of the penultimate features (the input of the last
weighted layer). Teacher outputs are computed once. Early stopping on the task metric over a
validation slice of the calibration set (never the held-out set, which is verification's).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import native
from ..capture import op_kind
from ..model_io import first_output
from ..progress import Progress
from .fakequant import FakeQuant
from .scheme import WEIGHTED


MIN_SCALE = 1e-8


@dataclass
class QadSettings:
    epochs: int
    lr: float
    batch: int
    temperature: float
    kd_weight: float
    label_weight: float
    feature_weight: float
    patience: int
    seed: int


class Tap(nn.Module):
    """Identity that remembers what passed through: a feature for the distillation loss."""

    def forward(self, x):
        self.value = x
        return x


def add_feature_tap(gm: fx.GraphModule) -> Tap | None:
    """Tap the input of the last weighted layer (found by name, so teacher and student agree)."""
    weighted = [n for n in gm.graph.nodes if op_kind(n) in WEIGHTED]
    if not weighted:
        return None
    value = weighted[-1].args[0]
    while value.op == "call_module" and isinstance(gm.get_submodule(value.target), FakeQuant):
        value = value.args[0]  # the float value before the student's quantizer
    tap = Tap()
    gm.add_submodule("feature_tap", tap)
    with gm.graph.inserting_after(value):
        node = gm.graph.call_module("feature_tap", (value,))
    for user in list(value.users):
        if user is not node:
            user.replace_input_with(value, node)
    gm.recompile()
    return tap


def _normalised_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).mean() / (b ** 2).mean().clamp_min(1e-12)


def distill(student: nn.Module, teacher_out: torch.Tensor, inputs: tuple[torch.Tensor, ...],
            labels: torch.Tensor | None, score: Callable[[nn.Module], tuple[float, float]], task: str,
            s: QadSettings, progress: Progress, teacher_features: torch.Tensor | None = None,
            tap: Tap | None = None) -> list[dict]:
    """Train `student` in place; it ends with the best validation state. `score(student)` is the
    validation (metric, -output error), higher is better. Returns the epoch history."""
    scales = [p for n, p in student.named_parameters() if n.endswith(".scale")]
    weights = [p for n, p in student.named_parameters() if not n.endswith(".scale")]
    optimizer = torch.optim.Adam([{"params": weights, "lr": s.lr}, {"params": scales, "lr": s.lr}])
    steps = s.epochs * max(1, (inputs[0].shape[0] + s.batch - 1) // s.batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    gen = torch.Generator().manual_seed(s.seed)

    best_metric, best_state, history, stale = score(student), copy.deepcopy(student.state_dict()), [], 0
    history.append({"epoch": 0, "val_metric": best_metric[0], "val_output_error": -best_metric[1]})
    for epoch in range(1, s.epochs + 1):
        order = torch.randperm(inputs[0].shape[0], generator=gen)
        total = 0.0
        for start in progress.bar(range(0, len(order), s.batch), desc=f"QAD epoch {epoch}/{s.epochs}"):
            idx = order[start:start + s.batch]
            out = first_output(student(*(x[idx] for x in inputs)))
            target = teacher_out[idx]
            if task == "classification":
                loss = s.kd_weight * native.kd_loss(out, target, s.temperature)
                if labels is not None and s.label_weight > 0:
                    loss = loss + s.label_weight * F.cross_entropy(out, labels[idx])
            else:
                loss = s.kd_weight * _normalised_mse(out, target)
            if tap is not None and teacher_features is not None and s.feature_weight > 0:
                loss = loss + s.feature_weight * _normalised_mse(tap.value, teacher_features[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():  # a step can push a tiny scale through zero; LSQ needs it positive
                for scale in scales:
                    scale.clamp_(min=MIN_SCALE)
            total += float(loss.detach()) * len(idx)
        metric = score(student)
        history.append({"epoch": epoch, "loss": total / len(order), "val_metric": metric[0], "val_output_error": -metric[1]})
        progress.log(f"  QAD epoch {epoch}: loss {total / len(order):.4f}, validation metric {metric[0]:.4f}, "
                     f"output error {-metric[1]:.2e}")
        if metric > best_metric:
            best_metric, best_state, stale = metric, copy.deepcopy(student.state_dict()), 0
        else:
            stale += 1
            if stale >= s.patience:
                break
    student.load_state_dict(best_state)
    return history
