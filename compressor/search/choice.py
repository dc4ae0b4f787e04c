"""Which candidates the CNN search prefers: those that use most of the budget, then the higher
score. DisWOT scores networks at initialisation and does not grow with capacity, so ranked on the
score alone the search spent a fraction of what it was given: under a 25% MACs budget on the MNIST
sample it chose a student with 4.4% of the teacher's MACs, which distilled 13 points below the
teacher. A budget says what the user can afford; the score picks among the networks that spend it.
Where no scored candidate reaches `min_use` of the budget (a coarse space), the score alone decides."""
from __future__ import annotations

from typing import Callable

from .constraints import LIMITS, Constraints
from .outcome import Candidate


def spent_fraction(candidate: Candidate, constraints: Constraints) -> float | None:
    """The largest fraction of any set limit the candidate spends (the one closest to binding);
    None where no limit is set or a limited cost is unknown."""
    fractions = []
    for name, limit in constraints.limits().items():
        value = getattr(candidate, LIMITS[name][0])
        if value is None or limit <= 0:
            return None
        fractions.append(value / limit)
    return max(fractions) if fractions else None


def preference(constraints: Constraints, min_use: float) -> Callable[[Candidate], tuple[bool, float]]:
    """A sort key, higher is preferred: (uses at least `min_use` of the budget, score)."""
    def key(candidate: Candidate) -> tuple[bool, float]:
        use = spent_fraction(candidate, constraints)
        return (use is None or use >= min_use, candidate.score)

    return key


def choose(candidates: list[Candidate], constraints: Constraints, min_use: float) -> Candidate:
    """The preferred feasible candidate."""
    feasible = [c for c in candidates if c.feasible]
    if not feasible:
        raise ValueError("choose needs at least one feasible candidate")
    return max(feasible, key=preference(constraints, min_use))
