"""The QDQ ONNX in the form the HTP compiles: every shape static, exact GELU as one op.

QNN compiles a graph for fixed tensor sizes; a dynamic batch or sequence makes the EP refuse every
node ("Cannot get shape"). The inputs get the sizes the held-out data has (batch 1, or the
model's static batch), and shape inference fills in every tensor after them.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from ...errors import CompressError, first_line
from ...onnx_graph import OnnxGraph

MS_DOMAIN = "com.microsoft"


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


def _const_is(g: OnnxGraph, name: str, value: float) -> bool:
    c = g.const(name)
    return c is not None and c.size == 1 and abs(float(np.asarray(c).reshape(())) - value) < 1e-4 * max(1.0, abs(value))


def _other(node: onnx.NodeProto, name: str) -> str:
    return node.input[1] if node.input[0] == name else node.input[0]


def fuse_erf_gelu(model: onnx.ModelProto) -> int:
    """x -> Div(sqrt 2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5), how exporters below opset 20 write
    an exact GELU, becomes onnxruntime's com.microsoft Gelu (the same function). The QNN EP has no
    Erf: MiniLM's six GELUs were its only rejected nodes; as one op each, DQ -> Gelu -> Q is a QDQ
    unit the HTP runs."""
    g = OnnxGraph(model)
    fused = 0
    for div in [n for n in g.nodes if n.op_type == "Div"]:
        x = div.input[0]
        chain = [div]
        for op, check in (("Erf", None), ("Add", 1.0), ("Mul", "x"), ("Mul", 0.5)):
            users = g.consumers.get(chain[-1].output[0], [])
            if len(users) != 1 or users[0].op_type != op:
                break
            node = users[0]
            if check == "x" and _other(node, chain[-1].output[0]) != x:
                break
            if isinstance(check, float) and not _const_is(g, _other(node, chain[-1].output[0]), check):
                break
            chain.append(node)
        if len(chain) != 5 or not _const_is(g, div.input[1], math.sqrt(2.0)):
            continue
        gelu = helper.make_node("Gelu", [x], [chain[-1].output[0]], name=f"{div.name or x}_gelu", domain=MS_DOMAIN)
        at = list(model.graph.node).index(chain[0])
        for node in chain:
            model.graph.node.remove(node)
        model.graph.node.insert(at, gelu)
        fused += 1
    if fused:  # the constants only the fused ops read
        used = {i for n in model.graph.node for i in n.input}
        for init in [i for i in model.graph.initializer if i.name not in used]:
            model.graph.initializer.remove(init)
        for const in [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used]:
            model.graph.node.remove(const)
    if fused and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return fused
