"""Physically remove pruned heads, FFN dimensions, sub-layers and hidden dims from a BERT encoder.

The result is a deepcopy of the same classes with narrower tensors (heads: rows of Q/K/V and
columns of the attention output projection; FFN dims: rows of intermediate.dense, columns of
output.dense; hidden: that axis of every embedding table, Linear, LayerNorm, pooler and the
classifier's input), and it computes what the gated model computes with gates = keep.

A sub-layer that loses everything still applies its LayerNorm to the residual: BERT computes
LayerNorm(dropout(dense(x)) + input), so with its output gated to zero what remains is
LayerNorm(input), and, when only its units went (all heads, all FFN dims) but the sub-layer's own
gate is on, LayerNorm(input + dense.bias). The Skipped* modules below compute exactly that, with
no zero-width Linear left (which the ONNX exporters and runtimes handle badly).
We slice tensors ourselves rather than use transformers' prune_heads / prune_linear_layer: those
only cut one axis of one kind (heads), while the hidden dimension cuts every module on its axis.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class SkippedAttention(nn.Module):
    """A BertAttention whose heads are all removed: (LayerNorm(input + dropout(offset)),), where
    offset is the output projection's bias if the sub-layer itself was kept, else nothing."""

    def __init__(self, layer_norm: nn.LayerNorm, offset: torch.Tensor | None, dropout: float):
        super().__init__()
        self.LayerNorm = layer_norm
        self.offset = None if offset is None else _like(offset, offset)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor]:
        # BertLayer reads attention(...)[0] and passes the rest on as attention weights: none here
        if self.offset is not None:
            return (self.LayerNorm(hidden_states + self.dropout(self.offset)),)
        return (self.LayerNorm(hidden_states),)


class SkippedOutput(nn.Module):
    """A BertOutput whose FFN is removed (its BertIntermediate becomes nn.Identity):
    LayerNorm(input + dropout(offset)), offset as in SkippedAttention."""

    def __init__(self, layer_norm: nn.LayerNorm, offset: torch.Tensor | None, dropout: float):
        super().__init__()
        self.LayerNorm = layer_norm
        self.offset = None if offset is None else _like(offset, offset)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        if self.offset is not None:
            return self.LayerNorm(input_tensor + self.dropout(self.offset))
        return self.LayerNorm(input_tensor)


def shrink_bert(structure, keep: dict[str, torch.Tensor]) -> nn.Module:
    """A physically smaller deepcopy of structure.model (see the module docstring)."""
    model = copy.deepcopy(structure.model)
    base = model.model.bert if hasattr(model.model, "bert") else model.model

    def kept(name: str, size: int) -> torch.Tensor:
        mask = keep.get(name) if name else None
        if mask is None:
            return torch.arange(size)
        if mask.shape != (size,):
            raise ValueError(f"keep['{name}'] has shape {tuple(mask.shape)}, expected ({size},)")
        return torch.nonzero(mask.bool()).flatten()

    for names, layer in zip(structure.layer_names, base.encoder.layer):
        if names.heads:
            _shrink_attention(layer, kept(names.heads, layer.attention.self.num_attention_heads),
                              bool(kept(names.mha, 1).numel()))
        if names.ffn:
            _shrink_ffn(layer, kept(names.ffn_dims, layer.intermediate.dense.out_features),
                        bool(kept(names.ffn, 1).numel()))
    hidden = kept(structure.hidden_name, structure.hidden_size)
    if hidden.numel() < structure.hidden_size:
        _shrink_hidden(model, base, hidden)
    return model


