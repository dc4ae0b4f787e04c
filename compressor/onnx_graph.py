"""An index over an ONNX graph: who produces and who reads each tensor, constant values, new
initializers. The rewrites that edit exported files in place use it directly (the export's QDQ
clean-up, the onnxruntime backend's integer MatMuls); the TensorRT checks extend it."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


class OnnxGraph:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.nodes = list(self.graph.node)  # as built; in-place rewrites keep their own lists
        self.inits = {i.name: i for i in self.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for out in node.output:
                if out:  # "" marks an optional output left out
                    self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output; None for computed tensors."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def add_init(self, array: np.ndarray, name: str) -> str:
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        self.inits[name] = self.graph.initializer[-1]
        return name
