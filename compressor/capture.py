"""Bring a module into aten-level graph form, and describe its dynamic dimensions.

Every model is brought to one form, the GraphModule of `torch.export` (a `.pt2` already is one;
an eager module is exported first), so graph passes (BatchNorm folding, Q/DQ insertion,
distillation hooks) are written once, against aten ops, whatever the user's Python looked like.
`op_kind` names what each aten node computes. `dynamic_shapes` / `static_spec` describe the
dynamic dimensions of an input spec, for torch.export and the ONNX exporters alike.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import replace

import torch
from torch import fx, nn

from .artifacts import InputSpec, TensorSpec
from .errors import CompressError, first_line
from .model_io import StaticBatchAdapter, example_inputs

aten = torch.ops.aten

OP_KINDS = {
    aten.conv1d.default: "conv", aten.conv2d.default: "conv", aten.convolution.default: "conv",
    aten.linear.default: "linear",
    aten.matmul.default: "matmul", aten.bmm.default: "matmul", aten.mm.default: "matmul",
    aten.add.Tensor: "add", aten.add_.Tensor: "add",
    aten.relu.default: "act", aten.relu_.default: "act", aten.hardtanh.default: "act",
    aten.hardtanh_.default: "act", aten.clamp.default: "act",
    aten.max_pool2d.default: "pool", aten.avg_pool2d.default: "pool",
    aten.adaptive_avg_pool2d.default: "pool", aten.mean.dim: "pool",
    aten.layer_norm.default: "norm", aten.softmax.int: "softmax", aten._softmax.default: "softmax",
    aten.gelu.default: "gelu", aten.embedding.default: "embedding",
    aten.batch_norm.default: "batchnorm", aten._native_batch_norm_legit_no_training.default: "batchnorm",
}
# The kinds whose op has a weight tensor (Conv, Linear): where quantization puts per-channel weights
# and where distillation taps the features.
WEIGHTED = frozenset({"conv", "linear"})
# Ops that only move or reshape data: they neither need their own Q/DQ nor count as float compute.
DATA_MOVEMENT = {
    aten.view.default, aten.reshape.default, aten.flatten.using_ints, aten.permute.default,
    aten.transpose.int, aten.t.default, aten.contiguous.default, aten.clone.default, aten.cat.default,
    aten.expand.default, aten.unsqueeze.default, aten.squeeze.dim, aten.slice.Tensor, aten.select.int,
    aten.dropout.default, aten.alias.default, aten._assert_tensor_metadata.default,
}


def op_kind(node: fx.Node) -> str | None:
    """What an aten call computes (a value of OP_KINDS, or "other"); None for data movement and
    anything that is not an aten op call (placeholders, getitem, submodules)."""
    if node.op != "call_function":
        return None
    if node.target in OP_KINDS:
        return OP_KINDS[node.target]
    if node.target in DATA_MOVEMENT or not isinstance(node.target, torch._ops.OpOverload):
        return None  # getitem, assertions, data movement
    return "other"


def to_graph_module(module: nn.Module, spec: InputSpec) -> tuple[fx.GraphModule, int | None]:
    """A private aten-level copy of `module` (the teacher stays untouched), and its static batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation, not the user's
        gm, static = _aten_copy(module, spec)
    _drop_input_guards(gm)
    # torch.export's tracer class cannot rebuild the module when it is unpickled (--resume).
    gm._tracer_cls = gm.graph._tracer_cls = None
    gm._tracer_extras = {}
    return gm, static


def reads_dynamic_sizes(module: nn.Module) -> bool:
    """Does the graph use a dynamic dimension as a value (a Transformer's batch and sequence feed
    view/expand/slice)? The TorchScript exporter, which writes fake-quantized graphs, bakes those
    values in as the example's constants, so such a graph can only be exported with static shapes."""
    module = module.inner if isinstance(module, StaticBatchAdapter) else module
    return isinstance(module, fx.GraphModule) and any(
        n.op == "call_function" and n.target == aten.sym_size.int for n in module.graph.nodes)


def _drop_input_guards(gm: fx.GraphModule) -> None:
    """torch.export's input-shape guard is a local closure (not picklable, so not cacheable); the
    static batch it guards is kept by StaticBatchAdapter instead."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()
    gm.recompile()


def _aten_copy(module: nn.Module, spec: InputSpec) -> tuple[fx.GraphModule, int | None]:
    static = None
    if isinstance(module, StaticBatchAdapter):
        module, static = module.inner, module.batch
    if isinstance(module, torch.jit.ScriptModule):
        raise CompressError("TorchScript models cannot be fine-tuned or quantized here: give a torch.export .pt2 "
                            "archive or a state_dict with --model-class")
    if isinstance(module, fx.GraphModule) and any(n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
                                                   for n in module.graph.nodes):
        return copy.deepcopy(module), static
    try:
        program = torch.export.export(copy.deepcopy(module).eval(), example_inputs(spec, batch=2),
                                      dynamic_shapes=dynamic_shapes(spec))
    except Exception as e:  # noqa: BLE001 - torch.export raises many types
        raise CompressError(f"torch.export cannot capture the model for quantization: {first_line(e)}") from None
    # The deep copy drops the unlifted module's train()/eval() guards (local lambdas): the copy
    # pickles into the run directory and the TorchScript exporter can call eval() on it.
    return copy.deepcopy(program.module()), static


def dynamic_shapes(spec: InputSpec):
    dims: dict[str, torch.export.Dim] = {}
    shapes = []
    for t in spec.inputs:
        axes = {}
        for axis, d in enumerate(t.shape):
            if isinstance(d, str) and not (axis == 0 and spec.static_batch):
                limit = spec.max_sequence if d == "sequence" and spec.max_sequence else 65536
                axes[axis] = dims.setdefault(d, torch.export.Dim(d, min=1, max=limit))
        shapes.append(axes or None)
    return tuple(shapes)


def static_spec(spec: InputSpec, calib: tuple) -> InputSpec:
    """Batch 1, and every other dynamic dimension at its size in the calibration data (a text
    recipe pads to its max_length): the shapes the engine was calibrated and verified at."""
    inputs = tuple(TensorSpec(t.name, tuple(d if isinstance(d, int) or axis == 0 else int(x.shape[axis])
                                            for axis, d in enumerate(t.shape)), t.dtype)
                   for t, x in zip(spec.inputs, calib))
    return replace(spec, inputs=inputs, static_batch=1)


def without_inplace_ops(gm: fx.GraphModule) -> int:
    """Replace in-place aten ops (`relu_`, `hardtanh_`, `add_`, ...) by their functional forms.
    torch.export keeps `nn.ReLU(inplace=True)` as `relu_`; harmless for inference, but training a
    graph whose structure changed (a pruned residual block's add removed) can then overwrite a
    value autograd saved. Returns how many ops were replaced."""
    replaced = 0
    for node in gm.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        name = target._schema.name.split("::")[-1]
        if not name.endswith("_") or name.startswith("_"):
            continue
        packet = getattr(torch.ops.aten, name[:-1], None)
        functional = getattr(packet, target._overloadname, None) if packet is not None else None
        if functional is not None:
            node.target = functional
            replaced += 1
    if replaced:
        gm.recompile()
    return replaced
