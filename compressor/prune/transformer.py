"""The prunable structure of a Hugging Face BERT encoder (compressor.hf's HFEncoder / HFClassifier).

CoFi's granularities, per layer: the attention heads, the FFN intermediate dimensions, the whole
MHA sub-layer and the whole FFN sub-layer; and the hidden dimension shared by the embeddings and
every layer, where the model's output does not expose it (see `_hidden_prunable`).

Gating works through forward hooks on the Linear and LayerNorm modules (registered on entering
`gated`, removed on leaving), not on the attention module, so it does not depend on which
attention implementation (eager, sdpa) transformers picked. The cost model and the physical
shrink live in transformer_cost.py and transformer_shrink.py.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .structure import UnitGroup
from .transformer_shrink import SkippedAttention, SkippedOutput, shrink_bert

DEFAULT_SEQUENCE = 128


@dataclass(frozen=True)
class LayerNames:
    """The group names of one encoder layer ('' where its sub-layer is already removed)."""

    heads: str = ""
    mha: str = ""
    ffn_dims: str = ""
    ffn: str = ""


def discover_transformer(module: nn.Module, sequence: int = DEFAULT_SEQUENCE) -> TransformerStructure | None:
    """The structure of a BERT encoder or sequence classifier as compressor.hf loads it; None for
    any other module (a CNN, another architecture, a BERT variant whose attention differs)."""
    base = _bert_base(module)
    return None if base is None else TransformerStructure(module, sequence)


def _bert_base(module: nn.Module):
    """The wrapped BertModel when `module` is a BERT model this file understands, else None."""
    from ..hf import HFClassifier, HFEncoder

    if not isinstance(module, (HFEncoder, HFClassifier)):
        return None
    from transformers.models.bert import modeling_bert as mb

    inner = module.model
    if isinstance(module, HFClassifier):
        if not (isinstance(inner, mb.BertForSequenceClassification) and isinstance(inner.classifier, nn.Linear)):
            return None
        base = inner.bert
    else:
        base = inner
    if type(base) is not mb.BertModel or not isinstance(base.embeddings, mb.BertEmbeddings):
        return None
    config = base.config
    # Relative position embeddings and cross-attention add tensors on the head axis that the
    # hooks and the shrink here do not handle.
    if (getattr(config, "position_embedding_type", "absolute") != "absolute" or config.is_decoder
            or getattr(config, "add_cross_attention", False)):
        return None
    for layer in base.encoder.layer:
        if not isinstance(layer, mb.BertLayer):
            return None
        if not isinstance(layer.attention, (mb.BertAttention, SkippedAttention)):
            return None
        if isinstance(layer.attention, mb.BertAttention) and not isinstance(layer.attention.self, mb.BertSelfAttention):
            return None
        if not (isinstance(layer.output, SkippedOutput) or
                (isinstance(layer.intermediate, mb.BertIntermediate) and isinstance(layer.output, mb.BertOutput))):
            return None
    if base.pooler is not None and not isinstance(base.pooler, mb.BertPooler):
        return None
    return base


def _hidden_prunable(module: nn.Module) -> bool:
    """An encoder's output embedding IS the hidden state (pooled): its consumers expect that width
    and verification compares it with the teacher's by cosine, so its hidden dimension stays. A
    classifier's head maps the hidden state to fixed labels, so there it may shrink."""
    from ..hf import HFClassifier

    return isinstance(module, HFClassifier)


