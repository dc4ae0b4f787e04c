"""CoFi pruning (Xia et al., "Structured Pruning Learns Compact and Accurate Models"): learn which
units to keep with hard-concrete L0 gates at every granularity of a Structure, while distilling
the gated model towards the unpruned teacher, and drive the expected cost to the budget with a
Lagrangian:

    loss = distillation + lambda1 * (c - t) + lambda2 * (c - t)^2

where c is the expected kept fraction of the budgeted cost (params or MACs; differentiable in the
gates' keep probabilities through Structure.expected_cost) and t the target, lowered linearly from
1 to the budget over the first `warmup` fraction of the steps. The model and the gates minimise
the loss; the multipliers maximise it (gradient ascent), so they grow while the constraint is
violated. Then `choose_units` turns the learnt probabilities into keep masks that meet the budget
exactly, with channel and FFN widths rounded to hardware-friendly multiples.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..distill.epochs import Plan, Steps, run_epochs
from ..errors import CompressError
from ..progress import Progress
from .hardconcrete import HardConcreteGates, keep_top
from .structure import Structure, UnitGroup, full_cost

# widths that onnxruntime's and TensorRT's kernels block by: a pruned width that is not a multiple
# loses much of the speed its MACs promise (FIELD-NOTES: 18/35/70 channels ran 1.9x where 16/32/64
# ran 3.7x)
ROUNDED_KINDS = ("channels", "ffn_dims", "hidden")
# Gates start almost surely open: sampled hard-concrete gates at CoFi's init (P(open) ~ 0.83) scale
# every channel at random, and the MNIST ResNet's distillation loss started at 11 (KL x T^2) and
# was still 9 after 4 epochs; starting near 1 the model is intact and the Lagrangian closes gates.
INIT_KEEP = 0.998


@dataclass
class CofiSettings:
    epochs: int
    batch: int
    lr: float  # the model's weights
    gate_lr: float  # the gates' log_alpha
    lambda_lr: float  # the Lagrange multipliers (ascent)
    warmup: float  # fraction of the steps over which the target falls from 1 to the budget
    round_to: int
    seed: int


class Gates(nn.Module):
    """One HardConcreteGates per unit group."""

    def __init__(self, groups: list[UnitGroup]):
        super().__init__()
        self.names = [g.name for g in groups]
        self.per_group = nn.ModuleList(HardConcreteGates(g.size, INIT_KEEP) for g in groups)

    def sample(self) -> dict[str, torch.Tensor]:
        return {n: g.sample() for n, g in zip(self.names, self.per_group)}

    def expected_counts(self) -> dict[str, torch.Tensor]:
        return {n: g.keep_probability().sum() for n, g in zip(self.names, self.per_group)}

    def probabilities(self) -> dict[str, torch.Tensor]:
        return {n: g.keep_probability().detach() for n, g in zip(self.names, self.per_group)}


def cost_fraction(structure: Structure, counts: dict[str, torch.Tensor], cost: str,
                  full: dict[str, torch.Tensor]) -> torch.Tensor:
    return structure.expected_cost(counts)[cost] / full[cost]


def minimum_counts(structure: Structure) -> dict[str, torch.Tensor]:
    return {g.name: torch.tensor(float(g.min_keep)) for g in structure.groups}


def check_reachable(structure: Structure, cost: str, keep_fraction: float) -> None:
    """Before any training: refuse a budget that even the smallest model the structure allows misses."""
    smallest = float(cost_fraction(structure, minimum_counts(structure), cost, full_cost(structure)))
    if smallest > keep_fraction:
        raise CompressError(f"the budget keeps {keep_fraction:.1%} of the {cost}, but with every prunable group at its "
                            f"minimum the model keeps {smallest:.1%}: the rest is not prunable (input, output and "
                            f"unsupported layers); give a larger budget")


def learn_gates(structure: Structure, loss_fn: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor],
                samples: int, cost: str, keep_fraction: float, cfg: CofiSettings, progress: Progress,
                checkpoint: Path | None = None, checkpoint_every: int = 0) -> tuple[Gates, list[dict]]:
    """Train the model's weights and the gates together. `loss_fn(indices, gates)` runs the gated
    model on those training samples and returns the distillation loss. Returns the gates and one
    history row per epoch; resumes from `checkpoint` when an interrupted run left one. The epochs
    are compressor.distill's (data-parallel under torch.distributed: every rank draws the same gates)."""
    torch.manual_seed(cfg.seed)
    full = full_cost(structure)
    gates = Gates(structure.groups)
    multipliers = nn.Parameter(torch.zeros(2))
    weights = [p for p in structure.model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([{"params": weights, "lr": cfg.lr}, {"params": gates.parameters(), "lr": cfg.gate_lr}])
    ascent = torch.optim.Adam([multipliers], lr=cfg.lambda_lr)
    steps_per_epoch = max(1, (samples + cfg.batch - 1) // cfg.batch)
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    state = {"step": 0, "target": 1.0, "history": []}

    def loss(idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        state["target"] = 1 - (1 - keep_fraction) * min(1.0, state["step"] / max(1.0, cfg.warmup * total_steps))
        distill = loss_fn(idx, gates.sample())
        gap = cost_fraction(structure, gates.expected_counts(), cost, full) - state["target"]
        lagrangian = multipliers[0] * gap + multipliers[1] * gap ** 2
        return distill + lagrangian, {"distill": distill, "lagrangian": lagrangian}

    def after_step() -> None:
        state["step"] += 1

    def end_epoch(epoch: int, means: dict[str, float]) -> bool:
        with torch.no_grad():
            expected = float(cost_fraction(structure, gates.expected_counts(), cost, full))
        row = {"epoch": epoch, "distill_loss": means["distill"], "lagrangian": means["lagrangian"],
               "expected_kept": expected, "cost": cost, "target": state["target"],
               "lambda1": float(multipliers[0].detach()), "lambda2": float(multipliers[1].detach())}
        state["history"].append(row)
        progress.log(f"  prune epoch {epoch}: distillation loss {row['distill_loss']:.4f}, expected {cost} kept "
                     f"{expected:.1%} (target {row['target']:.1%})")
        return False

    def snapshot() -> dict:
        return {"model": structure.model.state_dict(), "gates": gates.state_dict(), "multipliers": multipliers.detach(),
                "optimizer": optimizer.state_dict(), "ascent": ascent.state_dict(), **state}

    def restore(saved: dict) -> None:
        structure.model.load_state_dict(saved["model"])
        gates.load_state_dict(saved["gates"])
        with torch.no_grad():
            multipliers.copy_(saved["multipliers"])
        optimizer.load_state_dict(saved["optimizer"])
        ascent.load_state_dict(saved["ascent"])
        state.update(step=saved["step"], target=saved["target"], history=saved["history"])

    def ascend() -> None:
        multipliers.grad.neg_()  # the multipliers ascend

    plan = Plan([structure.model, gates, nn.ParameterList([multipliers])], samples, cfg.batch, cfg.seed, cfg.epochs,
                progress, "prune", checkpoint, checkpoint_every)
    run_epochs(plan, Steps(loss, [optimizer, ascent], after_backward=ascend, after_step=after_step), end_epoch,
               snapshot, restore)
    return gates, state["history"]


def _rounded(count: float, group: UnitGroup, round_to: int) -> int:
    n = int(round(count))
    if group.kind in ROUNDED_KINDS and group.size >= 2 * round_to and n < group.size:
        n = max(round_to, int(round(n / round_to)) * round_to)
    return max(group.min_keep, min(group.size, n))


def _step(group: UnitGroup, kept: int, round_to: int) -> int:
    """How many units one reduction of this group removes."""
    if group.kind in ROUNDED_KINDS and group.size >= 2 * round_to:
        return min(round_to, kept - max(group.min_keep, round_to)) if kept > max(group.min_keep, round_to) else 0
    return 1 if kept > group.min_keep else 0


def choose_units(structure: Structure, probabilities: dict[str, torch.Tensor], cost: str, keep_fraction: float,
                 round_to: int = 8, importance: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], float]:
    """Keep masks from the learnt keep probabilities: each group keeps its expected count of units
    (rounded; a block or layer stays where its probability is above one half), the most probable
    first; then, while the exact cost is over the budget, the least probable removable step goes.
    With `importance` (per unit, e.g. TransformerStructure.importance), for gates that a short gate
    phase left almost where they started, whose probabilities order nothing: units are ranked by
    their importance instead, and the step that goes is taken from the fine-grained group that
    keeps the largest share of its units (widths shrink evenly; a whole layer or block goes only
    with its last unit). Importance does not compare across kinds of units: ranked by importance
    per parameter saved, MiniLM lost every attention head. Returns the masks and the kept
    fraction of the cost."""
    full = full_cost(structure)
    counts = {g.name: _rounded(float(probabilities[g.name].sum()), g, round_to) for g in structure.groups}

    def fraction(counts: dict[str, int]) -> float:
        return float(structure.expected_cost({k: torch.tensor(float(v)) for k, v in counts.items()})[cost] / full[cost])

    groups = {g.name: g for g in structure.groups}
    scores = importance if importance is not None else probabilities
    order = {n: torch.argsort(p, descending=True) for n, p in scores.items()}
    now = fraction(counts)
    while now > keep_fraction + 1e-9:
        candidates = []
        for name, g in groups.items():
            n = _step(g, counts[name], round_to)
            if n:
                dropped = order[name][counts[name] - n:counts[name]]
                if importance is None:
                    candidates.append((float(probabilities[name][dropped].mean()), name, n))
                elif g.size > 1:
                    candidates.append((-counts[name] / g.size, name, n))
        if not candidates:
            raise CompressError(f"the pruned model cannot meet the budget ({keep_fraction:.1%} of {cost}): "
                                f"every group is at its minimum")
        _, name, n = min(candidates)
        counts[name] -= n
        now = fraction(counts)
    keep = {name: keep_top(scores[name], counts[name]) for name in groups}
    return keep, now
