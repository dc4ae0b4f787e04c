"""The distillation training loop: epochs over shuffled batches, Adam with a cosine schedule
(optionally after a linear warmup, `lr_warmup`),
the best state by validation fidelity kept (early stopping with patience; the rule is
compressor.distill.fidelity's `prefer`: lower divergence to the teacher, the task metric a guard
against more than sampling noise), progress, a history that says which epoch was kept and why,
and optional checkpoints (after each epoch, and every `checkpoint_every` steps where the config
sets it) that a later run resumes from at the step it stopped. The epochs themselves, data-parallel
under torch.distributed, are compressor.distill.epochs'.

The loss is the caller's: `loss(indices) -> scalar tensor` runs the student on those training
samples and compares it with whatever teacher targets the caller computed once. The loop knows
nothing of quantizers, masks or tasks; passes hook in with `param_groups` (their own learning
rates) and `after_step` (e.g. keep LSQ scales positive). The student's train/eval mode is the
caller's choice: fine-tuning a converged model with BatchNorm and dropout in eval mode is the default
of every pass here.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..progress import Progress
from .epochs import Plan, Steps, run_epochs
from .fidelity import Fidelity, prefer


def warmup_cosine(steps: int, warmup: float) -> Callable[[int], float]:
    """The learning-rate factor at each step: linear from 1/w to 1 over the first w = warmup *
    steps steps, then cosine from 1 to 0 over the rest (plain cosine where w is 0)."""
    ramp = int(warmup * steps)

    def factor(step: int) -> float:
        if step < ramp:
            return (step + 1) / ramp
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - ramp) / max(1, steps - ramp))))

    return factor


def _default_groups(student: nn.Module, lr: float) -> list[dict]:
    return [{"params": [p for p in student.parameters() if p.requires_grad], "lr": lr}]


def train(student: nn.Module, samples: int, loss: Callable[[torch.Tensor], torch.Tensor],
          score: Callable[[nn.Module], Fidelity], cfg, progress: Progress, *, label: str = "distill",
          param_groups: list[dict] | None = None, after_step: Callable[[], None] | None = None,
          checkpoint: Path | None = None) -> list[dict]:
    """Train `student` in place for `cfg.epochs` over `samples` training samples; it ends in the
    state with the best validation `score` (epoch 0, the untrained student, included). `cfg` has
    the DistillConfig fields. Returns one history row per epoch. Under torch.distributed the
    epochs run data-parallel (compressor.distill.epochs); rank 0 scores, every rank keeps the same."""
    groups = param_groups if param_groups is not None else _default_groups(student, cfg.lr)
    optimizer = torch.optim.Adam(groups)
    steps = cfg.epochs * max(1, (samples + cfg.batch - 1) // cfg.batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, getattr(cfg, "lr_warmup", 0.0) or 0.0))
    plan = Plan([student], samples, cfg.batch, cfg.seed, cfg.epochs, progress, label, checkpoint,
                getattr(cfg, "checkpoint_every", 0))
    state: dict = {}

    def begin() -> None:
        first = plan.world.on_main(lambda: score(student))
        state.update(best=first, best_state=copy.deepcopy(student.state_dict()), stale=0,
                     history=[{"epoch": 0, **first.as_dict(), "kept": True, "why": "the starting point"}])

    def end_epoch(epoch: int, means: dict[str, float]) -> bool:
        result = plan.world.on_main(lambda: score(student))
        better, why = prefer(result, state["best"])
        state["history"].append({"epoch": epoch, "loss": means["loss"], **result.as_dict(), "kept": better, "why": why})
        progress.log(f"  {label} epoch {epoch}: loss {means['loss']:.4f}, validation metric {result.metric:.4f}, "
                     f"divergence {result.divergence:.3g}: {'kept' if better else 'not kept'} ({why})")
        if better:
            state.update(best=result, best_state=copy.deepcopy(student.state_dict()), stale=0)
        else:
            state["stale"] += 1
        return False

    def snapshot() -> dict:
        return {**state, "best": state["best"].state(), "model": student.state_dict(),
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}

    def restore(saved: dict) -> None:
        student.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        state.update(best=Fidelity(**saved["best"]), best_state=saved["best_state"], stale=saved["stale"],
                     history=saved["history"])

    def after() -> None:
        schedule.step()
        if after_step is not None:
            after_step()

    run_epochs(plan, Steps(loss, [optimizer], after_step=after), end_epoch, snapshot, restore, begin,
               keep_going=lambda: state["stale"] < max(cfg.patience, 1))
    student.load_state_dict(state["best_state"])
    return state["history"]
