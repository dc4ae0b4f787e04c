"""The options of a distillation fine-tune, shared by every pass that trains a student.

A pass's own Config extends DistillConfig, so its TOML table carries these keys flat beside its
own (`[quantize] epochs = 2`), and the training loop reads them from the pass's config directly.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DistillConfig:
    epochs: int = 2
    lr: float = 1e-4
    # fraction of the training steps over which the learning rate rises linearly from 0 to lr, then
    # the cosine decay to 0 as without it (0: cosine from the first step)
    lr_warmup: float | None = 0.0  # None: the pass's own default (the prune pass's per model family)
    batch: int = 64
    temperature: float = 4.0  # logit KL at this temperature (times T^2), for classifiers
    kd_weight: float = 1.0  # the prediction loss to the teacher
    label_weight: float = 0.0  # cross-entropy to labels, where the data has them
    feature_weight: float = 0.0  # normalised MSE of tapped intermediate features
    patience: int = 1  # epochs without a better validation score before stopping
    val_fraction: float = 0.1  # of the training data, held back to select the best epoch
    seed: int = 0
    checkpoint_every: int = 0  # training steps between checkpoints inside an epoch (0: after each epoch only)

    def __post_init__(self):
        if self.epochs < 0 or self.batch < 1 or (self.lr is not None and self.lr <= 0) or self.temperature <= 0:
            raise ValueError("epochs must be >= 0, batch >= 1, lr and temperature > 0")
        if self.checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0 (0: a checkpoint after each epoch only)")
        if self.patience < 0 or min(self.kd_weight, self.label_weight, self.feature_weight) < 0:
            raise ValueError("patience must be >= 0 and the loss weights >= 0")
        if self.lr_warmup is not None and not 0 <= self.lr_warmup < 1:
            raise ValueError("lr_warmup must be in [0, 1): the fraction of the steps that warm the learning rate up")
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be in (0, 1)")
