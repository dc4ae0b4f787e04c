"""Cross-layer weight equalisation (DFQ: "Data-Free Quantization Through Weight Equalization and
Bias Correction"): rescale the channels between two weighted layers so that each channel's weight
range is the same in both, without changing what the network computes.

For a chain  y = W2 f(W1 x + b1)  where f is ReLU, max/average pooling or nothing (all of them
commute with a positive per-channel scale: f(s z) = s f(z)), dividing output channel c of the first
layer (its weights and bias) by s_c and multiplying input channel c of the second by s_c leaves y
unchanged. With r1_c and r2_c the channel's largest absolute weight in each layer,
s_c = sqrt(r1_c / r2_c) makes both sqrt(r1_c r2_c): a channel with a few large weights no longer
sets the quantization grid of its neighbours (per-tensor weights), and activation channels whose
ranges differ widely are brought closer (per-tensor activations).

Works on the aten graph after BatchNorm folding, on any Conv/Linear pair where the graph allows it:
the first layer's output reaches only the second layer through such ops (one user at each step),
both weights are plain parameters used once, and the second layer mixes channels as a dense conv
(groups 1), a depthwise conv or a Linear that reads exactly those channels (after a flatten of a
1x1 map). Chains of several pairs are swept until the scales settle.
"""
from __future__ import annotations

import torch
from torch import fx

from ..capture import aten, op_kind
from .graph import _attr

# ops y = f(x) with f(s x) = s f(x) per channel for s > 0: what may sit between the two layers
HOMOGENEOUS = {aten.relu.default, aten.relu_.default, aten.max_pool2d.default, aten.avg_pool2d.default,
               aten.adaptive_avg_pool2d.default, aten.mean.dim}
FLATTENS = {aten.view.default, aten.reshape.default, aten.flatten.using_ints}
SWEEPS = 8
SETTLED = 1e-3  # stop when no scale moved by more than this (relative)


def _weight(gm: fx.GraphModule, layer: fx.Node) -> torch.Tensor | None:
    node = layer.args[1]
    if not (isinstance(node, fx.Node) and node.op == "get_attr" and len(node.users) == 1):
        return None
    return _attr(gm, node.target)


def _bias(gm: fx.GraphModule, layer: fx.Node) -> torch.Tensor | None:
    node = layer.args[2] if len(layer.args) > 2 else None
    return _attr(gm, node.target) if isinstance(node, fx.Node) and node.op == "get_attr" and len(node.users) == 1 else None


def _groups(layer: fx.Node) -> int | None:
    """A conv's groups (None for a transposed conv, which this does not handle); 1 for Linear."""
    if layer.target == aten.convolution.default:
        return None if layer.args[6] else int(layer.args[8])
    if op_kind(layer) == "conv":
        return int(layer.args[6]) if len(layer.args) > 6 else 1
    return 1


def equalisable_pairs(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]]:
    pairs = []
    for first in gm.graph.nodes:
        if op_kind(first) not in ("conv", "linear") or _groups(first) is None or _weight(gm, first) is None:
            continue
        if len(first.args) > 2 and first.args[2] is not None and _bias(gm, first) is None:
            continue  # a bias we cannot rescale with the weights
        channels = _weight(gm, first).shape[0]
        node, flattened = first, False
        while len(node.users) == 1:
            user = next(iter(node.users))
            if user.target in HOMOGENEOUS and user.args[0] is node:
                node = user
                continue
            if user.target in FLATTENS and user.args[0] is node:
                node, flattened = user, True
                continue
            if op_kind(user) in ("conv", "linear") and user.args[0] is node and _weight(gm, user) is not None:
                pairs += [(first, user)] if _reads_channels(gm, user, channels, flattened) else []
            break
    return pairs


def _reads_channels(gm: fx.GraphModule, second: fx.Node, channels: int, flattened: bool) -> bool:
    w, groups = _weight(gm, second), _groups(second)
    if op_kind(second) == "linear":
        return w.shape[1] == channels
    if flattened or groups is None:
        return False
    return (groups == 1 and w.shape[1] == channels) or (groups == channels and w.shape[0] == channels and w.shape[1] == 1)


def _in_axis(gm: fx.GraphModule, second: fx.Node) -> int:
    """The weight axis of the second layer that indexes the shared channels."""
    w = _weight(gm, second)
    depthwise = op_kind(second) == "conv" and _groups(second) == w.shape[0] and w.shape[1] == 1 and w.shape[0] > 1
    return 0 if depthwise else 1


def _per_channel_max(w: torch.Tensor, axis: int) -> torch.Tensor:
    return w.detach().abs().transpose(0, axis).reshape(w.shape[axis], -1).amax(1)


def equalize_weights(gm: fx.GraphModule) -> dict:
    """Equalise every pair in place; returns how many pairs and the mean ratio between the widest
    and narrowest channel range of the layers involved, before and after."""
    pairs = equalisable_pairs(gm)
    if not pairs:
        return {"pairs": 0}
    layers = {n for pair in pairs for n in pair}
    before = _spread(gm, layers)
    for _ in range(SWEEPS):
        moved = 0.0
        for first, second in pairs:
            w1, w2, b1 = _weight(gm, first), _weight(gm, second), _bias(gm, first)
            axis = _in_axis(gm, second)
            r1, r2 = _per_channel_max(w1, 0), _per_channel_max(w2, axis)
            scale = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp_min(1e-30)), torch.ones_like(r1))
            with torch.no_grad():
                w1.div_(scale.reshape(-1, *([1] * (w1.dim() - 1))))
                if b1 is not None:
                    b1.div_(scale)
                shape = [1] * w2.dim()
                shape[axis] = -1
                w2.mul_(scale.reshape(shape))
            moved = max(moved, float((scale - 1).abs().max()))
        if moved < SETTLED:
            break
    return {"pairs": len(pairs), "layers": sorted(n.name for n in layers),
            "channel_range_spread_before": before, "channel_range_spread_after": _spread(gm, layers)}


def _spread(gm: fx.GraphModule, layers) -> float:
    """Mean over layers of (largest / smallest nonzero per-output-channel weight range)."""
    ratios = []
    for layer in layers:
        r = _per_channel_max(_weight(gm, layer), 0)
        r = r[r > 0]
        ratios.append(float(r.max() / r.min()) if r.numel() else 1.0)
    return sum(ratios) / len(ratios)
