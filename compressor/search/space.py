"""A search space as data: named genes, each with its allowed values in ascending cost, and a
function that builds the network of a spec. Sampling, mutation and crossover are the same for every
space (derived from the teacher, or a built-in family), so they live here once.

A spec is {"space": name, "genes": {gene: value}}: JSON, so it is what the pass writes as the
chosen architecture and what `SearchSpace.build` rebuilds the student from.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn


@dataclass
class SearchSpace:
    name: str
    choices: dict[str, tuple]  # gene -> allowed values, cheapest first
    build: Callable[[dict[str, Any]], nn.Module]  # genes -> a network at random initialisation
    description: str = ""
    # (genes, samples) -> the network with the teacher's own weights where the space is cut from
    # the teacher (a head start for the distillation that follows), recalibrated on the samples;
    # None for the built-in families
    inherit: Callable[[dict[str, Any], tuple], nn.Module] | None = None
    static_batch: int | None = None  # the networks run only at this batch (a teacher exported so)

    def spec(self, genes: dict[str, Any]) -> dict[str, Any]:
        return {"space": self.name, "genes": dict(genes)}

    def largest(self) -> dict[str, Any]:
        return {g: values[-1] for g, values in self.choices.items()}

    def smallest(self) -> dict[str, Any]:
        return {g: values[0] for g, values in self.choices.items()}

    def size(self) -> int:
        total = 1
        for values in self.choices.values():
            total *= len(values)
        return total

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A random spec around a random overall scale, so small and large networks are drawn alike
        (independent genes would concentrate every draw near the middle of the cost range)."""
        scale = rng.random()
        genes = {}
        for gene, values in self.choices.items():
            centre = scale * (len(values) - 1)
            index = int(round(centre + rng.uniform(-1.0, 1.0)))
            genes[gene] = values[min(len(values) - 1, max(0, index))]
        return genes

    def mutate(self, genes: dict[str, Any], rng: random.Random, rate: float) -> dict[str, Any]:
        """Each gene moves to a neighbouring value with probability `rate` (at least one moves)."""
        out = dict(genes)
        movable = [g for g, v in self.choices.items() if len(v) > 1]
        chosen = [g for g in movable if rng.random() < rate] or ([rng.choice(movable)] if movable else [])
        for gene in chosen:
            values = self.choices[gene]
            index = values.index(out[gene]) + rng.choice((-1, 1))
            out[gene] = values[min(len(values) - 1, max(0, index))]
        return out

    def crossover(self, a: dict[str, Any], b: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """Uniform crossover: each gene from either parent."""
        return {g: (a if rng.random() < 0.5 else b)[g] for g in self.choices}


def spec_key(genes: dict[str, Any]) -> str:
    return json.dumps(genes, sort_keys=True)


def ratio_choices(size: int, ratios: tuple[float, ...], round_to: int) -> tuple[int, ...]:
    """The widths a group of `size` channels may take: `ratios` of it, rounded to multiples of
    `round_to` where the group is wide enough for two of them (hardware-friendly widths)."""
    def width(r: float) -> int:
        if size >= 2 * round_to:
            return max(round_to, int(round(r * size / round_to)) * round_to)
        return max(1, int(round(r * size)))

    return tuple(sorted({min(size, width(r)) for r in ratios}))
