"""How close a student is to the teacher on a validation slice: what selects among epochs,
observers, kept layers and PTQ-vs-QAD.

A Fidelity holds a continuous divergence from the teacher (the logit KL at the distillation
temperature for classifiers, the normalised output error otherwise), the discrete task metric
against the teacher (top-1 agreement, cosine) and how many samples it was measured on.

The selection rule is in one place: the continuous divergence decides, and the discrete metric
only vetoes. `best_of` (observers): a candidate whose metric is below the best candidate's by more
than GUARD_SE standard errors of a proportion on n samples is out, whatever its divergence; the
lowest divergence among the rest wins. `prefer` (epochs, PTQ vs QAD, bias correction): a new state
replaces the kept one only when its divergence is lower and its metric is not lower by more than
that noise, so what is kept is never further from the teacher than PTQ by the continuous measure. The standard error is sqrt(p (1 - p) / n) with p the best
  metric by Laplace's rule, (p n + 1) / (n + 2), so a perfect score still has sampling noise
  (n = 350: a drop of one flip, 0.0029, is within 2 SE = 0.0057; two flips are not). For metrics
  in [0, 1] that are not proportions (cosine) the same bound holds: no mean of values in [0, 1]
  varies more than a proportion with that mean. Ties keep the earlier candidate.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, TypeVar

import torch
from torch import nn

from ..evaluators import Evaluator
from ..model_io import first_output
from .losses import logit_kl

GUARD_SE = 2.0  # standard errors of the metric a candidate may lose before its divergence stops counting

K = TypeVar("K")


@dataclass(frozen=True)
class Fidelity:
    metric: float  # the task metric against the teacher's outputs (higher is better)
    error: float  # normalised output error to the teacher (lower is better)
    divergence: float  # the selection measure: logit KL at temperature T, or `error` (lower is better)
    samples: int = 0  # how many validation samples the metric counts

    def noise(self) -> float:
        """GUARD_SE standard errors of this metric as a proportion on `samples` samples."""
        n = max(self.samples, 1)
        p = min(max((self.metric * n + 1) / (n + 2), 0.0), 1.0)
        return GUARD_SE * math.sqrt(p * (1 - p) / n)

    def as_dict(self) -> dict[str, float]:
        return {"val_metric": self.metric, "val_output_error": self.error, "val_divergence": self.divergence}

    def state(self) -> dict:
        return asdict(self)


def best_of(candidates: Mapping[K, Fidelity]) -> K:
    """The candidate with the lowest divergence among those whose metric is within noise of the
    best metric (the first one on ties)."""
    top = max(candidates.values(), key=lambda f: f.metric)
    eligible = [k for k, f in candidates.items() if top.metric - f.metric <= top.noise()]
    return min(eligible, key=lambda k: candidates[k].divergence)


def prefer(candidate: Fidelity, incumbent: Fidelity) -> tuple[bool, str]:
    """Whether `candidate` replaces `incumbent` (lower divergence, metric not lower beyond noise),
    and why, in words."""
    drop, noise = incumbent.metric - candidate.metric, max(incumbent, candidate, key=lambda f: f.metric).noise()
    if drop > noise:
        return False, f"metric down {drop:.4f}, beyond noise {noise:.4f}"
    metric = f"metric {-drop:+.4f} within noise {noise:.4f}"
    if candidate.divergence < incumbent.divergence:
        return True, f"divergence {candidate.divergence:.3g} < {incumbent.divergence:.3g}, {metric}"
    return False, f"divergence {candidate.divergence:.3g} >= {incumbent.divergence:.3g}, {metric}"


def batched_outputs(module: nn.Module, inputs: tuple[torch.Tensor, ...], batch: int) -> torch.Tensor:
    """The module's first output over `inputs`, `batch` samples at a time, without gradients."""
    with torch.no_grad():
        return torch.cat([first_output(module(*(x[s:s + batch] for x in inputs))).float()
                          for s in range(0, inputs[0].shape[0], batch)])


def output_error(out: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean squared error relative to the teacher output's energy (scale-free across models)."""
    return float(((out - teacher) ** 2).mean() / (teacher ** 2).mean().clamp_min(1e-12))


def divergence(out: torch.Tensor, teacher: torch.Tensor, task: str, temperature: float) -> float:
    """The continuous selection measure: what distillation minimises on this task's output."""
    if task == "classification" and out.dim() == 2:
        with torch.no_grad():
            return float(logit_kl(out, teacher, temperature))
    return output_error(out, teacher)


def held_out_scorer(data, teacher: nn.Module, evaluate: Evaluator, batch: int) -> tuple[float, Callable[[nn.Module], float]]:
    """The teacher's task metric on the recipe's held-out samples (against the labels where it has
    them), and a function giving a model's: what a pass reports as before and after."""
    labels = data.holdout_labels.numpy() if data.holdout_labels is not None else None
    reference = batched_outputs(teacher, data.holdout, batch).numpy()

    def metric(model: nn.Module) -> float:
        return evaluate(batched_outputs(model, data.holdout, batch).numpy(), reference, labels)["metric"]

    return evaluate(reference, reference, labels)["metric"], metric


def fidelity_scorer(inputs: tuple[torch.Tensor, ...], teacher_out: torch.Tensor, evaluate: Evaluator,
                    batch: int, task: str, temperature: float = 4.0) -> Callable[[nn.Module], Fidelity]:
    """A function scoring a student on `inputs` against the teacher's outputs there (`task` and
    `temperature` pick the divergence: logit KL for "classification"). `task` has no default: a
    classifier scored by the output error (logit MSE, which KL training need not lower) had its
    epochs of 59% top-1 thrown away for the untrained 15% one (bench/common.distill_student)."""
    reference = teacher_out.numpy()
    samples = int(inputs[0].shape[0])

    def score(model: nn.Module) -> Fidelity:
        out = batched_outputs(model, inputs, batch)
        return Fidelity(evaluate(out.numpy(), reference, None)["metric"], output_error(out, teacher_out),
                        divergence(out, teacher_out, task, temperature), samples)

    return score
