"""Pruning budgets: what the user asks for (`--sparsity`, `--macs-budget`, `--latency-budget`),
as the fraction of a cost that the pruned model may keep.

    sparsity S        params of the prunable structure kept <= 1 - S
    macs_budget F     MACs per sample kept <= F (of the teacher's, at the input spec's shape)
    latency_budget F  latency on the target's runner <= F (of the teacher's): converted to a MACs
                      fraction by a cost model fitted to measured latencies (see latency_model.py)
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CompressError

KINDS = ("sparsity", "macs", "latency")
OPTIONS = ("sparsity", "macs_budget", "latency_budget")  # the prune pass's options (and flags) for KINDS


@dataclass(frozen=True)
class Budget:
    kind: str  # sparsity | macs | latency
    value: float  # as the user gave it (S for sparsity, F otherwise)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise CompressError(f"unknown pruning budget '{self.kind}'; known: {', '.join(KINDS)}")
        if not 0 < self.value < 1:
            flag = {"sparsity": "--sparsity", "macs": "--macs-budget", "latency": "--latency-budget"}[self.kind]
            raise CompressError(f"{flag} must be a fraction in (0, 1), got {self.value}")

    @property
    def cost(self) -> str:
        """The cost the trainer constrains: params for sparsity, MACs otherwise."""
        return "params" if self.kind == "sparsity" else "macs"

    @property
    def keep_fraction(self) -> float:
        return 1 - self.value if self.kind == "sparsity" else self.value

    def describe(self) -> str:
        return {"sparsity": f"{self.value:.0%} of prunable parameters removed",
                "macs": f"{self.value:.0%} of the teacher's MACs",
                "latency": f"{self.value:.0%} of the teacher's latency"}[self.kind]


def from_options(sparsity: float | None, macs: float | None, latency: float | None) -> Budget | None:
    given = [Budget(k, v) for k, v in zip(KINDS, (sparsity, macs, latency)) if v is not None]
    if len(given) > 1:
        raise CompressError("give one pruning budget: --sparsity, --macs-budget or --latency-budget")
    return given[0] if given else None
