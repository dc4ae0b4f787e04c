"""What a student searcher hands back to the `search` pass: the chosen student, its architecture
spec, and every candidate it scored (for the Pareto front and the report). This is the contract
between the pass and each family's searcher (DisWOT for CNNs, AutoDistil for encoders)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Candidate:
    spec: dict[str, Any]  # the architecture, JSON-able (widths, depths, heads, ...)
    score: float  # higher is better; what `score_name` names
    macs: int
    params: int
    latency_ms: float | None = None  # predicted or measured on the target's runner; None: not known
    peak_activation_bytes: int | None = None
    feasible: bool = True  # within every constraint

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "score": self.score, "macs": self.macs, "params": self.params,
                "latency_ms": self.latency_ms, "peak_activation_bytes": self.peak_activation_bytes,
                "feasible": self.feasible}


@dataclass
class SearchOutcome:
    student: torch.nn.Module  # standalone, exportable like any other model
    spec: dict[str, Any]  # the chosen architecture (also written as JSON)
    method: str  # "diswot" or "autodistil"
    score_name: str  # what Candidate.score measures, in words for the report
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the search itself
    notes: list[str] = field(default_factory=list)  # lines the report prints (e.g. "relation similarity only: no classifier head")
    details: dict[str, Any] = field(default_factory=dict)  # searcher-specific numbers report.json keeps (JSON-able)
    chosen: Candidate | None = None  # the candidate `student` is built from (the searcher's choice, one of `candidates`)
