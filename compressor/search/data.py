"""What a searcher gets to look at besides the teacher: its input spec and the run's calibration
data (the recipe's training samples, held-out samples)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..artifacts import InputSpec
from ..calibration import CalibrationData


@dataclass
class SearchData:
    spec: InputSpec
    calibration: CalibrationData

    def samples(self, count: int | None = None) -> tuple[torch.Tensor, ...]:
        """The first `count` training samples (all of them for None)."""
        inputs, _ = self.calibration.training()
        return tuple(x[:count] for x in inputs) if count else inputs

    def example(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """Real samples at `batch` (the static batch of a model exported with one)."""
        inputs = self.samples(batch)
        return tuple(x[:1].expand(batch, *x.shape[1:]).contiguous() if x.shape[0] < batch else x for x in inputs)

    def __getattr__(self, name: str):
        # a searcher written against CalibrationData (training(), holdout, recipe) reads it through
        if name == "calibration":
            raise AttributeError(name)
        return getattr(self.calibration, name)
