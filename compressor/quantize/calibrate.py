"""Post-training calibration: observe activations on the calibration set, set the ranges."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..model_io import first_output
from ..progress import Progress
from .fakequant import OBSERVE, QUANTIZE, fake_quants
from .observers import Observer, get_observer


def batched_outputs(module: nn.Module, inputs: tuple[torch.Tensor, ...], batch: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([first_output(module(*(x[s:s + batch] for x in inputs))).float()
                          for s in range(0, inputs[0].shape[0], batch)])


def calibrate(model: nn.Module, inputs: tuple[torch.Tensor, ...], observer: str, batch: int,
              progress: Progress) -> dict[str, tuple[float, float]]:
    """Set every activation fake-quant's range with `observer`; returns the ranges chosen."""
    choose = get_observer(observer)
    activations = [(n, m) for n, m in fake_quants(model) if m.axis is None]
    for _, m in activations:
        m.state, m.observer = OBSERVE, Observer()
    with torch.no_grad():
        for start in progress.bar(range(0, inputs[0].shape[0], batch), desc="calibrate"):
            model(*(x[start:start + batch] for x in inputs))
    ranges = {}
    for name, m in activations:
        lo, hi = choose(m.observer, m.quant)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            lo, hi = m.observer.min, m.observer.max
        m.set_range(lo, hi)
        m.state, m.observer = QUANTIZE, None
        ranges[name] = (float(lo), float(hi))
    return ranges
