"""What a subnet costs, without building its weights: the prune package's BERT cost model
(compressor.prune.transformer_cost) run on the subnet's meta-device skeleton.

    params                 every parameter of the standalone student (embeddings included: what
                           the model file holds)
    encoder_params         the encoder layers' (transformer_cost's `params`)
    macs                   per sample at `sequence` tokens: the encoder layers' matmuls, plus the
                           pooler and classifier of a sequence classifier (an embedding encoder's
                           pooler is never run)
    peak_activation_bytes  FP32, batch 1: the largest set of tensors one layer holds at once (an
                           estimate from the shapes, not a measurement)
"""
from __future__ import annotations

from torch import nn

from ...prune.structure import full_cost
from ...prune.transformer import TransformerStructure
from .space import SubnetSpec
from .supernet import student_skeleton

FP32_BYTES = 4


def subnet_cost(teacher: nn.Module, spec: SubnetSpec, sequence: int) -> dict[str, int]:
    skeleton = student_skeleton(teacher, spec)
    cost = {k: float(v) for k, v in full_cost(TransformerStructure(skeleton, sequence)).items()}
    macs = cost["macs"] + (cost["head_macs"] if not hasattr(skeleton, "pooling") else 0.0)
    s, h = sequence, spec.hidden
    # attention: the residual input, Q, K, V and the heads' score matrices; FFN: its input and the
    # intermediate activations (before and after the activation function)
    attention = s * h + 3 * s * h + spec.heads * s * s
    ffn = s * h + 2 * s * spec.ffn
    return {"params": sum(p.numel() for p in skeleton.parameters()), "encoder_params": int(cost["params"]),
            "macs": int(macs), "peak_activation_bytes": FP32_BYTES * max(attention, ffn)}
