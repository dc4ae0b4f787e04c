"""The model as an aten-level FX graph, and the graph surgery quantization needs.

Every model is brought to one form, the GraphModule of `torch.export` (a `.pt2` already is one;
an eager module is exported first), so BatchNorm folding and Q/DQ insertion are written once,
against aten ops, whatever the user's Python looked like.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from ..artifacts import InputSpec
from ..errors import CompressError, first_line
from ..model_io import StaticBatchAdapter, example_inputs
from .fakequant import FakeQuant
from .scheme import WEIGHT_ARG, WEIGHTED, QuantScheme

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
# Ops that only move or reshape data: they neither need their own Q/DQ nor count as float compute.
DATA_MOVEMENT = {
    aten.view.default, aten.reshape.default, aten.flatten.using_ints, aten.permute.default,
    aten.transpose.int, aten.t.default, aten.contiguous.default, aten.clone.default, aten.cat.default,
    aten.expand.default, aten.unsqueeze.default, aten.squeeze.dim, aten.slice.Tensor, aten.select.int,
    aten.dropout.default, aten.alias.default, aten._assert_tensor_metadata.default,
}


def op_kind(node: fx.Node) -> str | None:
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
    from ..export.onnx_export import dynamic_shapes  # one definition of the dynamic dims

    try:
        program = torch.export.export(copy.deepcopy(module).eval(), example_inputs(spec, batch=2),
                                      dynamic_shapes=dynamic_shapes(spec))
    except Exception as e:  # noqa: BLE001 - torch.export raises many types
        raise CompressError(f"torch.export cannot capture the model for quantization: {first_line(e)}") from None
    # The deep copy drops the unlifted module's train()/eval() guards (local lambdas): the copy
    # pickles into the run directory and the TorchScript exporter can call eval() on it.
    return copy.deepcopy(program.module()), static


def _attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _set_attr(gm: fx.GraphModule, target: str, value: nn.Parameter) -> None:
    owner_path, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    if name in owner._parameters:
        owner._parameters[name] = value
    else:
        owner.register_parameter(name, value)


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold inference BatchNorm into the conv before it, so what is trained is what is exported."""
    folded = 0
    for bn in list(gm.graph.nodes):
        if op_kind(bn) != "batchnorm":
            continue
        conv = bn.args[0]
        if not isinstance(conv, fx.Node) or op_kind(conv) != "conv" or len(conv.users) != 1:
            continue
        w_node = conv.args[1]
        b_node = conv.args[2] if len(conv.args) > 2 else None
        if w_node.op != "get_attr" or len(w_node.users) != 1 or (b_node is not None and b_node.op != "get_attr"):
            continue
        legit = bn.target == aten._native_batch_norm_legit_no_training.default
        gamma, beta, mean, var = (_attr(gm, a.target) if isinstance(a, fx.Node) else None for a in bn.args[1:5])
        eps = bn.args[6] if legit else bn.args[7]
        weight = _attr(gm, w_node.target).detach()
        bias = _attr(gm, b_node.target).detach() if b_node is not None else torch.zeros(weight.shape[0])
        gamma = gamma.detach() if gamma is not None else torch.ones_like(mean)
        beta = beta.detach() if beta is not None else torch.zeros_like(mean)
        factor = gamma / torch.sqrt(var.detach() + eps)
        _set_attr(gm, w_node.target, nn.Parameter(weight * factor.reshape(-1, *([1] * (weight.dim() - 1)))))
        new_bias = nn.Parameter((bias - mean.detach()) * factor + beta)
        if b_node is None:
            bias_target = f"{w_node.target}_folded_bias".replace(".", "_")
            gm.register_parameter(bias_target, new_bias)
            with gm.graph.inserting_before(conv):
                b_node = gm.graph.get_attr(bias_target)
            conv.args = (conv.args[0], w_node, b_node, *conv.args[3:])
        else:
            _set_attr(gm, b_node.target, new_bias)
        users = [u for u in bn.users if u.target.__name__ == "getitem" and u.args[1] == 0] if legit else [bn]
        for user in users:
            user.replace_all_uses_with(conv)
        folded += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return folded


@dataclass
class Layer:
    """A quantized compute op and the fake-quant modules that belong to it."""

    node: str
    kind: str
    fake_quants: list[str] = field(default_factory=list)


@dataclass
class Quantized:
    layers: list[Layer]
    float_ops: list[str]  # compute ops the scheme leaves in float, "name (op)"


