"""Constants: folding nodes whose inputs are all constants, Constant and Shape."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..values import CV, Unsupported, node_attr
from .registry import handler

if TYPE_CHECKING:
    from ..lower import Lowering


def fold_constant(L: Lowering, node: onnx.NodeProto) -> None:
    """Evaluate a node whose inputs are all constants (shape arithmetic) with ONNX's reference."""
    from onnx.reference import ReferenceEvaluator

    feeds = {i: L.val[i].arr for i in node.input if i}
    opset = [o for o in L.model.opset_import]
    graph = onnx.helper.make_graph(
        [node], "fold",
        [onnx.helper.make_tensor_value_info(i, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for i, a in feeds.items()],
        [onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o])
    try:
        model = onnx.helper.make_model(graph, opset_imports=opset)
        outs = ReferenceEvaluator(model).run(None, feeds)
    except Exception as e:  # noqa: BLE001
        raise Unsupported(f"cannot fold constant {node.op_type}: {e}") from e
    for name, arr in zip([o for o in node.output if o], outs):
        L.val[name] = CV(np.asarray(arr))


@handler("Constant")
def constant(L: Lowering, node):
    for a in node.attribute:
        if a.name == "value":
            L.bind(node.output[0], CV(onnx.numpy_helper.to_array(a.t)))
            return
        if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            v = onnx.helper.get_attribute_value(a)
            dt = np.float32 if "float" in a.name else np.int64
            L.bind(node.output[0], CV(np.asarray(v, dt)))
            return
    raise Unsupported("Constant without a tensor value")


@handler("Shape")
def shape_op(L: Lowering, node):
    shp = np.asarray(L.shape(node.input[0]), np.int64)
    start, end = node_attr(node, "start", 0), node_attr(node, "end", None)
    L.bind(node.output[0], CV(shp[start:end]))
