"""The `search` pass's options ([search] in the pipeline TOML; the budget flags set the budgets)."""
from __future__ import annotations

from dataclasses import dataclass

LATENCY_SOURCES = ("table", "macs")
INITS = ("teacher", "random")


@dataclass
class SearchConfig:
    space: str = "derived"  # "derived" (cut from the teacher's graph) or a built-in family: resnet, mobilenetv2
    # budgets, as fractions of the teacher's costs (each optional)
    macs_budget: float | None = None
    params_budget: float | None = None
    memory_budget: float | None = None  # peak activation memory
    latency_budget: float | None = None  # latency on the target's runner (search.latency says how it is known)
    latency: str = "table"  # "table": a per-layer latency table measured on the target's runner; "macs": MACs as proxy
    latency_holdout: int = 3  # candidates timed end to end to report the table's prediction error
    # evolutionary search
    population: int = 20
    generations: int = 10
    mutation: float = 0.2
    crossover: float = 0.5
    seed: int = 0
    # the search prefers candidates that spend at least this fraction of the tightest budget, then
    # the higher DisWOT score (search/choice.py); the score alone where none does. At 0.8 it chose
    # 20.8% of the teacher's MACs under a 25% budget on the MNIST sample: capacity left unused
    budget_use: float = 0.9
    score_batch: int = 32  # samples DisWOT compares the networks on
    # the student handed on: "teacher" starts a derived student from the teacher's weights of its
    # kept channels (a head start for the distill pass), "random" from random initialisation
    init: str = "teacher"
    round_to: int = 8  # derived widths are multiples of this (groups at least twice as wide)

    def __post_init__(self):
        if self.latency not in LATENCY_SOURCES:
            raise ValueError(f"latency must be one of {', '.join(LATENCY_SOURCES)}, got '{self.latency}'")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got '{self.init}'")
        for name in ("macs_budget", "params_budget", "memory_budget", "latency_budget"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"{name} must be a fraction in (0, 1], got {value}")
        if self.population < 2 or self.generations < 0 or self.score_batch < 2 or self.round_to < 1:
            raise ValueError("population must be >= 2, generations >= 0, score_batch >= 2, round_to >= 1")
        if not 0 <= self.budget_use <= 1:
            raise ValueError(f"budget_use must be a fraction in [0, 1], got {self.budget_use}")
        if not 0 <= self.mutation <= 1 or not 0 <= self.crossover <= 1 or self.latency_holdout < 0:
            raise ValueError("mutation and crossover must be in [0, 1], latency_holdout >= 0")
