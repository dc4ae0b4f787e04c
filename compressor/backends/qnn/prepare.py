"""The QDQ ONNX in the form the HTP compiles: every shape static.

QNN compiles a graph for fixed tensor sizes; a dynamic batch or sequence makes the EP refuse every
node ("Cannot get shape"). The inputs get the sizes the held-out data has (batch 1, or the
model's static batch), and shape inference fills in every tensor after them.
"""
from __future__ import annotations

import onnx

from ...errors import CompressError, first_line


def fix_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """`model` with its inputs at `shapes` (by input name) and every intermediate shape inferred."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    for value in graph.input:
        if value.name in initializers:
            continue
        if value.name not in shapes:
            raise CompressError(f"the ONNX graph has an input '{value.name}' the model's spec does not name")
        dims = value.type.tensor_type.shape.dim
        want = shapes[value.name]
        if len(dims) != len(want):
            raise CompressError(f"input '{value.name}' has rank {len(dims)} in the ONNX graph, {len(want)} in the data")
        for dim, size in zip(dims, want):
            if dim.HasField("dim_value") and dim.dim_value != size:
                raise CompressError(f"input '{value.name}' is fixed at {[d.dim_value for d in dims]} in the ONNX graph; "
                                    f"the data has {list(want)}")
            dim.dim_value = size
    for value in graph.output:  # re-inferred from the inputs
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.ClearField("dim_param")
    del graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001 - onnx raises InferenceError and others
        raise CompressError(f"shape inference at static input sizes {shapes} failed: {first_line(e)}") from None