def _activation_inputs(node: fx.Node) -> list[fx.Node]:
    kind = op_kind(node)
    args = node.args[:1] if kind in WEIGHTED else node.args[:2]
    return [a for a in args if isinstance(a, fx.Node) and a.op != "get_attr" and isinstance(a.meta.get("val"), torch.Tensor)]


def _feeds_int8(graph: fx.Graph, rule) -> dict[fx.Node, bool]:
    """For every node: is its value read in int8 by every op it reaches? Data movement, fused
    activations and pooling pass the question on to their users; a chain-only Add answers it for
    its own output (users first, i.e. in reverse order). One float reader (a Transformer's
    LayerNorm beside the next residual Add) is enough to keep a chain-only value float."""
    feeds: dict[fx.Node, bool] = {}

    def reads_int8(user: fx.Node) -> bool | None:  # None: no reader at all (an assertion)
        kind = op_kind(user)
        if user.op == "output" or kind in rule.float_kinds:
            return False
        if kind in rule.inputs_of:  # Linear/Conv/MatMul always; a chain-only Add if its sum goes on in int8
            return kind in WEIGHTED | {"matmul"} or kind not in rule.chain_only or feeds[user]
        if kind in (None, "act", "pool"):
            return feeds[user] if user.users else None
        return False

    for node in reversed(graph.nodes):
        answers = [a for a in (reads_int8(u) for u in node.users) if a is not None]
        feeds[node] = bool(answers) and all(answers)
    return feeds


def insert_fake_quants(gm: fx.GraphModule, scheme: QuantScheme) -> Quantized:
    """Put FakeQuant modules where the scheme's insertion rule says; weights per channel."""
    graph = gm.graph
    feeds = _feeds_int8(graph, scheme.rule) if scheme.rule.chain_only else {}
    consumers: dict[fx.Node, set[fx.Node]] = {}  # value -> the nodes that must read it quantized
    owner: dict[fx.Node, fx.Node] = {}  # value -> the compute op whose layer it belongs to
    layers: dict[fx.Node, Layer] = {}
    float_ops = []
    for node in list(graph.nodes):
        kind = op_kind(node)
        if kind is None or kind in ("act", "batchnorm"):
            continue
        chained = kind in scheme.rule.chain_only
        if kind in scheme.rule.weight_only:
            layers.setdefault(node, Layer(node.name, kind))
            continue
        if kind in scheme.rule.float_kinds or kind not in scheme.rule.inputs_of | scheme.rule.outputs_of or (
                chained and kind not in WEIGHTED | {"matmul"} and not feeds.get(node, False)):
            float_ops.append(f"{node.name} ({getattr(node.target, '__name__', node.target)})")
            continue
        if kind in scheme.rule.inputs_of:
            layers.setdefault(node, Layer(node.name, kind))
            for value in _activation_inputs(node):
                consumers.setdefault(value, set()).add(node)
                owner.setdefault(value, node)
        if kind in scheme.rule.outputs_of:
            layers.setdefault(node, Layer(node.name, kind))
            value = node
            only = next(iter(node.users)) if len(node.users) == 1 else None
            if only is not None and op_kind(only) == "act":
                value = only  # quantize after the activation: DQ -> Conv -> Relu -> Q fuses
            if chained and not feeds.get(value, False):
                continue
            consumers.setdefault(value, set()).update(value.users)
            owner[value] = node
    for value, users in consumers.items():
        name = f"aq_{value.name}"
        gm.add_submodule(name, FakeQuant(scheme.activations))
        with graph.inserting_after(value):
            q = graph.call_module(name, (value,))
        q.meta["val"] = value.meta.get("val")
        for user in users:
            user.replace_input_with(value, q)
        layer_node = owner.get(value)
        if layer_node in layers:
            layers[layer_node].fake_quants.append(name)
    for node, layer in layers.items():
        if layer.kind not in WEIGHT_ARG:
            continue
        w_node = node.args[WEIGHT_ARG[layer.kind]]
        if not isinstance(w_node, fx.Node) or w_node.op != "get_attr":
            continue
        weight = _attr(gm, w_node.target)
        name = f"wq_{node.name}"
        fq = FakeQuant(scheme.weights, channels=weight.shape[0], axis=0)
        fq.init_per_channel(weight)
        gm.add_submodule(name, fq)
        with graph.inserting_after(w_node):
            q = graph.call_module(name, (w_node,))
        node.replace_input_with(w_node, q)
        layer.fake_quants.append(name)
    graph.lint()
    gm.recompile()
    return Quantized([l for l in layers.values() if l.fake_quants], float_ops)