def _shrink_attention(layer: nn.Module, heads: torch.Tensor, keep_layer: bool) -> None:
    attention = layer.attention
    if not keep_layer or heads.numel() == 0:
        out = attention.output
        layer.attention = SkippedAttention(out.LayerNorm, out.dense.bias if keep_layer else None, out.dropout.p)
        return
    sa = attention.self
    total = sa.num_attention_heads
    if heads.numel() == total:
        return
    dims = (heads[:, None] * sa.attention_head_size + torch.arange(sa.attention_head_size)).flatten()
    for name in ("query", "key", "value"):
        _narrow_linear(getattr(sa, name), out=dims)
    _narrow_linear(attention.output.dense, inp=dims)
    # transformers' own bookkeeping (BertAttention.prune_heads): the original ids of removed heads
    original = sorted(set(range(total + len(attention.pruned_heads))) - attention.pruned_heads)
    attention.pruned_heads = attention.pruned_heads | {original[h] for h in range(total) if h not in set(heads.tolist())}
    sa.num_attention_heads = heads.numel()
    sa.all_head_size = sa.num_attention_heads * sa.attention_head_size


def _shrink_ffn(layer: nn.Module, dims: torch.Tensor, keep_layer: bool) -> None:
    if not keep_layer or dims.numel() == 0:
        out = layer.output
        layer.intermediate = nn.Identity()
        layer.output = SkippedOutput(out.LayerNorm, out.dense.bias if keep_layer else None, out.dropout.p)
        return
    if dims.numel() < layer.intermediate.dense.out_features:
        _narrow_linear(layer.intermediate.dense, out=dims)
        _narrow_linear(layer.output.dense, inp=dims)


def _shrink_hidden(model: nn.Module, base: nn.Module, idx: torch.Tensor) -> None:
    emb = base.embeddings
    for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
        table.weight = _like(table.weight, table.weight[:, idx])
        table.embedding_dim = idx.numel()
    _narrow_norm(emb.LayerNorm, idx)
    for layer in base.encoder.layer:
        for sub in (layer.attention, layer.output):
            if isinstance(sub, (SkippedAttention, SkippedOutput)):
                _narrow_norm(sub.LayerNorm, idx)
                if sub.offset is not None:
                    sub.offset = _like(sub.offset, sub.offset[idx])
        if not isinstance(layer.attention, SkippedAttention):
            for name in ("query", "key", "value"):
                _narrow_linear(getattr(layer.attention.self, name), inp=idx)
            _narrow_linear(layer.attention.output.dense, out=idx)
            _narrow_norm(layer.attention.output.LayerNorm, idx)
        if not isinstance(layer.output, SkippedOutput):
            _narrow_linear(layer.intermediate.dense, inp=idx)
            _narrow_linear(layer.output.dense, out=idx)
            _narrow_norm(layer.output.LayerNorm, idx)
    if base.pooler is not None:
        _narrow_linear(base.pooler.dense, out=idx, inp=idx)
    classifier = getattr(model.model, "classifier", None)
    if classifier is not None:
        _narrow_linear(classifier, inp=idx)
    # The one uniform size; per-layer heads and FFN widths live on the modules, so the config's
    # num_attention_heads and intermediate_size keep describing the teacher.
    base.config.hidden_size = idx.numel()


def _narrow_linear(linear: nn.Linear, out: torch.Tensor | None = None, inp: torch.Tensor | None = None) -> None:
    weight = linear.weight
    if out is not None:
        weight = weight[out]
        if linear.bias is not None:
            linear.bias = _like(linear.bias, linear.bias[out])
        linear.out_features = out.numel()
    if inp is not None:
        weight = weight[:, inp]
        linear.in_features = inp.numel()
    linear.weight = _like(linear.weight, weight)


def _narrow_norm(norm: nn.LayerNorm, idx: torch.Tensor) -> None:
    if norm.weight is not None:
        norm.weight = _like(norm.weight, norm.weight[idx])
    if norm.bias is not None:
        norm.bias = _like(norm.bias, norm.bias[idx])
    norm.normalized_shape = (idx.numel(),)


def _like(param: nn.Parameter, value: torch.Tensor) -> nn.Parameter:
    """A new parameter holding `value`, frozen or trainable as `param` was."""
    return nn.Parameter(value.detach().clone(), requires_grad=param.requires_grad)
