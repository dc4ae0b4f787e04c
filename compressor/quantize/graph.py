"""The graph surgery quantization needs, on the aten-level FX graph of `compressor.capture`:
BatchNorm folding and fake-quant insertion."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn

# the capture names are re-exported: modules and tests import them from here
from ..capture import (DATA_MOVEMENT, OP_KINDS, WEIGHTED, aten, op_kind, reads_dynamic_sizes,  # noqa: F401
                       to_graph_module)
from .fakequant import FakeQuant
from .scheme import WEIGHT_ARG, QuantScheme


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
        gm.add_submodule(name, FakeQuant(scheme.activations, wide=scheme.wide_activations))
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
