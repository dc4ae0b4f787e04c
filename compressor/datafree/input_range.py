"""The last fallback: inputs drawn over the input spec's range, for models with neither BatchNorm
statistics nor a tokenizer to learn a distribution from. The spec records no value range, so float
inputs are uniform in [0, 1] (what the loader's example inputs use) and integer inputs are ones:
enough to calibrate something, and the report says in words how little that is."""
from __future__ import annotations

import torch

from ..model_io import example_inputs


class InputRangeSynthesizer:
    name = "input-range"
    description = "uniform random inputs in [0, 1] (integer inputs: ones); the model gives no statistics to match"
    steps_per_batch = 1

    def __init__(self, spec):
        self.spec = spec

    @classmethod
    def prepare(cls, module, spec, model_path, cfg) -> InputRangeSynthesizer:
        return cls(spec)

    def batch(self, count: int, seed: int, on_step) -> tuple[tuple[torch.Tensor, ...], dict]:
        inputs = example_inputs(self.spec, batch=count, seed=seed)
        on_step()
        return inputs, {}
