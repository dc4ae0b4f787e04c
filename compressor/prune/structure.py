"""What structured pruning needs to know about a model, whatever its kind (CNN, Transformer).

A model's prunable structure is a list of UnitGroups. A group is a set of units that are kept or
removed together across every tensor they touch: the output channels of a coupled group of convs
(a residual stream's convs, BatchNorm and depthwise convs on them, concat parts), the heads of one
attention layer, the FFN dimensions of one layer, a whole residual block, a whole MHA or FFN layer,
the hidden dimension shared by every layer.

A Structure (one implementation per model family: prune/cnn for any torch.export-able CNN,
prune/transformer for Hugging Face BERT-family encoders) does three things:

    structure.groups                          # the UnitGroups, in a stable order
    with structure.gated(gates):              # forward passes multiply each unit by its gate
        out = model(x)                        #   (gates[name]: tensor of shape (group.size,), differentiable)
    cost = structure.expected_cost(counts)    # {"params": t, "macs": t}, differentiable in counts[name]:
                                              #   the expected number of kept units of each group
    small = structure.shrink(keep)            # keep[name]: bool tensor (group.size,) -> an ordinary,
                                              #   physically smaller module; the same outputs as the
                                              #   gated model with gates = keep (exactly, up to float order)

The CoFi trainer (prune/cofi.py) owns the gates (hard-concrete L0 distributions), the Lagrangian
that drives the expected cost to the budget, and the distillation; it never looks inside a model.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

# kinds of UnitGroup, coarse to fine
KINDS = ("block", "mha_layer", "ffn_layer", "heads", "ffn_dims", "hidden", "channels")


@dataclass(frozen=True)
class UnitGroup:
    name: str  # unique and stable, e.g. "layers.0.conv1:out" or "encoder.layer.3.attention:heads"
    kind: str  # one of KINDS
    size: int  # number of units
    min_keep: int = 1  # fewest units a shrunk model may keep (0: the whole group may go)
    layer: str = ""  # the layer or block the group belongs to, for the report's per-layer table
    # groups whose units all vanish when this (coarse) group's single unit is removed, e.g. a
    # residual block's inner channel groups
    contains: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown unit kind '{self.kind}'; known: {', '.join(KINDS)}")
        if self.size < 1 or not 0 <= self.min_keep <= self.size:
            raise ValueError(f"group {self.name}: size {self.size}, min_keep {self.min_keep}")


class Structure(Protocol):
    model: nn.Module
    groups: list[UnitGroup]

    def gated(self, gates: dict[str, torch.Tensor]) -> contextlib.AbstractContextManager: ...

    def expected_cost(self, counts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def shrink(self, keep: dict[str, torch.Tensor]) -> nn.Module: ...


def full_counts(structure: Structure) -> dict[str, torch.Tensor]:
    """Every unit kept: the counts at which expected_cost gives the unpruned model's cost."""
    return {g.name: torch.tensor(float(g.size)) for g in structure.groups}


def full_cost(structure: Structure) -> dict[str, torch.Tensor]:
    """The unpruned model's costs: what every budget and kept fraction is relative to."""
    return {k: v.detach() for k, v in structure.expected_cost(full_counts(structure)).items()}
