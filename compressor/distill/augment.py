"""Input augmentation for distillation. The teacher labels every augmented sample itself, so an
augmentation needs no labels and cannot teach anything wrong: it only shows the student more of
the input space than the few thousand samples a recipe holds (without it the MNIST ResNet pruned
to 30% of its MACs reached 99% agreement on the validation slice and 96.9% top-1 on held-out
digits: it learnt the training digits, not the teacher).

    "shift"  images (N, C, H, W float, H and W >= 16): each moved by up to 2 pixels in x and y,
             the border filled with zeros, as the bundled teacher was trained
    "affine" images as for "shift": each rotated by up to 10 degrees, scaled by 0.9 to 1.1 and
             moved by up to 2 pixels (bilinear, zeros outside): inputs near the data the teacher
             saw, where its soft labels still mean something, but more of them than shifts give
    "none"   the samples as they are
    "auto"   "shift" for image inputs, "none" for anything else (token ids, features)
"""
from __future__ import annotations

import math
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


MAX_DEGREES, MAX_SCALE = 10.0, 0.1


def _affine(batch: tuple[torch.Tensor, ...], gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    x = batch[0]
    n, _, h, w = x.shape
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(MAX_DEGREES)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * MAX_SCALE
    move = (torch.rand(n, 2, generator=gen) * 2 - 1) * MAX_SHIFT * 2 / torch.tensor([w, h])  # pixels in [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, move[:, 0]], 1), torch.stack([sin, cos, move[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return (F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False), *batch[1:])


_IMAGE_AUGMENTATIONS = {"shift": _shift, "affine": _affine}


def _is_image(sample: tuple[torch.Tensor, ...]) -> bool:
    x = sample[0]
    return len(sample) == 1 and x.dim() == 4 and x.is_floating_point() and min(x.shape[2:]) >= 16


AUGMENTATIONS = ("auto", *_IMAGE_AUGMENTATIONS, "none")


def resolve(name: str, sample: tuple[torch.Tensor, ...]) -> str:
    """What augmentation `name` means for inputs like `sample`: "none" or an image transform's name."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got '{name}'")
    if name == "none" or (name == "auto" and not _is_image(sample)):
        return "none"
    if not _is_image(sample):
        raise ValueError(f"augment '{name}' needs image inputs (N, C, H, W floats, H and W >= 16)")
    return "shift" if name == "auto" else name


def augmentation(name: str, sample: tuple[torch.Tensor, ...],
                 seed: int) -> Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]] | None:
    """The augmentation `name` resolves to for inputs like `sample` (None: none), seeded."""
    chosen = resolve(name, sample)
    if chosen == "none":
        return None
    gen = torch.Generator().manual_seed(seed)
    transform = _IMAGE_AUGMENTATIONS[chosen]
    return lambda batch: transform(batch, gen)
