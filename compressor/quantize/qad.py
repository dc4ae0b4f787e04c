"""Quantization-aware distillation: the fake-quant student distilled towards the float teacher
with compressor.distill. What is QAD's own is only what quantization adds to a distillation:
LSQ scales trained beside the weights and kept positive, and the feature tap that looks through
the student's quantizers.

Loss = the prediction loss of compressor.distill.prediction_loss (logit KL at temperature T for
classifiers, normalised MSE otherwise, label cross-entropy where asked) + feature_weight *
normalised MSE of the penultimate features (the input of the last weighted layer). Teacher
outputs are computed once; selection is on the validation slice of the calibration data (never
the held-out set, which is verification's).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import fx, nn

from ..distill import Fidelity, feature_loss, prediction_loss, tap_last_weighted_input, tapped_features, train
from ..model_io import first_output
from ..progress import Progress
from .fakequant import FakeQuant

MIN_SCALE = 1e-8


def quantization_aware_distill(student: fx.GraphModule, teacher_out: torch.Tensor, inputs: tuple[torch.Tensor, ...],
                               labels: torch.Tensor | None, score: Callable[[nn.Module], Fidelity], task: str, cfg,
                               progress: Progress, teacher_graph: fx.GraphModule | None = None,
                               checkpoint: Path | None = None) -> list[dict]:
    """Train the fake-quant `student` in place (weights and LSQ scales); it ends in its best
    validation state. `teacher_graph`, the teacher in graph form, is needed for the feature loss;
    `checkpoint`, where an interrupted run resumes from."""
    feats = tapped_features(teacher_graph, inputs, cfg.batch) if cfg.feature_weight > 0 and teacher_graph else None
    tap = tap_last_weighted_input(student, transparent=(FakeQuant,)) if feats is not None else None

    def loss(idx: torch.Tensor) -> torch.Tensor:
        out = first_output(student(*(x[idx] for x in inputs)))
        value = prediction_loss(out, teacher_out[idx], task, cfg, labels[idx] if labels is not None else None)
        if tap is not None:
            value = value + cfg.feature_weight * feature_loss([tap.value], [feats[idx]])
        return value

    scales = [p for n, p in student.named_parameters() if n.endswith(".scale")]
    weights = [p for n, p in student.named_parameters() if not n.endswith(".scale")]

    def keep_scales_positive() -> None:  # a step can push a tiny scale through zero; LSQ needs it positive
        with torch.no_grad():
            for scale in scales:
                scale.clamp_(min=MIN_SCALE)

    return train(student, inputs[0].shape[0], loss, score, cfg, progress, label="QAD",
                 param_groups=[{"params": weights, "lr": cfg.lr}, {"params": scales, "lr": cfg.lr * cfg.scale_lr_factor}],
                 after_step=keep_scales_positive, checkpoint=checkpoint)
