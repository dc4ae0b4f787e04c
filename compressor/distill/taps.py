"""Feature taps: where the distillation losses read intermediate features.

Two kinds. On a captured aten graph (quantize works on one), a Tap node is inserted on the input
of the last weighted layer, found by position among the weighted ops, so teacher and student
graphs of the same architecture tap the same value. On any nn.Module (a Hugging Face encoder, a
pruned student), HookTaps records the outputs of named submodules through forward hooks.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from ..capture import WEIGHTED, op_kind


class Tap(nn.Module):
    """Identity that remembers what passed through."""

    def forward(self, x):
        self.value = x
        return x


def tap_last_weighted_input(gm: fx.GraphModule, transparent: tuple[type, ...] = ()) -> Tap | None:
    """Tap the input of the last Conv/Linear of `gm`; None if it has none. Modules of a
    `transparent` type between the value and that layer (a student's fake quantizers) are looked
    through, so the tap sees the float value the teacher's tap sees."""
    weighted = [n for n in gm.graph.nodes if op_kind(n) in WEIGHTED]
    if not weighted:
        return None
    value = weighted[-1].args[0]
    while value.op == "call_module" and isinstance(gm.get_submodule(value.target), transparent):
        value = value.args[0]
    tap = Tap()
    gm.add_submodule("feature_tap", tap)
    with gm.graph.inserting_after(value):
        node = gm.graph.call_module("feature_tap", (value,))
    for user in list(value.users):
        if user is not node:
            user.replace_input_with(value, node)
    gm.recompile()
    return tap


def tapped_features(graph: fx.GraphModule, inputs: tuple[torch.Tensor, ...], batch: int) -> torch.Tensor | None:
    """The input of `graph`'s last weighted layer over `inputs` (None where it has none): a
    teacher's features for the feature loss, computed once."""
    tap = tap_last_weighted_input(graph)
    if tap is None:
        return None
    feats = []
    with torch.no_grad():
        for s in range(0, inputs[0].shape[0], batch):
            graph(*(x[s:s + batch] for x in inputs))
            feats.append(tap.value)
    return torch.cat(feats)


class HookTaps:
    """Records the (first) output of each named submodule on every forward; `values` in the order
    of `names`. Use as a context manager, or call `remove()`."""

    def __init__(self, module: nn.Module, names: list[str]):
        modules = dict(module.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"no submodule named {', '.join(missing)}")
        self.names = list(names)
        self._seen: dict[str, object] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def record(_module, _inputs, output):
            self._seen[name] = output[0] if isinstance(output, (tuple, list)) else output
        return record

    @property
    def values(self) -> list:
        return [self._seen[n] for n in self.names]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "HookTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
