"""Adaptive BatchNorm for a student cut from the teacher, where BatchNorm is already folded into the
convs: each weighted layer's output channels rescaled and shifted, in the order the graph runs, so
that on real samples they have the mean and spread the same channels have in the teacher.

Why: a channel's BatchNorm was fitted to the statistics of its inputs in the teacher. Narrowing the
layers before it and removing residual blocks changes those statistics, and the folded scale and
shift no longer normalise them: students inherited from the MNIST sample teacher had about 10%
top-1 (chance) before training. Re-estimating BatchNorm's statistics on the new network
(adaptive BN) restores each channel to mean beta and spread gamma, which is what the same channel
has in the teacher; with BN folded the teacher's measured statistics stand in for beta and gamma.

It runs on the teacher's own graph with the student's channels and blocks gated off
(CnnStructure.gated: the gated graph computes what the shrunk student computes), so every channel
keeps the teacher's indexing and the corrected weights are shrunk like any others.
"""
from __future__ import annotations

import contextlib

import torch
from torch import fx

from .features import weighted_kind
from .reinit import weight_and_bias


def _channel_stats(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel (axis 1): mean and standard deviation over the samples and positions."""
    std, mean = torch.std_mean(out.detach(), dim=[0, *range(2, out.dim())])
    return mean, std


class _Statistics(fx.Interpreter):
    """Per-channel mean and spread of every weighted layer's output in one run."""

    def __init__(self, gm: fx.GraphModule, layers: set[fx.Node]):
        super().__init__(gm)
        self.layers, self.stats = layers, {}

    def run_node(self, n):
        out = super().run_node(n)
        if n in self.layers:
            self.stats[n] = _channel_stats(out)
        return out


class _Matching(fx.Interpreter):
    """Runs the graph, and at each weighted layer rescales and shifts its output channels (and the
    layer's weight and bias with them) to the target statistics before later layers see them."""

    def __init__(self, gm: fx.GraphModule, targets: dict, params: dict):
        super().__init__(gm)
        self.targets, self.params = targets, params

    def run_node(self, n):
        out = super().run_node(n)
        if n not in self.targets:
            return out
        mean, std = _channel_stats(out)
        target_mean, target_std = self.targets[n]
        ratio = torch.where(std > 1e-6, target_std / std.clamp_min(1e-6), torch.ones_like(std))
        shift = target_mean - mean * ratio
        weight, bias = self.params[n]
        weight.mul_(ratio.reshape((-1,) + (1,) * (weight.dim() - 1)))
        bias.mul_(ratio).add_(shift)
        shape = (1, -1) + (1,) * (out.dim() - 2)
        return out * ratio.reshape(shape) + shift.reshape(shape)


@contextlib.contextmanager
def matched_to_teacher(structure, gates: dict[str, torch.Tensor], inputs: tuple[torch.Tensor, ...],
                       include_last: bool = True):
    """Inside: the teacher's graph (structure.model) with its weights corrected for the student the
    `gates` keep (1 kept, 0 removed, per channel group and block); shrink it there. The teacher's
    own weights come back on exit. Layers without a bias (nothing to shift) are left as they are."""
    gm = structure.model
    layers = [n for n in gm.graph.nodes if weighted_kind(gm, n)]
    params = {n: wb for n in layers if (wb := weight_and_bias(gm, n)) is not None and wb[1] is not None}
    if not include_last and layers and layers[-1] in params:
        del params[layers[-1]]
    saved = {n: (w.detach().clone(), b.detach().clone()) for n, (w, b) in params.items()}
    try:
        with torch.no_grad():
            teacher = _Statistics(gm, set(params))
            teacher.run(*inputs)
            with structure.gated(gates):
                _Matching(gm, teacher.stats, params).run(*inputs)
        yield gm
    finally:
        with torch.no_grad():
            for n, (w, b) in params.items():
                w.copy_(saved[n][0])
                b.copy_(saved[n][1])
