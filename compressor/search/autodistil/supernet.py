"""The weight-sharing supernet: one copy of the teacher's weights that runs any subnet.

A subnet runs as a plain, smaller Hugging Face module (its "skeleton": the teacher's classes
with a smaller BertConfig, built once per spec on the meta device, so it holds no memory) called
with `torch.func.functional_call` on views of the shared weights: every tensor sliced to the
skeleton's shape from index 0 (the first layers, hidden dims, heads and FFN dims). The gradients
of all subnets land on the one shared copy, the largest subnet is the teacher itself, and the
extracted student (extract.py) is the same skeleton holding copies of the same slices, so it
computes exactly what the supernet computed for it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ...errors import CompressError
from ...prune.transformer import discover_transformer
from ...prune.transformer_shrink import SkippedAttention, SkippedOutput
from .space import SubnetSpec, TeacherDims

QKV = ("query", "key", "value")


def teacher_dims(teacher: nn.Module) -> tuple[TeacherDims, str]:
    """The teacher's sizes and where its layers sit ("model.encoder.layer"); a clear error for a
    model AutoDistil cannot slice."""
    structure = discover_transformer(teacher)
    if structure is None:
        raise CompressError(f"AutoDistil searches BERT-family encoders loaded from a Hugging Face folder "
                            f"(absolute positions, no cross-attention); got {type(teacher).__name__}")
    base, config = structure.base, structure.base.config
    for i, layer in enumerate(base.encoder.layer):
        if isinstance(layer.attention, SkippedAttention) or isinstance(layer.output, SkippedOutput):
            raise CompressError(f"AutoDistil needs a uniform teacher: layer {i} lost a sub-layer (pruned?)")
        sa = layer.attention.self
        if (sa.num_attention_heads != config.num_attention_heads or sa.all_head_size != config.hidden_size
                or layer.intermediate.dense.out_features != config.intermediate_size):
            raise CompressError(f"AutoDistil needs a uniform teacher: layer {i} has {sa.num_attention_heads} heads and "
                                f"FFN {layer.intermediate.dense.out_features}, the config says "
                                f"{config.num_attention_heads} and {config.intermediate_size} (pruned?)")
    dims = TeacherDims(layers=len(base.encoder.layer), hidden=config.hidden_size, heads=config.num_attention_heads,
                       ffn=config.intermediate_size, hidden_fixed=not structure.hidden_name)
    return dims, structure.layer_paths[0].rsplit(".", 1)[0]


def student_config(teacher: nn.Module, spec: SubnetSpec):
    """The teacher's Hugging Face config with the subnet's sizes."""
    config = copy.deepcopy(teacher.model.config)
    config.num_hidden_layers = spec.layers
    config.hidden_size = spec.hidden
    config.num_attention_heads = spec.heads
    config.intermediate_size = spec.ffn
    return config


def student_skeleton(teacher: nn.Module, spec: SubnetSpec, device: str | torch.device = "meta") -> nn.Module:
    """A module of the teacher's classes (wrapper and Hugging Face model) with the subnet's sizes;
    on the meta device it holds no weights (the supernet passes its own)."""
    with torch.device(device):
        model = type(teacher.model)(student_config(teacher, spec))
    model.eval()
    if hasattr(teacher, "pooling"):  # compressor.hf.HFEncoder
        wrapper = type(teacher)(model, teacher.pooling, teacher.normalize)
    else:
        wrapper = type(teacher)(model)
    if hasattr(teacher, "max_sequence"):
        wrapper.max_sequence = teacher.max_sequence
    return wrapper.eval()


def sliced(tensors: dict[str, torch.Tensor], skeleton: nn.Module) -> dict[str, torch.Tensor]:
    """Views of `tensors` cut to the skeleton's parameter and buffer shapes, each from index 0."""
    out = {}
    for name, target in (*skeleton.named_parameters(), *skeleton.named_buffers()):
        source = tensors[name]
        if source.dim() != target.dim() or any(t > s for t, s in zip(target.shape, source.shape)):
            raise ValueError(f"{name}: the subnet's {tuple(target.shape)} is not a slice of {tuple(source.shape)}")
        out[name] = source[tuple(slice(0, n) for n in target.shape)]
    return out


class Supernet(nn.Module):
    """The teacher's weights, shared by every subnet (trainable); `forward(spec, *inputs)` runs one."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.dims, self.layer_prefix = teacher_dims(teacher)
        self.shared = copy.deepcopy(teacher).eval()
        for p in self.shared.parameters():
            p.requires_grad_(True)
        self._skeletons: dict[SubnetSpec, nn.Module] = {}  # a plain dict: not submodules, not in state_dict

    def skeleton(self, spec: SubnetSpec) -> nn.Module:
        if spec not in self._skeletons:
            self.check(spec)
            self._skeletons[spec] = student_skeleton(self.shared, spec)
        return self._skeletons[spec]

    def check(self, spec: SubnetSpec) -> None:
        d = self.dims
        if not (1 <= spec.layers <= d.layers and 1 <= spec.ffn <= d.ffn and 1 <= spec.heads <= d.heads
                and spec.hidden == spec.heads * d.head_dim):
            raise ValueError(f"{spec} is not a subnet of the teacher ({d.layers} layers, {d.heads} heads of "
                             f"{d.head_dim}, FFN {d.ffn})")
        if d.hidden_fixed and spec.hidden != d.hidden:
            raise ValueError(f"{spec}: this encoder's output is its hidden state, which keeps width {d.hidden}")

    def weights(self, spec: SubnetSpec) -> dict[str, torch.Tensor]:
        tensors = dict(self.shared.named_parameters())
        tensors.update(self.shared.named_buffers())
        return sliced(tensors, self.skeleton(spec))

    def forward(self, spec: SubnetSpec, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.skeleton(spec), self.weights(spec), inputs)

    def qkv_paths(self, layers: int) -> list[str]:
        """Where the last layer's Q, K and V projections of a `layers`-layer subnet (or the teacher) sit."""
        return [f"{self.layer_prefix}.{layers - 1}.attention.self.{name}" for name in QKV]
