"""Post-training calibration: observe activations on the calibration set, set the ranges.

`observer = "auto"` observes once, then tries every observer's ranges and keeps the one whose
quantized model is closest to the teacher on the validation slice (compressor.distill's `best_of`:
the lowest divergence among those whose metric is within noise of the best): percentile clipping suits CNN activations,
while a Transformer's few large outlier channels need min-max or MSE ranges (measured on MiniLM:
cosine 0.975 with percentile, 0.992 with MSE).

Activations whose range is known, the output of a clamp with both bounds (ReLU6: [0, 6]), take
that range where the scheme is asymmetric: the lower bound exactly (0 is then the zero point, no
code below it wasted), and the upper bound where calibration saw the op saturate (the values piled
up at 6 are exact on the grid; an observer that clips below them moves every saturated value),
else the observer's upper end, which is below it (a ReLU6 that never reaches 6 keeps its finer
step). A symmetric scheme would waste half its codes on [-6, 0]: its observers decide alone.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import fx, nn

from ..distill import Fidelity, best_of
from ..progress import Progress
from .fakequant import OBSERVE, QUANTIZE, fake_quants
from .observers import OBSERVERS, Observer, get_observer

AUTO = "auto"


def calibrate(model: nn.Module, inputs: tuple[torch.Tensor, ...], observer: str, batch: int,
              progress: Progress, score: Callable[[nn.Module], Fidelity] | None = None
              ) -> tuple[str, dict[str, tuple[float, float]], dict[str, Fidelity]]:
    """Set every activation fake-quant's range with `observer` (or the best one, for "auto", by
    `score`, by `best_of`). Returns the observer used, the ranges and each candidate's score."""
    candidates = list(OBSERVERS) if observer == AUTO else [observer]
    for name in candidates:
        get_observer(name)
    if len(candidates) > 1 and score is None:
        raise ValueError("observer 'auto' needs a score function")
    activations = [(n, m) for n, m in fake_quants(model) if m.axis is None]
    known = known_ranges(model) if isinstance(model, fx.GraphModule) else {}
    for _, m in activations:
        m.state, m.observer = OBSERVE, Observer()
    with torch.no_grad():
        for start in progress.bar(range(0, inputs[0].shape[0], batch), desc="calibrate"):
            model(*(x[start:start + batch] for x in inputs))
    observed = {name: m.observer for name, m in activations}
    trials: dict[str, Fidelity] = {}
    chosen = candidates[0]
    if len(candidates) > 1:
        for name in candidates:
            _apply(activations, observed, get_observer(name), known)
            trials[name] = score(model)
        chosen = best_of(trials)
    ranges = _apply(activations, observed, get_observer(chosen), known)
    for _, m in activations:
        m.observer = None
    return chosen, ranges, trials


CLAMPS = {torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default, torch.ops.aten.clamp.default}


def known_ranges(gm: fx.GraphModule) -> dict[str, tuple[float, float]]:
    """Asymmetric activation fake-quants that read a clamp with two constant bounds: their range."""
    modules = dict(gm.named_modules())
    known = {}
    for node in gm.graph.nodes:
        fq = modules.get(node.target) if node.op == "call_module" else None
        source = node.args[0] if node.args else None
        if getattr(fq, "axis", 0) is not None or fq.quant.symmetric or not isinstance(source, fx.Node):
            continue
        bounds = source.args[1:3] if source.op == "call_function" and source.target in CLAMPS else ()
        if len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds) and bounds[0] < bounds[1]:
            known[node.target] = (float(bounds[0]), float(bounds[1]))
    return known


def _apply(activations, observed: dict[str, Observer], choose, known: dict[str, tuple[float, float]]
           ) -> dict[str, tuple[float, float]]:
    ranges = {}
    for name, m in activations:
        obs = observed[name]
        lo, hi = choose(obs, m.quant)
        if name in known:
            lo, hi = known[name][0], known[name][1] if obs.max >= known[name][1] else min(hi, known[name][1])
        if not (np.isfinite(lo) and np.isfinite(hi)):
            lo, hi = obs.min, obs.max
        m.set_range(lo, hi)
        m.state = QUANTIZE
        ranges[name] = (float(lo), float(hi))
    return ranges
