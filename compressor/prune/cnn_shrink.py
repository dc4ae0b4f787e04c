"""Physically shrink a CNN graph module: slice the kept channels out of every parameter, drop removed
residual branches, update the shape constants of flattening views, remove the gate points."""
from __future__ import annotations

import copy
import warnings

import torch
from torch import fx, nn

from .cnn_groups import BATCHNORM, CONVS, ELEMENTWISE, Segment

aten = torch.ops.aten
_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}


def shrink(structure, keep: dict[str, torch.Tensor]) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation, not the user's
        gm = copy.deepcopy(structure.model)
    nodes = {n.name: n for n in gm.graph.nodes}
    a = structure.analysis
    for name in structure.gates:  # gate points go: the result is an ordinary module
        gate = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == name)
        gate.replace_all_uses_with(gate.args[0])
        gm.graph.erase_node(gate)
        delattr(gm, name)
    removed: set[str] = set()
    for block in structure.blocks.values():
        if block.add.name in removed:  # inside a removed outer block
            continue
        if block.name in keep and not bool(torch.as_tensor(keep[block.name]).reshape(-1)[0]):
            add = nodes[block.add.name]
            add.replace_all_uses_with(nodes[block.shortcut.name])
            gm.graph.erase_node(add)
            for n in reversed(block.nodes):
                if n.name not in removed and not nodes[n.name].users:
                    gm.graph.erase_node(nodes[n.name])
                    removed.add(n.name)
            removed.add(block.add.name)

    def index(layout) -> torch.Tensor | None:
        """Kept positions along axis 1 of a tensor with this layout (None: all of them)."""
        if layout is None:
            return None
        parts, offset, pruned = [], 0, False
        for seg in layout:
            kept = _kept(structure, seg, keep)
            pruned = pruned or len(kept) < seg.count
            if seg.rep > 1:
                kept = (kept[:, None] * seg.rep + torch.arange(seg.rep)).reshape(-1)
            parts.append(kept + offset)
            offset += seg.count * seg.rep
        return torch.cat(parts) if pruned else None

    sliced: set[str] = set()

    def slice_attr(node, dims: dict[int, torch.Tensor | None]) -> None:
        if not isinstance(node, fx.Node) or node.op != "get_attr" or node.target in sliced:
            return
        dims = {d: i for d, i in dims.items() if i is not None}
        if not dims:
            return
        sliced.add(node.target)
        _replace(gm, node.target, dims)

    for layer in a.layers:
        if layer.node.name in removed:
            continue
        n = nodes[layer.node.name]
        out_idx = index(layer.outputs)
        in_idx = index(layer.inputs) if layer.kind in ("conv", "linear") else None
        slice_attr(n.args[1], {0: out_idx, 1: in_idx})
        slice_attr(n.args[2] if len(n.args) > 2 else n.kwargs.get("bias"), {0: out_idx})
        if layer.kind == "depthwise" and out_idx is not None:
            _set_groups(n, len(out_idx))
    for orig in list(a.layouts):
        if orig.op != "call_function" or orig.name in removed:
            continue
        n, idx = nodes[orig.name], index(a.layouts.get(orig))
        if idx is None:
            continue
        if orig.target in BATCHNORM:
            for i in BATCHNORM[orig.target]:
                slice_attr(n.args[i] if len(n.args) > i else None, {0: idx})
        elif orig.target in ELEMENTWISE:
            rank = len(a.shapes[orig])
            for arg in n.args[:2]:
                if isinstance(arg, fx.Node) and arg.op == "get_attr":
                    shape = a.shapes[arg]
                    dim = 1 - (rank - len(shape))
                    if dim >= 0 and shape[dim] != 1:
                        slice_attr(arg, {dim: idx})
        elif orig.target in _VIEWS:
            shape = list(n.args[1])
            if isinstance(shape[1], int) and shape[1] != -1:
                shape[1] = len(idx)
                n.args = (n.args[0], shape, *n.args[2:])
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    _drop_unused_attrs(gm)
    gm.recompile()
    _refresh_meta(gm)
    return gm


def _kept(structure, seg: Segment, keep: dict) -> torch.Tensor:
    group = structure.group_of.get(structure.analysis.spaces.find(seg.space))
    if group is None or group not in keep:
        return torch.arange(seg.count)
    return torch.as_tensor(keep[group]).bool().reshape(-1).nonzero().reshape(-1)


def _replace(gm: fx.GraphModule, target: str, dims: dict[int, torch.Tensor]) -> None:
    owner_path, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    old = getattr(owner, name)
    new = old.detach()
    for dim, idx in dims.items():
        new = new.index_select(dim, idx)
    new = new.clone()
    if name in owner._parameters:
        owner._parameters[name] = nn.Parameter(new, requires_grad=old.requires_grad)
    elif name in owner._buffers:
        owner._buffers[name] = new
    else:
        setattr(owner, name, new)


def _set_groups(node: fx.Node, groups: int) -> None:
    i = CONVS[node.target]
    if len(node.args) > i:
        node.update_arg(i, groups)
    else:
        node.update_kwarg("groups", groups)


def _drop_unused_attrs(gm: fx.GraphModule) -> None:
    """Parameters no node reads any more (a removed branch's weights) leave the module."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in used:
            owner_path, _, attr = name.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            owner._parameters.pop(attr, None)
            owner._buffers.pop(attr, None)


def _refresh_meta(gm: fx.GraphModule) -> None:
    """The nodes' fake values (read by later graph passes) at the new, smaller shapes."""
    try:
        from torch._guards import detect_fake_mode
        from torch.fx.passes.fake_tensor_prop import FakeTensorProp

        inputs = [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]
        mode = detect_fake_mode(inputs)
        if mode is None:
            return
        with mode:
            FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*inputs)
    except Exception:  # noqa: BLE001 - stale shapes only affect diagnostics; the module itself is right
        pass
