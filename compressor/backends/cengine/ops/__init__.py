"""Op handlers: one function per ONNX op type (a registry, not an if-chain), one module per op family.

Each handler reads its inputs' values from the `Lowering`, appends `ir.Op`s (kernel calls) and
binds its outputs. A handler raises `Unsupported` with a reason when it cannot lower the node;
the lowering collects every such node so the user sees them all at once.

Importing this package registers every handler and fusion (`HANDLERS`, `FUSIONS`). The family
modules import `values`, `ir` and `fixedpoint`, never `lower`, so the lowering can import them.
"""

from . import (broadcast, constants, conv, eltwise, float_ops, gemm, lut, matmul, pool,  # noqa: F401 - register
               quantize, reduce, shape, tensors, weights)
from .constants import fold_constant
from .registry import FUSIONS, HANDLERS, handler, supported_op_types

__all__ = ["FUSIONS", "HANDLERS", "fold_constant", "handler", "supported_op_types"]
