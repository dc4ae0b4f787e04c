"""Hard-concrete L0 gates (Louizos et al., "Learning Sparse Neural Networks through L0
Regularization"), as CoFi uses them: one learnable log_alpha per unit.

Training samples u ~ U(0, 1), s = sigmoid((log u - log(1 - u) + log_alpha) / beta), stretches s to
(l, r) = (-0.1, 1.1) and clamps to [0, 1], so a gate is exactly 0 or 1 with positive probability
and differentiable in between. The probability that a gate is non-zero, the expected L0 norm, is
sigmoid(log_alpha - beta * log(-l / r)): differentiable, so the expected model size is too.
"""
from __future__ import annotations

import math

import torch
from torch import nn

BETA = 2.0 / 3.0
LIMIT_LOW, LIMIT_HIGH = -0.1, 1.1
EPSILON = 1e-6


class HardConcreteGates(nn.Module):
    """`size` gates; `init_keep` is the initial probability that a gate is non-zero."""

    def __init__(self, size: int, init_keep: float = 0.9):
        super().__init__()
        # choose log_alpha so that P(gate != 0) == init_keep
        init = math.log(init_keep / (1 - init_keep)) + BETA * math.log(-LIMIT_LOW / LIMIT_HIGH)
        self.log_alpha = nn.Parameter(torch.full((size,), init))

    def keep_probability(self) -> torch.Tensor:
        """P(gate != 0) per unit; its sum is the expected number of kept units."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-LIMIT_LOW / LIMIT_HIGH))

    def sample(self) -> torch.Tensor:
        u = torch.rand_like(self.log_alpha).clamp(EPSILON, 1 - EPSILON)
        s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + self.log_alpha) / BETA)
        return (s * (LIMIT_HIGH - LIMIT_LOW) + LIMIT_LOW).clamp(0.0, 1.0)


def keep_top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """A boolean mask keeping the `count` highest-scoring units (ties broken by position)."""
    count = max(0, min(int(count), scores.numel()))
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    if count:
        keep[torch.topk(scores.detach().flatten(), count).indices] = True
    return keep
