"""A read-only index over an ONNX graph: producers, consumers, constants, Q/DQ parameters."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ...onnx_graph import OnnxGraph

Q, DQ = "QuantizeLinear", "DequantizeLinear"
QDQ_OPS = (Q, DQ)
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
PASS_THROUGH = ("Identity",)  # ops that do not change a tensor at all


def dtype_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type)


def node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


@dataclass(frozen=True)
class QParams:
    """Scale, zero point, element type and axis of one QuantizeLinear / DequantizeLinear."""

    scale: np.ndarray | None  # None when the scale is not a constant
    zero_point: np.ndarray | None  # None when absent (then 0) or not a constant
    zero_point_const: bool
    elem_type: int  # the quantized type (TensorProto enum)
    axis: int
    block_size: int

    @property
    def per_channel(self) -> bool:
        return self.scale is not None and self.scale.size > 1

    def same_as(self, other: QParams) -> bool:
        if self.scale is None or other.scale is None or not (self.zero_point_const and other.zero_point_const):
            return False
        zp_a = self.zero_point if self.zero_point is not None else np.zeros_like(self.scale, dtype=np.int64)
        zp_b = other.zero_point if other.zero_point is not None else np.zeros_like(other.scale, dtype=np.int64)
        return (self.elem_type == other.elem_type and self.scale.shape == other.scale.shape
                and np.array_equal(self.scale, other.scale) and np.array_equal(zp_a.astype(np.int64), zp_b.astype(np.int64))
                and self.block_size == other.block_size and (not self.per_channel or self.axis == other.axis))


class GraphIndex(OnnxGraph):
    """Read-only lookups over `model.graph` (the main graph; subgraphs are not descended into),
    looking through Identity, with the Q/DQ parameters TensorRT's rules need."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__(model)
        self.labels = {id(n): node_label(n, i) for i, n in enumerate(self.nodes)}
        self.constant_nodes = {n.output[0]: n for n in self.nodes if n.op_type == "Constant" and n.output}
        self.graph_outputs = {o.name for o in self.graph.output}

    def label(self, node: onnx.NodeProto) -> str:
        return self.labels[id(node)]

    @cached_property
    def graph_inputs(self) -> list[onnx.ValueInfoProto]:
        return [i for i in self.graph.input if i.name not in self.inits]

    @cached_property
    def value_types(self) -> dict[str, int]:
        types = {}
        for v in list(self.graph.input) + list(self.graph.output) + list(self.graph.value_info):
            if v.type.HasField("tensor_type"):
                types[v.name] = v.type.tensor_type.elem_type
        for name, t in self.inits.items():
            types[name] = t.data_type
        return types

    # -- constants -------------------------------------------------------------------------
    def is_const(self, name: str) -> bool:
        """An initializer, a Constant node's output, or a chain of Identity over one."""
        name = self.skip_identity(name)
        return name in self.inits or name in self.constant_nodes

    def const_tensor(self, name: str) -> TensorProto | None:
        name = self.skip_identity(name)
        if name in self.inits:
            return self.inits[name]
        node = self.constant_nodes.get(name)
        if node is not None:
            value = attr(node, "value")
            if isinstance(value, TensorProto):
                return value
        return None

    def const_array(self, name: str) -> np.ndarray | None:
        t = self.const_tensor(name)
        if t is None:
            return None
        try:
            return numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001 - external data not loaded, odd types: treat as unknown
            return None

    def skip_identity(self, name: str) -> str:
        seen = 0
        while name in self.producer and self.producer[name].op_type in PASS_THROUGH and seen < 64:
            name = self.producer[name].input[0]
            seen += 1
        return name

    def source(self, name: str) -> onnx.NodeProto | None:
        """The node producing `name`, looking through Identity."""
        return self.producer.get(self.skip_identity(name))

    def elem_type(self, name: str) -> int | None:
        name = self.skip_identity(name)
        t = self.const_tensor(name)
        if t is not None:
            return t.data_type
        node = self.producer.get(name)
        if node is not None and node.op_type == Q:
            return self.qparams(node).elem_type
        return self.value_types.get(name)

    # -- Q/DQ ------------------------------------------------------------------------------
    def qparams(self, node: onnx.NodeProto) -> QParams:
        scale = self.const_array(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        has_zp = len(node.input) > 2 and bool(node.input[2])
        zp = self.const_array(node.input[2]) if has_zp else None
        zp_const = (not has_zp) or zp is not None
        if has_zp:
            elem = self.elem_type(node.input[2]) or TensorProto.UINT8
        elif node.op_type == Q:
            out_dtype = attr(node, "output_dtype", 0)
            elem = out_dtype or TensorProto.UINT8  # ONNX: no zero point and no output_dtype -> uint8
        else:
            elem = self.elem_type(node.input[0]) or TensorProto.UINT8
        return QParams(scale, zp, zp_const, elem, int(attr(node, "axis", 1)), int(attr(node, "block_size", 0)))

    def is_dequantized(self, name: str) -> bool:
        """True when `name` comes straight out of a DequantizeLinear (Identity allowed between)."""
        node = self.source(name)
        return node is not None and node.op_type == DQ

    def weight_source(self, name: str) -> str:
        """How a weight input is stored: 'int8-dq' (DQ of a constant), 'float-q-dq' (DQ(Q(float const))),
        'float' (a float constant, no Q/DQ), 'dq-activation' (DQ of a computed tensor), or 'computed'."""
        node = self.source(name)
        if node is None:
            return "float" if self.is_const(name) else "computed"
        if node.op_type != DQ:
            return "computed"
        x = node.input[0]
        if self.is_const(x):
            return "int8-dq"
        q = self.source(x)
        if q is not None and q.op_type == Q and self.is_const(q.input[0]):
            return "float-q-dq"
        return "dq-activation"

    def is_constant_subgraph(self, name: str, limit: int = 64) -> bool:
        """True when `name` depends on no graph input (initializers and constants only)."""
        stack, seen = [name], set()
        inputs = {i.name for i in self.graph_inputs}
        while stack:
            t = stack.pop()
            if t in seen or not t:
                continue
            seen.add(t)
            if len(seen) > limit:
                return False
            if t in inputs:
                return False
            if t in self.inits:
                continue
            node = self.producer.get(t)
            if node is None:
                return False
            stack.extend(node.input)
        return True
