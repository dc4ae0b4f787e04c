"""The training data of a distilling pass: the calibration samples, less a validation slice that
selects the best epoch (the held-out samples are verification's and never train)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import CompressError


@dataclass
class TrainingData:
    train: tuple[torch.Tensor, ...]
    val: tuple[torch.Tensor, ...]
    labels: torch.Tensor | None  # of the training part, where the recipe has labels

    @property
    def samples(self) -> int:
        return int(self.train[0].shape[0])


def split_validation(inputs: tuple[torch.Tensor, ...], labels: torch.Tensor | None, val_fraction: float,
                     seed: int) -> TrainingData:
    """A seeded random split: `val_fraction` of the samples (at least one) for validation."""
    count = int(inputs[0].shape[0])
    n_val = max(1, int(count * val_fraction))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return TrainingData(train=tuple(x[order[n_val:]] for x in inputs), val=tuple(x[order[:n_val]] for x in inputs),
                        labels=labels[order[n_val:]] if labels is not None else None)


def training_split(data, cfg, pass_name: str) -> TrainingData:
    """A training pass's data: the recipe's training samples (compressor.calibration's
    `CalibrationData.training()`) split by `cfg`, refused when less than one batch trains."""
    inputs, labels = data.training()
    split = split_validation(inputs, labels, cfg.val_fraction, cfg.seed)
    if split.samples < cfg.batch:
        raise CompressError(f"calibration recipe '{data.recipe}' leaves {split.samples} training samples, fewer "
                            f"than one batch ({cfg.batch}); add samples (training_samples) or set {pass_name}.batch lower")
    return split
