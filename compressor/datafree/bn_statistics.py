"""BatchNorm-statistics inputs (ZeroQ): optimise random inputs until the batch statistics they
produce at every inference BatchNorm match the layer's stored running mean and variance.

The model is brought to its aten graph (`compressor.capture.to_graph_module`: any torch.export-able
model, a `.pt2` already is one), where BatchNorm is an `aten.batch_norm` /
`_native_batch_norm_legit_no_training` call whose arguments 3 and 4 are the running mean and
variance. An `fx.Interpreter` runs the graph and records each such call's input, so the loss is
differentiable with respect to the input without touching the user's Python code.

Loss per batch = mean over BatchNorm layers of the RMS differences (over channels) between batch
and running mean and between batch and running variance
+ `tv_weight` x total variation of image inputs (neighbouring pixels alike) + `l2_weight` x mean
square of the inputs (the small input prior) + `class_weight` x cross-entropy of the classifier's
output to a target class per sample, the classes dealt out in turn (so every class is present).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..capture import op_kind, to_graph_module
from ..errors import CompressError

MEAN_ARG, VAR_ARG = 3, 4  # both aten batch-norm forms: (input, weight, bias, running_mean, running_var, ...)


@dataclass
class BatchNormModel:
    graph: fx.GraphModule
    norms: list[fx.Node]
    static_batch: int | None  # a model exported for one batch size runs in chunks of it


def batchnorm_model(module: nn.Module, spec) -> BatchNormModel | None:
    """The model's frozen aten graph and its inference BatchNorm calls; None without any (or when
    the model cannot be captured as a graph)."""
    if not all(t.dtype.startswith("float") for t in spec.inputs):
        return None
    try:
        graph, static = to_graph_module(module, spec)
    except CompressError:
        return None
    norms = [n for n in graph.graph.nodes if op_kind(n) == "batchnorm" and len(n.args) > VAR_ARG
             and all(isinstance(a, fx.Node) for a in n.args[MEAN_ARG:VAR_ARG + 1])]
    if not norms:
        return None
    for p in graph.parameters():
        p.requires_grad_(False)
    return BatchNormModel(graph.eval(), norms, static)


class _NormInputs(fx.Interpreter):
    """Runs the graph and keeps, for every BatchNorm node, (its input, running mean, running var)."""

    def __init__(self, model: BatchNormModel):
        super().__init__(model.graph)
        self.watched = set(model.norms)
        self.seen: dict[fx.Node, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def run_node(self, n: fx.Node):
        if n in self.watched:
            args, _ = self.fetch_args_kwargs_from_env(n)
            self.seen[n] = (args[0], args[MEAN_ARG], args[VAR_ARG])
        return super().run_node(n)


def _forward(model: BatchNormModel, inputs: tuple[torch.Tensor, ...]):
    """The model's output and, per BatchNorm, (input over the whole batch, running mean, running var)."""
    step = model.static_batch or inputs[0].shape[0]
    outs, seen = [], {}
    for start in range(0, inputs[0].shape[0], step):
        meter = _NormInputs(model)
        out = meter.run(*(x[start:start + step] for x in inputs))
        outs.append(out[0] if isinstance(out, (tuple, list)) else out)
        for node, (x, mean, var) in meter.seen.items():
            seen.setdefault(node, ([], mean, var))[0].append(x)
    return torch.cat(outs), [(torch.cat(xs), mean, var) for xs, mean, var in seen.values()]


def _statistics_loss(norm_inputs) -> torch.Tensor:
    losses = []
    for x, mean, var in norm_inputs:
        dims = [0, *range(2, x.dim())]  # every axis but the channels (axis 1)
        batch_mean, batch_var = x.mean(dims), x.var(dims, unbiased=False)
        losses.append((batch_mean - mean).pow(2).mean().sqrt() + (batch_var - var).pow(2).mean().sqrt())
    return torch.stack(losses).mean()


def bn_mismatch(model: BatchNormModel, inputs: tuple[torch.Tensor, ...]) -> float:
    """How far `inputs`' statistics are from the running ones (the statistics part of the loss)."""
    with torch.no_grad():
        return float(_statistics_loss(_forward(model, inputs)[1]))


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 4:
        return x.new_zeros(())
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def optimise_batch(model: BatchNormModel, shapes: list[tuple[int, ...]], task: str, cfg, seed: int,
                   on_step: Callable[[], None] = lambda: None) -> tuple[tuple[torch.Tensor, ...], float]:
    """One batch of synthetic inputs from N(0, 1), optimised `cfg.iterations` Adam steps (cosine
    learning rate); returns the inputs and their final statistics loss."""
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(s, generator=gen).requires_grad_(True) for s in shapes]
    targets = None
    optimiser = torch.optim.Adam(inputs, lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, cfg.iterations))
    for _ in range(cfg.iterations):
        out, norm_inputs = _forward(model, tuple(inputs))
        loss = _statistics_loss(norm_inputs)
        for x in inputs:
            loss = loss + cfg.tv_weight * _total_variation(x) + cfg.l2_weight * x.pow(2).mean()
        if task == "classification" and out.dim() == 2 and out.shape[1] > 1 and cfg.class_weight > 0:
            if targets is None:  # classes dealt in turn from a seeded start: each batch covers them all
                start = int(torch.randint(out.shape[1], (1,), generator=gen))
                targets = (torch.arange(out.shape[0]) + start) % out.shape[1]
            loss = loss + cfg.class_weight * F.cross_entropy(out, targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        on_step()
    result = tuple(x.detach() for x in inputs)
    return result, bn_mismatch(model, result)


class BatchNormSynthesizer:
    name = "bn-statistics"
    description = ("inputs optimised until every BatchNorm layer's batch mean and variance match its running "
                   "statistics (ZeroQ), with class-conditional targets from the classifier head")

    def __init__(self, model: BatchNormModel, spec, cfg):
        self.model, self.spec, self.cfg = model, spec, cfg
        self.steps_per_batch = cfg.iterations

    @classmethod
    def prepare(cls, module: nn.Module, spec, model_path, cfg) -> BatchNormSynthesizer | None:
        model = batchnorm_model(module, spec)
        return cls(model, spec, cfg) if model is not None else None

    def batch(self, count: int, seed: int, on_step: Callable[[], None]) -> tuple[tuple[torch.Tensor, ...], dict]:
        shapes = [t.concrete_shape(count) for t in self.spec.inputs]
        start = tuple(torch.randn(s, generator=torch.Generator().manual_seed(seed)) for s in shapes)
        inputs, mismatch = optimise_batch(self.model, shapes, self.spec.task, self.cfg, seed, on_step)
        return inputs, {"bn_mismatch": mismatch, "bn_mismatch_at_start": bn_mismatch(self.model, start)}
