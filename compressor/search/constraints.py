"""The limits a searched student must meet, from the flags (fractions of the teacher's costs) or
the pipeline TOML: parameters, MACs per sample, peak activation memory, latency on the target.
Each is optional; a Candidate is feasible when it is within every one that is set."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import CompressError
from .outcome import Candidate

# constraint -> (the Candidate field it limits, how the report names its unit)
LIMITS = {
    "params": ("params", "parameters"),
    "macs": ("macs", "MACs"),
    "peak_activation_bytes": ("peak_activation_bytes", "bytes of peak activation memory"),
    "latency_ms": ("latency_ms", "ms"),
}


@dataclass(frozen=True)
class Constraints:
    params: int | None = None
    macs: int | None = None
    peak_activation_bytes: int | None = None
    latency_ms: float | None = None
    latency_source: str = "none"  # how a candidate's latency_ms is known: "table", "macs proxy", ...
    # predicts a candidate's latency on the target: .predict(module, example) -> ms (latency_table.py)
    latency_model: Any = field(default=None, compare=False)

    def latency_of(self, module, example, shapes: dict | None = None) -> float | None:
        return self.latency_model.predict(module, example, shapes) if self.latency_model is not None else None

    def limits(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in LIMITS if getattr(self, name) is not None}

    def binding(self, candidate: Candidate) -> str | None:
        """The first constraint the candidate exceeds (None: feasible). A latency limit with no
        latency known for the candidate is exceeded: feasibility is never assumed."""
        for name, limit in self.limits().items():
            value = getattr(candidate, LIMITS[name][0])
            if value is None or value > limit:
                return name
        return None

    def feasible(self, candidate: Candidate) -> bool:
        return self.binding(candidate) is None

    def describe(self) -> str:
        parts = [f"{name} <= {limit:,.6g}" for name, limit in self.limits().items()]
        return ", ".join(parts) if parts else "none"

    def unreachable(self, smallest: Candidate) -> CompressError:
        """The error for a space with no feasible candidate: the binding constraint and what the
        smallest candidate of the space costs."""
        name = self.binding(smallest) or next(iter(self.limits()), "none")
        field, unit = LIMITS.get(name, (name, ""))
        limit = self.limits().get(name)
        value = getattr(smallest, field, None)
        have = "unknown" if value is None else f"{value:,.6g}"
        return CompressError(f"the search space has no candidate within the constraints: {name} <= {limit:,.6g} {unit} "
                             f"binds, and the smallest candidate needs {have} {unit} (params {smallest.params:,}, "
                             f"MACs {smallest.macs:,}); give a larger budget or a larger search space")


def from_fractions(teacher: Candidate, *, params: float | None = None, macs: float | None = None,
                   memory: float | None = None, latency: float | None = None,
                   latency_source: str = "none") -> Constraints:
    """Constraints as fractions of the teacher's costs (what the budget flags give)."""
    for flag, value in (("params_budget", params), ("macs_budget", macs), ("memory_budget", memory),
                        ("latency_budget", latency)):
        if value is not None and not 0 < value <= 1:
            raise CompressError(f"search.{flag} must be a fraction in (0, 1], got {value}")
    if latency is not None and teacher.latency_ms is None:
        raise CompressError("search.latency_budget needs the teacher's latency on the target, which is not known")
    return Constraints(
        params=int(params * teacher.params) if params is not None else None,
        macs=int(macs * teacher.macs) if macs is not None else None,
        peak_activation_bytes=int(memory * teacher.peak_activation_bytes) if memory is not None else None,
        latency_ms=latency * teacher.latency_ms if latency is not None else None,
        latency_source=latency_source)
