"""Evolutionary search over a SearchSpace, with no training: a population of feasible candidates,
each generation's parents the best-ranked half (by score, or by the caller's rank), children by uniform crossover and neighbour
mutation, the next population the best of parents and children. Every spec is evaluated once
(costs first; only a feasible one is scored)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from ..progress import Progress
from .outcome import Candidate
from .space import SearchSpace, spec_key


@dataclass(frozen=True)
class EvolutionSettings:
    population: int = 20
    generations: int = 10
    mutation: float = 0.2  # per-gene probability of moving to a neighbouring value
    crossover: float = 0.5  # probability that a child mixes two parents (else: one parent, mutated)
    seed: int = 0
    patience: int = 20  # draws per wanted candidate before a generation gives up finding new ones

    def __post_init__(self):
        if self.population < 2 or self.generations < 0 or self.patience < 1:
            raise ValueError("population must be >= 2, generations >= 0, patience >= 1")
        if not 0 <= self.mutation <= 1 or not 0 <= self.crossover <= 1:
            raise ValueError("mutation and crossover are probabilities in [0, 1]")


@dataclass
class EvolutionResult:
    scored: list[Candidate]  # every feasible candidate, scored, in the order they were found
    rejected: int  # candidates whose costs broke a constraint (built and measured, not scored)
    history: list[dict]  # per generation: best and median score of the population


def evolve(space: SearchSpace, evaluate: Callable[[dict], Candidate], settings: EvolutionSettings,
           progress: Progress, rank: Callable[[Candidate], Any] | None = None) -> EvolutionResult:
    """`evaluate(genes)` returns the candidate with its costs and feasibility, scored if feasible.
    `rank` orders parents and survivors (higher is better; default the score): choice.preference
    puts the candidates that use the budget first, so the population moves towards the budget."""
    rank = rank or (lambda c: c.score)
    rng = random.Random(settings.seed)
    seen: dict[str, Candidate] = {}

    def visit(genes: dict) -> Candidate | None:
        key = spec_key(genes)
        if key in seen:
            return None
        seen[key] = candidate = evaluate(genes)
        return candidate if candidate.feasible else None

    def fill(want: int, draw: Callable[[], dict]) -> list[Candidate]:
        found: list[Candidate] = []
        for _ in range(want * settings.patience):
            if len(found) >= want:
                break
            candidate = visit(draw())
            if candidate is not None:
                found.append(candidate)
        return found

    population = fill(settings.population, lambda: space.sample(rng))
    history = [_summary(0, population)]
    for generation in range(1, settings.generations + 1):
        if not population:
            break
        parents = sorted(population, key=rank, reverse=True)[:max(2, settings.population // 2)]

        def child() -> dict:
            first = rng.choice(parents).spec["genes"]
            genes = space.crossover(first, rng.choice(parents).spec["genes"], rng) if rng.random() < settings.crossover else first
            return space.mutate(genes, rng, settings.mutation)

        children = fill(settings.population, child)
        population = sorted(population + children, key=rank, reverse=True)[:settings.population]
        history.append(_summary(generation, population))
        progress.log(f"  generation {generation}/{settings.generations}: {len(children)} new, best score "
                     f"{history[-1]['best']:.4g}, {sum(c.feasible for c in seen.values())} scored so far")
    scored = [c for c in seen.values() if c.feasible]
    return EvolutionResult(scored, len(seen) - len(scored), history)


def _summary(generation: int, population: list[Candidate]) -> dict:
    scores = sorted(c.score for c in population)
    return {"generation": generation, "size": len(scores), "best": scores[-1] if scores else None,
            "median": scores[len(scores) // 2] if scores else None}
