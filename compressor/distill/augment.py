"""Input augmentation for distillation. The teacher labels every augmented sample itself, so an
augmentation needs no labels and cannot teach anything wrong: it only shows the student more of
the input space than the few thousand samples a recipe holds (without it the MNIST ResNet pruned
to 30% of its MACs reached 99% agreement on the validation slice and 96.9% top-1 on held-out
digits: it learnt the training digits, not the teacher).

    "shift"  images (N, C, H, W float, H and W >= 16): each moved by up to 2 pixels in x and y,
             the border filled with zeros, as the bundled teacher was trained
    "none"   the samples as they are
    "auto"   "shift" for image inputs, "none" for anything else (token ids, features)
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

MAX_SHIFT = 2


def _shift(batch: tuple[torch.Tensor, ...], gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    x = batch[0]
    n, _, h, w = x.shape
    padded = F.pad(x, (MAX_SHIFT,) * 4)
    dy = torch.randint(0, 2 * MAX_SHIFT + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * MAX_SHIFT + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    shifted = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    return (shifted, *batch[1:])


def _is_image(sample: tuple[torch.Tensor, ...]) -> bool:
    x = sample[0]
    return len(sample) == 1 and x.dim() == 4 and x.is_floating_point() and min(x.shape[2:]) >= 16


AUGMENTATIONS = ("auto", "shift", "none")


def augmentation(name: str, sample: tuple[torch.Tensor, ...],
                 seed: int) -> Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]] | None:
    """The augmentation `name` resolves to for inputs like `sample` (None: none), seeded."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got '{name}'")
    if name == "none" or (name == "auto" and not _is_image(sample)):
        return None
    if not _is_image(sample):
        raise ValueError("augment 'shift' needs image inputs (N, C, H, W floats, H and W >= 16)")
    gen = torch.Generator().manual_seed(seed)
    return lambda batch: _shift(batch, gen)
