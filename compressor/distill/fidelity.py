"""How close a student is to the teacher on a validation slice: what selects among epochs,
observers and kept layers.

A Fidelity holds the task metric against the teacher (top-1 agreement for classifiers, cosine
for embeddings) and the continuous output error (MSE relative to the teacher's energy). The
ordering is in one place, `Fidelity.key`: the metric first, the error breaking ties.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..evaluators import Evaluator
from ..model_io import first_output


@dataclass(frozen=True)
class Fidelity:
    metric: float  # the task metric against the teacher's outputs (higher is better)
    error: float  # output error to the teacher (lower is better)

    def key(self) -> tuple[float, float]:
        return self.metric, -self.error

    def __gt__(self, other: "Fidelity") -> bool:
        return self.key() > other.key()

    def as_dict(self) -> dict[str, float]:
        return {"val_metric": self.metric, "val_output_error": self.error}


def batched_outputs(module: nn.Module, inputs: tuple[torch.Tensor, ...], batch: int) -> torch.Tensor:
    """The module's first output over `inputs`, `batch` samples at a time, without gradients."""
    with torch.no_grad():
        return torch.cat([first_output(module(*(x[s:s + batch] for x in inputs))).float()
                          for s in range(0, inputs[0].shape[0], batch)])


def output_error(out: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean squared error relative to the teacher output's energy (scale-free across models)."""
    return float(((out - teacher) ** 2).mean() / (teacher ** 2).mean().clamp_min(1e-12))


def held_out_scorer(data, teacher: nn.Module, evaluate: Evaluator, batch: int) -> tuple[float, Callable[[nn.Module], float]]:
    """The teacher's task metric on the recipe's held-out samples (against the labels where it has
    them), and a function giving a model's: what a pass reports as before and after."""
    labels = data.holdout_labels.numpy() if data.holdout_labels is not None else None
    reference = batched_outputs(teacher, data.holdout, batch).numpy()

    def metric(model: nn.Module) -> float:
        return evaluate(batched_outputs(model, data.holdout, batch).numpy(), reference, labels)["metric"]

    return evaluate(reference, reference, labels)["metric"], metric


def fidelity_scorer(inputs: tuple[torch.Tensor, ...], teacher_out: torch.Tensor, evaluate: Evaluator,
                    batch: int) -> Callable[[nn.Module], Fidelity]:
    """A function scoring a student on `inputs` against the teacher's outputs there."""
    reference = teacher_out.numpy()

    def score(model: nn.Module) -> Fidelity:
        out = batched_outputs(model, inputs, batch)
        return Fidelity(evaluate(out.numpy(), reference, None)["metric"], output_error(out, teacher_out))

    return score
