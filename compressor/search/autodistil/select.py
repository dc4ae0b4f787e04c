"""Subnet search without retraining: every candidate of a trained supernet is scored on held-out
text by its distillation fidelity to the teacher, costed, checked against the constraints, and
the best feasible one is chosen.

Fidelity: for an embedding encoder, the mean cosine of the subnet's sentence embedding to the
teacher's (what its users consume); for a classifier, whose head the task-agnostic training does
not teach, minus the last layer's self-attention relation loss. Both are higher-is-better.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ...distill import HookTaps, self_attention_relation_loss
from ...evaluators import cosine
from ...model_io import first_output
from ..outcome import Candidate
from .cost import subnet_cost
from .space import SubnetSpec
from .supernet import Supernet

LIMITS = ("params", "macs", "peak_activation_bytes", "latency_ms")  # the constraint fields, absolute limits


def trimmed(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask, ...) cut to the longest real sentence in the batch: padding is
    masked out of every real token's computation, so this changes nothing but the time taken."""
    length = max(1, int(batch[1].sum(dim=1).max()))
    return tuple(x[:, :length] for x in batch)


def relation_heads(supernet: Supernet, specs: list[SubnetSpec], given: int | None) -> int:
    """The relation heads that Q, K and V split into: `given`, else the largest count that divides
    the teacher's heads and every subnet's (each subnet's own heads when they agree)."""
    if given is not None:
        for spec in specs:
            if spec.hidden % given or supernet.dims.hidden % given:
                raise ValueError(f"relation_heads {given} does not divide the width {spec.hidden} of {spec.describe()}")
        return given
    return math.gcd(supernet.dims.heads, *(s.heads for s in specs))


@dataclass
class TeacherTargets:
    """The teacher on one batch: its output and its last layer's (Q, K, V)."""

    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor
    qkv: tuple[torch.Tensor, ...]


def teacher_targets(teacher, supernet: Supernet, batch: tuple[torch.Tensor, ...]) -> TeacherTargets:
    batch = trimmed(batch)
    with torch.no_grad(), HookTaps(teacher, supernet.qkv_paths(supernet.dims.layers)) as taps:
        out = first_output(teacher(*batch)).float()
    return TeacherTargets(batch, out, tuple(v.detach() for v in taps.values))


def subnet_loss(supernet: Supernet, spec: SubnetSpec, target: TeacherTargets, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The subnet's self-attention relation loss to the teacher on the batch, and its output."""
    with HookTaps(supernet.skeleton(spec), supernet.qkv_paths(spec.layers)) as taps:
        out = first_output(supernet(spec, *target.inputs))
    loss = self_attention_relation_loss(tuple(taps.values), target.qkv, target.inputs[1], heads)
    return loss, out


class FidelityScorer:
    """Scores subnets of a supernet against the teacher on held-out inputs (targets computed once)."""

    def __init__(self, teacher, supernet: Supernet, inputs: tuple[torch.Tensor, ...], heads: int, batch: int):
        self.supernet, self.heads = supernet, heads
        self.embedding = getattr(teacher, "task", "embedding") != "classification"
        self.targets = [teacher_targets(teacher, supernet, tuple(x[s:s + batch] for x in inputs))
                        for s in range(0, inputs[0].shape[0], batch)]
        self.teacher_out = torch.cat([t.output for t in self.targets])

    def __call__(self, spec: SubnetSpec) -> dict[str, float]:
        losses, outs = [], []
        with torch.no_grad():
            for target in self.targets:
                loss, out = subnet_loss(self.supernet, spec, target, self.heads)
                losses.append(float(loss) * len(out))
                outs.append(out.float())
        relation = sum(losses) / len(self.teacher_out)
        result = {"relation_loss": relation}
        if self.embedding:
            result.update(cosine(torch.cat(outs).numpy(), self.teacher_out.numpy(), None))
            result["cosine"] = result.pop("metric")
            result["score"] = result["cosine"]
        else:
            result["score"] = -relation
        return result


def violations(cost: dict, constraints) -> list[str]:
    """The constraints a cost breaks, in words (none: feasible)."""
    broken = []
    for key in LIMITS:
        limit = getattr(constraints, key, None) if constraints is not None else None
        value = cost.get(key)
        if limit is not None and value is not None and value > limit:
            broken.append(f"{key} {value:,.4g} > {limit:,.4g}")
    return broken


def search_subnets(supernet: Supernet, candidates: list[SubnetSpec], score: Callable[[SubnetSpec], dict],
                   constraints, sequence: int, progress=None,
                   latency: Callable[[SubnetSpec], float] | None = None) -> list[Candidate]:
    """Every candidate scored and costed, best first (feasible ones before the others; every one is
    scored, for the Pareto front). `latency` (measured on the target's runner, milliseconds) is
    asked only for candidates within every other constraint, and only with a latency limit."""
    rows = []
    loop = candidates if progress is None else progress.bar(candidates, desc="autodistil search")
    for spec in loop:
        cost = subnet_cost(supernet.shared, spec, sequence)
        broken = violations(cost, constraints)
        if not broken and latency is not None and getattr(constraints, "latency_ms", None) is not None:
            cost["latency_ms"] = latency(spec)
            broken = violations(cost, constraints)
        details = score(spec)
        candidate = Candidate(spec={**spec.to_json(), "encoder_params": cost["encoder_params"],
                                    **{k: v for k, v in details.items() if k != "score"}},
                              score=float(details["score"]), macs=cost["macs"], params=cost["params"],
                              latency_ms=cost.get("latency_ms"), peak_activation_bytes=cost["peak_activation_bytes"],
                              feasible=not broken)
        if broken:
            candidate.spec["violates"] = broken
        rows.append(candidate)
    return sorted(rows, key=lambda c: (not c.feasible, -c.score, c.macs))
