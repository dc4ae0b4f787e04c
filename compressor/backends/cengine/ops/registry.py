"""The handler registry: ONNX op type -> the function that lowers such a node, and the fusions tried first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import onnx

if TYPE_CHECKING:
    from ..lower import Lowering


HANDLERS: dict[str, Callable[[Lowering, onnx.NodeProto], None]] = {}
# tried, in order, on every node before its handler; a fusion returns True when it lowered the node
# (and claimed the nodes it fused with)
FUSIONS: list[Callable[[Lowering, onnx.NodeProto], bool]] = []


def handler(*op_types: str):
    def deco(fn):
        for t in op_types:
            HANDLERS[t] = fn
        return fn

    return deco


def supported_op_types() -> list[str]:
    return sorted(HANDLERS)
