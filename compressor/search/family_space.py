"""The search space of a built-in student family (families.py, by name), for a teacher whose input
is an image (N, C, H, W) and whose output is (N, K)."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import CompressError
from .builders import FamilyNet
from .families import FAMILIES
from .reinit import reinitialise
from .space import SearchSpace


def family_space(name: str, example: tuple[torch.Tensor, ...], outputs: int, seed: int) -> SearchSpace:
    if name not in FAMILIES:
        raise CompressError(f"unknown search space '{name}'; known: derived, {', '.join(FAMILIES)}")
    x = example[0]
    if len(example) != 1 or x.dim() != 4 or not x.is_floating_point():
        raise CompressError(f"search space '{name}' builds image classifiers: the model must take one "
                            f"(N, C, H, W) float input, got {[tuple(t.shape) for t in example]}")
    family = FAMILIES[name]
    choices: dict[str, tuple] = {"stem": tuple(family["stem"])}
    for i, stage in enumerate(family["stages"]):
        choices[f"stage{i}.width"] = tuple(stage["widths"])
        choices[f"stage{i}.depth"] = tuple(stage["depths"])
        if "expansions" in stage:
            choices[f"stage{i}.expansion"] = tuple(stage["expansions"])
    stem_stride = 2 if min(x.shape[2:]) >= 64 else 1  # small images (MNIST, CIFAR) keep their resolution

    def build(genes: dict[str, Any]) -> FamilyNet:
        stages = [{"width": genes[f"stage{i}.width"], "depth": genes[f"stage{i}.depth"], "stride": s["stride"],
                   "expansion": genes.get(f"stage{i}.expansion", 1)} for i, s in enumerate(family["stages"])]
        net = FamilyNet(family["block"], int(x.shape[1]), outputs, genes["stem"], stages, stem_stride)
        return reinitialise(net, seed).eval()

    return SearchSpace(name, choices, build, f"built-in family '{name}' ({len(family['stages'])} stages)")
