"""The distillation training loop: epochs over shuffled batches, Adam with a cosine schedule,
the best state by validation fidelity kept (early stopping with patience; the rule is
compressor.distill.fidelity's `prefer`: lower divergence to the teacher, the task metric a guard
against more than sampling noise), progress, a history that says which epoch was kept and why,
and an optional checkpoint after each epoch that a later run resumes from.

The loss is the caller's: `loss(indices) -> scalar tensor` runs the student on those training
samples and compares it with whatever teacher targets the caller computed once. The loop knows
nothing of quantizers, masks or tasks; passes hook in with `param_groups` (their own learning
rates) and `after_step` (e.g. keep LSQ scales positive). The student's train/eval mode is the
caller's choice: fine-tuning a converged model with BatchNorm and dropout in eval mode is the default
of every pass here.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..checkpoint import load_checkpoint, save_checkpoint
from ..progress import Progress
from .fidelity import Fidelity, prefer


def _default_groups(student: nn.Module, lr: float) -> list[dict]:
    return [{"params": [p for p in student.parameters() if p.requires_grad], "lr": lr}]


def train(student: nn.Module, samples: int, loss: Callable[[torch.Tensor], torch.Tensor],
          score: Callable[[nn.Module], Fidelity], cfg, progress: Progress, *, label: str = "distill",
          param_groups: list[dict] | None = None, after_step: Callable[[], None] | None = None,
          checkpoint: Path | None = None) -> list[dict]:
    """Train `student` in place for `cfg.epochs` over `samples` training samples; it ends in the
    state with the best validation `score` (epoch 0, the untrained student, included). `cfg` has
    the DistillConfig fields. Returns one history row per epoch."""
    groups = param_groups if param_groups is not None else _default_groups(student, cfg.lr)
    optimizer = torch.optim.Adam(groups)
    steps = cfg.epochs * max(1, (samples + cfg.batch - 1) // cfg.batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    gen = torch.Generator().manual_seed(cfg.seed)

    state = _resume(checkpoint, student, optimizer, schedule, gen)
    if state is None:
        first = score(student)
        state = {"epoch": 0, "best": first, "best_state": copy.deepcopy(student.state_dict()), "stale": 0,
                 "history": [{"epoch": 0, **first.as_dict(), "kept": True, "why": "the starting point"}]}
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        if state["stale"] >= max(cfg.patience, 1):
            break
        order = torch.randperm(samples, generator=gen)
        total = 0.0
        for start in progress.bar(range(0, samples, cfg.batch), desc=f"{label} epoch {epoch}/{cfg.epochs}"):
            idx = order[start:start + cfg.batch]
            value = loss(idx)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            schedule.step()
            if after_step is not None:
                after_step()
            total += float(value.detach()) * len(idx)
        result = score(student)
        better, why = prefer(result, state["best"])
        state["history"].append({"epoch": epoch, "loss": total / samples, **result.as_dict(), "kept": better, "why": why})
        progress.log(f"  {label} epoch {epoch}: loss {total / samples:.4f}, validation metric {result.metric:.4f}, "
                     f"divergence {result.divergence:.3g}: {'kept' if better else 'not kept'} ({why})")
        if better:
            state.update(best=result, best_state=copy.deepcopy(student.state_dict()), stale=0)
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        _save(checkpoint, state, student, optimizer, schedule, gen)
    student.load_state_dict(state["best_state"])
    return state["history"]


def _save(path: Path | None, state: dict, student, optimizer, schedule, gen) -> None:
    if path is not None:
        save_checkpoint(path, {**state, "best": state["best"].state(), "model": student.state_dict(),
                               "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                               "generator": gen.get_state()})


def _resume(path: Path | None, student, optimizer, schedule, gen) -> dict | None:
    """The loop's state from a checkpoint an interrupted run left, or None to start fresh."""
    saved = load_checkpoint(path)
    if saved is None:
        return None
    student.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    gen.set_state(saved["generator"])
    return {"epoch": saved["epoch"], "best": Fidelity(**saved["best"]), "best_state": saved["best_state"],
            "stale": saved["stale"], "history": saved["history"]}
