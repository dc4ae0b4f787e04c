"""Which Structure a model has: one discoverer per model family, tried in order. Each returns None
for a model it does not understand; the first that answers wins."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..artifacts import InputSpec
from .structure import Structure


def _transformer(module: nn.Module, spec: InputSpec, example: tuple[torch.Tensor, ...]) -> Structure | None:
    from .transformer import discover_transformer

    sequence = example[0].shape[1] if example[0].dim() > 1 else 1
    return discover_transformer(copy.deepcopy(module), sequence=int(sequence))  # the teacher stays as it is


def _cnn(module: nn.Module, spec: InputSpec, example: tuple[torch.Tensor, ...]) -> Structure | None:
    from ..capture import to_graph_module, without_inplace_ops
    from ..quantize.graph import fold_batchnorm
    from .cnn import discover_cnn

    gm, static = to_graph_module(module, spec)  # a private copy in aten graph form
    fold_batchnorm(gm)  # gates and shrink then see convs with biases, nothing between them and ReLU
    without_inplace_ops(gm)  # training the shrunk graph must not overwrite what autograd saved
    if static:
        example = tuple(x[:1].expand(static, *x.shape[1:]).contiguous() for x in example)
    structure = discover_cnn(gm, example)
    if structure is not None:
        structure.static_batch = static
    return structure


# model family -> discoverer; a Hugging Face encoder is tried first (its aten graph would also
# show Linear layers, but not the heads and layers CoFi prunes)
DISCOVERERS: dict[str, Callable[[nn.Module, InputSpec, tuple], Structure | None]] = {
    "transformer": _transformer,
    "cnn": _cnn,
}


def discover(module: nn.Module, spec: InputSpec, example: tuple[torch.Tensor, ...]) -> tuple[str, Structure] | None:
    for family, find in DISCOVERERS.items():
        structure = find(module, spec, example)
        if structure is not None and structure.groups:
            return family, structure
    return None
