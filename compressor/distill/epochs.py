"""The epochs of every training loop here (the distillation loop, CoFi's gate learning): the
training samples shuffled and dealt to the ranks by torch's DistributedSampler, each global batch's
loss run under DistributedDataParallel, checkpoints during and after each epoch, and a resume from
the last checkpoint that continues at the step where the run stopped.

Equivalence with one process: global batch k is the same set of samples for any number of ranks
(the sampler's permutation depends only on seed and epoch; rank r holds the permutation's positions
r, r + W, ...; its share of batch k are its positions inside [kB, (k+1)B)). A rank's loss is a mean
over its share, so it is weighted by share * W / batch: DDP's average of the ranks' gradients is
then the gradient of the mean over the global batch, as one process computes it. The sampler's
padding (repeated samples, so every rank has as many) never enters a batch; a rank whose share of
the last batch is empty runs one sample at weight 0, so every rank takes part in every step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from ..checkpoint import load_checkpoint, save_checkpoint
from ..distributed import DataParallel, World, current
from ..progress import Progress


def rank_batches(samples: int, batch: int, seed: int, epoch: int, world: World) -> list[tuple[torch.Tensor, float]]:
    """This rank's (indices, loss weight) for each global batch of `epoch`."""
    sampler = DistributedSampler(range(samples), num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    mine = torch.tensor(list(sampler), dtype=torch.long)
    batches = []
    for low in range(0, samples, batch):
        high = min(low + batch, samples)
        # positions rank + size * j that fall in [low, high): j from ceil((low - rank) / size)
        first, end = -((world.rank - low) // world.size), -((world.rank - high) // world.size)
        idx = mine[first:end]
        batches.append((idx, len(idx) * world.size / (high - low)) if len(idx) else (mine[:1], 0.0))
    return batches


@dataclass
class Steps:
    """What one training step does. `loss(indices)` returns the loss of those samples (a mean over
    them) and optionally a dict of scalar tensors to report; it runs inside DDP's forward, so every
    term with parameters must be computed in it. The optimizers step after `after_backward`."""

    loss: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]]
    optimizers: list[torch.optim.Optimizer]
    after_backward: Callable[[], None] | None = None
    after_step: Callable[[], None] | None = None  # learning-rate schedules, clamps


@dataclass
class Plan:
    """Where and how long: the trained modules (their parameters are what DDP averages), the
    samples, the global batch, the seed of the shuffles, progress and checkpoints."""

    modules: list[nn.Module]
    samples: int
    batch: int
    seed: int
    epochs: int
    progress: Progress
    label: str
    checkpoint: Path | None = None
    checkpoint_every: int = 0  # steps between checkpoints inside an epoch; 0: after each epoch only
    world: World = field(default_factory=current)


def run_epochs(plan: Plan, steps: Steps, end_epoch: Callable[[int, dict[str, float]], bool],
               snapshot: Callable[[], dict], restore: Callable[[dict], None], begin: Callable[[], None] = lambda: None,
               keep_going: Callable[[], bool] = lambda: True) -> None:
    """Train for the plan's epochs. After each epoch `end_epoch(epoch, means)` gets the epoch's mean
    of each reported value over all samples and ranks and returns True to stop early; `keep_going()`
    is asked before each epoch. `snapshot()` / `restore(state)` carry the caller's state (models,
    optimizers, history) in and out of checkpoints; only rank 0 writes them, every rank resumes from
    rank 0's. `begin()` runs where there is no checkpoint to resume from."""
    world = plan.world
    saved = world.broadcast(load_checkpoint(plan.checkpoint) if world.is_main else None)
    epoch, done, sums = 1, 0, {}
    if saved is None:
        begin()
    else:
        restore(saved["owner"])
        # the partial sums saved are all ranks' together: rank 0 carries them on
        epoch, done, sums = saved["epoch"], saved["step"], saved["sums"] if world.is_main else {}
        torch.set_rng_state(saved["torch_rng"])
        plan.progress.log(f"  resuming {plan.label} at epoch {epoch}, step {done}, from {plan.checkpoint.name}")
    parallel = DataParallel(plan.modules, world)

    def save(next_epoch: int, next_step: int, partial: dict[str, float]) -> None:
        if plan.checkpoint is None:
            return
        names = sorted(partial)
        total = dict(zip(names, world.sum([partial[n] for n in names])))  # a collective: every rank calls it
        if world.is_main:
            save_checkpoint(plan.checkpoint, {"owner": snapshot(), "epoch": next_epoch, "step": next_step,
                                              "sums": total, "torch_rng": torch.get_rng_state()})

    while epoch <= plan.epochs and keep_going():
        batches = rank_batches(plan.samples, plan.batch, plan.seed, epoch, world)
        bar = plan.progress.bar(range(done, len(batches)), desc=f"{plan.label} epoch {epoch}/{plan.epochs}")
        for step in bar:
            idx, weight = batches[step]
            out = parallel(steps.loss, idx)
            value, extra = out if isinstance(out, tuple) else (out, {})
            for optimizer in steps.optimizers:
                optimizer.zero_grad(set_to_none=True)
            (value * weight).backward()
            if steps.after_backward is not None:
                steps.after_backward()
            for optimizer in steps.optimizers:
                optimizer.step()
            if steps.after_step is not None:
                steps.after_step()
            share = len(idx) if weight else 0  # the samples this rank's mean stands for
            for name, v in {"loss": value, **extra}.items():
                sums[name] = sums.get(name, 0.0) + float(v.detach()) * share
            if plan.checkpoint_every and (step + 1) % plan.checkpoint_every == 0 and step + 1 < len(batches):
                save(epoch, step + 1, sums)
        names = sorted(sums)
        means = dict(zip(names, (v / plan.samples for v in world.sum([sums[n] for n in names]))))
        stop = end_epoch(epoch, means)
        epoch, done, sums = epoch + 1, 0, {}
        save(epoch, 0, {})
        if stop:
            break