class TransformerStructure:
    """The compressor.prune.structure.Structure of a BERT encoder (see the module docstring)."""

    def __init__(self, model: nn.Module, sequence: int = DEFAULT_SEQUENCE):
        base = _bert_base(model)
        if base is None:
            raise ValueError(f"{type(model).__name__} is not a BERT encoder this structure understands")
        self.model = model
        self.sequence = sequence
        self.base = base
        self.hidden_size = base.embeddings.word_embeddings.embedding_dim
        self.groups: list[UnitGroup] = []
        self.layer_names: list[LayerNames] = []
        # where each encoder layer sits in `model` (its output: the hidden state that layerwise
        # distillation matches; full width, pruned dims zero, while gated)
        prefix = "model.bert" if base is not model.model else "model"
        self.layer_paths = [f"{prefix}.encoder.layer.{i}" for i in range(len(base.encoder.layer))]
        for i, layer in enumerate(base.encoder.layer):
            self.layer_names.append(self._layer_groups(i, layer))
        self._gating = 0  # open gated() contexts: their hooks must not leak into a shrunk copy
        self.hidden_name = ""
        if _hidden_prunable(model):
            self.hidden_name = "embeddings:hidden"
            # at least one head's width: narrower than that, a head's projections see too little
            head_dim = next((la.attention.self.attention_head_size for la in base.encoder.layer
                             if not isinstance(la.attention, SkippedAttention)), 1)
            self.groups.append(UnitGroup(self.hidden_name, "hidden", self.hidden_size,
                                         min_keep=min(head_dim, self.hidden_size), layer="embeddings"))

    def _layer_groups(self, i: int, layer: nn.Module) -> LayerNames:
        prefix, where = f"encoder.layer.{i}", f"layer {i}"
        names = {}
        if not isinstance(layer.attention, SkippedAttention):
            heads, mha = f"{prefix}.attention:heads", f"{prefix}.attention:mha_layer"
            self.groups += [UnitGroup(mha, "mha_layer", 1, 0, where, contains=(heads,)),
                            UnitGroup(heads, "heads", layer.attention.self.num_attention_heads, 0, where)]
            names.update(heads=heads, mha=mha)
        if not isinstance(layer.output, SkippedOutput):
            dims, ffn = f"{prefix}.ffn:ffn_dims", f"{prefix}.ffn:ffn_layer"
            self.groups += [UnitGroup(ffn, "ffn_layer", 1, 0, where, contains=(dims,)),
                            UnitGroup(dims, "ffn_dims", layer.intermediate.dense.out_features, 0, where)]
            names.update(ffn_dims=dims, ffn=ffn)
        return LayerNames(**names)

    # --- gated forward ------------------------------------------------------------------------

    @contextlib.contextmanager
    def gated(self, gates: dict[str, torch.Tensor]):
        """Forward passes multiply each unit by its gate (a group missing from `gates` is ungated).

        heads: each head's context vector, before the attention output projection; mha_layer: the
        projection's output, before dropout, residual and LayerNorm; ffn_dims: the intermediate
        activations; ffn_layer: the FFN output before the residual; hidden (CoFi): the embeddings
        output and every sub-layer output, with each LayerNorm normalizing over the kept dims only
        and zeroing the others, which is what the shrunk model's narrower LayerNorms compute."""
        handles = []
        hidden = gates.get(self.hidden_name) if self.hidden_name else None
        self._gating += 1
        try:
            for names, layer in zip(self.layer_names, self.base.encoder.layer):
                if names.heads:
                    handles += _gate_sublayer(layer.attention.output.dense, gates.get(names.heads),
                                              gates.get(names.mha), hidden,
                                              layer.attention.self.attention_head_size)
                if names.ffn:
                    handles += _gate_sublayer(layer.output.dense, gates.get(names.ffn_dims), gates.get(names.ffn),
                                              hidden, 1)
                if hidden is not None:
                    for norm in (layer.attention.LayerNorm if isinstance(layer.attention, SkippedAttention)
                                 else layer.attention.output.LayerNorm, layer.output.LayerNorm):
                        handles.append(norm.register_forward_hook(_masked_norm_hook(hidden, scale=False)))
            if hidden is not None:
                handles.append(self.base.embeddings.LayerNorm.register_forward_hook(_masked_norm_hook(hidden, True)))
                if self.base.pooler is not None:
                    handles.append(self.base.pooler.dense.register_forward_hook(_mask_output_hook(hidden)))
            yield self.model
        finally:
            for handle in handles:
                handle.remove()
            self._gating -= 1

    # --- cost and shrink ------------------------------------------------------------------------

    def expected_cost(self, counts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from .transformer_cost import expected_cost

        return expected_cost(self, counts)

    def shrink(self, keep: dict[str, torch.Tensor]) -> nn.Module:
        if self._gating:
            raise RuntimeError("shrink() inside gated(): the copy would keep the gating hooks")
        return shrink_bert(self, keep)

    def importance(self, batches: list[tuple[torch.Tensor, ...]], mask_at: int) -> dict[str, torch.Tensor] | None:
        """Each unit's share of its sub-layer's output on `batches` (transformer_refit.output_importance);
        None where the hidden dimension is prunable too (a classifier), which this does not rank."""
        from .transformer_refit import output_importance

        if self.hidden_name:
            return None
        return output_importance(self.model, self.base, self.layer_names, batches, mask_at)

    def refit(self, student: nn.Module, teacher: nn.Module, batches: list[tuple[torch.Tensor, ...]],
              mask_at: int) -> int:
        """Least-squares refit of the shrunk `student`'s sub-layer output projections to the
        `teacher`'s sub-layer outputs (transformer_refit.py) on `batches`; 0 (nothing changed) where
        the two are not layer for layer comparable (another depth, or the hidden dimension pruned)."""
        from .transformer_refit import refit_output_projections

        ours, theirs = _bert_base(student), _bert_base(teacher)
        if (ours is None or theirs is None or len(ours.encoder.layer) != len(theirs.encoder.layer)
                or ours.config.hidden_size != theirs.config.hidden_size):
            return 0
        return refit_output_projections(teacher, theirs, student, ours, batches, mask_at)


def _gate_sublayer(dense: nn.Linear, units, whole, hidden, unit_width: int) -> list:
    """Hooks on a sub-layer's output projection: `units` gate its input in blocks of `unit_width`
    (a head's context vector, an FFN dimension), `whole` and `hidden` its output."""
    handles = []
    if units is not None:
        def gate_input(_module, args):
            x = args[0]
            g = units.to(x.dtype)
            if unit_width > 1:
                return ((x.unflatten(-1, (-1, unit_width)) * g[:, None]).flatten(-2),) + args[1:]
            return (x * g,) + args[1:]
        handles.append(dense.register_forward_pre_hook(gate_input))
    if whole is not None or hidden is not None:
        def gate_output(_module, _args, out):
            if whole is not None:
                out = out * whole.to(out.dtype)
            return out * hidden.to(out.dtype) if hidden is not None else out
        handles.append(dense.register_forward_hook(gate_output))
    return handles


def _masked_norm_hook(hidden: torch.Tensor, scale: bool):
    """A LayerNorm's output recomputed over the hidden dims whose gate is not zero, the others zero;
    `scale`: multiplied by the gate as well (the embeddings output, where CoFi gates it)."""
    def hook(module: nn.LayerNorm, args, _out):
        x = args[0]
        kept = (hidden != 0).to(x.dtype)
        n = kept.sum()
        mean = (x * kept).sum(-1, keepdim=True) / n
        centered = (x - mean) * kept
        var = (centered * centered).sum(-1, keepdim=True) / n
        y = centered * torch.rsqrt(var + module.eps)
        if module.weight is not None:
            y = y * module.weight
        if module.bias is not None:
            y = y + module.bias
        return y * (hidden.to(x.dtype) if scale else kept)
    return hook


def _mask_output_hook(hidden: torch.Tensor):
    def hook(_module, _args, out):
        return out * (hidden != 0).to(out.dtype)
    return hook
