"""Width converts where 16-bit (a16w8) layers meet 8-bit ones.

A QDQ compute op is one kernel only when its activation inputs and its output have the same
width: onnxruntime's QDQ node units, which the QNN EP compiles, group DQ -> Conv -> Q only then
(measured: a Conv reading a uint16 value and writing uint8 was refused by the HTP as "a
standalone DQ op with per-channel quantization"). onnxruntime's own QNN quantizer inserts a
convert (an extra Q -> DQ of the other width) at such a boundary; so do we, in the fake-quant
graph, so that the module verify compares with computes what the engine does:

- a 16-bit value read by an 8-bit layer goes through an 8-bit quantizer on the same range (the
  rounding an 8-bit engine has there anyway);
- an 8-bit value read by a 16-bit layer goes through a 16-bit quantizer on the same range, which
  holds every 8-bit step exactly (the 16-bit grid is the 8-bit one split 257 ways): no change in
  value, only the width the layer's kernel reads.

A convert shares the scale and zero point of the quantizer it converts, so fine-tuning moves both.
"""
from __future__ import annotations

from torch import fx, nn

from .fakequant import QUANTIZE, WIDE, FakeQuant
from .graph import Layer, op_kind

PASS_THROUGH = (None, "act", "pool")  # kinds a value keeps its quantization through (data movement, ReLU, pooling)


def _source_quantizer(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node | None:
    """The activation quantizer whose value reaches `node` through data movement, activations and
    pooling only; None where a compute op or a graph input comes first."""
    while isinstance(node, fx.Node):
        if node.op == "call_module" and isinstance(modules.get(node.target), FakeQuant):
            return node if modules[node.target].axis is None else None
        if node.op != "call_function" or op_kind(node) not in PASS_THROUGH or not node.args:
            return None
        node = node.args[0]
    return None


def insert_converts(gm: fx.GraphModule, layers: list[Layer], kept: list[str]) -> list[str]:
    """Where a layer reads an activation quantized at the other width, put a convert on that input
    (in the layer's own width). Returns the converts' names."""
    modules = dict(gm.named_modules())
    kept_set = set(kept)
    nodes = {n.name: n for n in gm.graph.nodes}
    added = []
    for layer in layers:
        node = nodes.get(layer.node)
        if node is None or layer.kind == "embedding":
            continue
        wide = layer.node in kept_set
        for arg in [a for a in node.args if isinstance(a, fx.Node)]:
            source = _source_quantizer(arg, modules)
            if source is None or source.target in layer.fake_quants:  # its own input quantizer: its width
                continue
            upstream = modules[source.target]
            if (upstream.state == WIDE) == wide:
                continue
            name = f"cv_{node.name}_{arg.name}"
            convert = FakeQuant(upstream.quant, wide=upstream.wide)
            convert.scale, convert.zero_point = upstream.scale, upstream.zero_point  # shared, not copied
            convert.state, convert.observer = (WIDE if wide else QUANTIZE), None
            gm.add_submodule(name, convert)
            with gm.graph.inserting_before(node):
                q = gm.graph.call_module(name, (arg,))
            q.meta["val"] = arg.meta.get("val")
            node.replace_input_with(arg, q)
            added.append(name)
    gm.graph.lint()
    gm.recompile()
    return added
