"""Parameters and MACs of a BERT encoder as a differentiable function of its expected kept units.

`params` counts the encoder layers only (embeddings excluded, as CoFi and the pruning budgets
count "encoder parameters"); `embedding_params` and `head_params` (pooler, classifier) are
reported beside it. `macs` counts the multiply-accumulates of the encoder layers' matmuls per
sample at the structure's sequence length (Q/K/V/O projections, attention scores and context,
the two FFN projections); additions, softmax, GELU and LayerNorm are not counted, and `head_macs`
gives the pooler's and classifier's. At full counts, `params` equals the encoder layers' numel
and, at 0/1 counts, the shrunk model's (a removed sub-layer keeps its LayerNorm, and its output
bias when only its units went: transformer_shrink.Skipped*).
"""
from __future__ import annotations

import torch

from .transformer_shrink import SkippedAttention


def expected_cost(structure, counts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    base, S = structure.base, float(structure.sequence)

    def count(name: str, full: int) -> torch.Tensor:
        value = counts.get(name) if name else None
        return torch.as_tensor(float(full)) if value is None else value.reshape(())

    d = count(structure.hidden_name, structure.hidden_size)
    params = macs = torch.zeros(())
    for names, layer in zip(structure.layer_names, base.encoder.layer):
        if names.heads:
            dh = layer.attention.self.attention_head_size
            width = count(names.heads, layer.attention.self.num_attention_heads) * dh  # kept heads x head dim
            mha = count(names.mha, 1)
            # Q, K, V (weights and biases), O (weights and its bias)
            params = params + mha * (4 * width * d + 3 * width + d)
            macs = macs + mha * (4 * S * width * d + 2 * S * S * width)
        elif isinstance(layer.attention, SkippedAttention) and layer.attention.offset is not None:
            params = params + d  # its output projection's bias
        f = count(names.ffn_dims, layer.intermediate.dense.out_features if names.ffn_dims else 0)
        if names.ffn:
            ffn = count(names.ffn, 1)
            params = params + ffn * (2 * f * d + f + d)
            macs = macs + ffn * 2 * S * f * d
        elif layer.output.offset is not None:
            params = params + d
        params = params + 2 * 2 * d  # the two LayerNorms stay whatever goes
    emb = base.embeddings
    rows = sum(e.num_embeddings for e in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings))
    embedding_params = rows * d + 2 * d
    head_params = head_macs = torch.zeros(())
    if base.pooler is not None:
        head_params = head_params + d * d + d
        head_macs = head_macs + d * d
    classifier = getattr(structure.model.model, "classifier", None)
    if classifier is not None:
        head_params = head_params + d * classifier.out_features + classifier.out_features
        head_macs = head_macs + d * classifier.out_features
    return {"params": params, "macs": macs, "embedding_params": embedding_params,
            "head_params": head_params, "head_macs": head_macs}
