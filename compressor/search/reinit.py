"""Random initialisation of any candidate (and of the teacher's copy): DisWOT compares networks at
initialisation, so every network is initialised the same way, seeded, whatever its origin (an aten
graph has no nn.Conv2d modules whose reset_parameters could be called)."""
from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def reinitialise(module: nn.Module, seed: int) -> nn.Module:
    """Weights of rank >= 2 (convs, linears): He normal over their fan-in; biases 0; other vectors
    (normalisation scales) 1; BatchNorm running statistics reset to mean 0, variance 1."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=gen) * math.sqrt(2.0 / fan_in))
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)
    for name, b in module.named_buffers():
        if name.endswith("running_mean"):
            b.zero_()
        elif name.endswith("running_var"):
            b.fill_(1.0)
    return module
