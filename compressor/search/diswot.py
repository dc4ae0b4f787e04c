"""DisWOT scoring (Dong et al., "DisWOT: Student Architecture Search for Distillation WithOut
Training", CVPR 2023): how well a candidate student will distil from the teacher, predicted from
both networks at random initialisation, with no training.

    semantic similarity  the (K, K) similarity of the class activation maps of the last feature map
                         (compressor.distill.losses.class_activation_maps / class_similarity)
    relation similarity  the batch's (N, N) sample-relation Gram matrix of the last feature map,
                         centred (compressor.distill.losses.sample_relations, relation_distance)

The score is minus the sum of the two distances (higher is better). A teacher without a classifier
head (no final Linear giving class scores) is scored on relation similarity alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..distill.losses import class_activation_maps, class_similarity, relation_distance, sample_relations
from ..errors import CompressError
from .features import FeatureReader, feature_reader


@dataclass
class Similarities:
    semantic: float | None  # distance of the class-activation similarity matrices (None: not used)
    relation: float  # distance of the sample-relation matrices

    @property
    def score(self) -> float:
        return -(self.relation + (self.semantic or 0.0))


def _read(reader: FeatureReader, inputs: tuple[torch.Tensor, ...], chunk: int | None, semantic: bool):
    """Features (N, C, ...) and class activation maps (N, K, positions) over `inputs`, `chunk`
    samples at a time where the network runs only at that batch."""
    step = chunk or inputs[0].shape[0]
    feats, maps = [], []
    for s in range(0, inputs[0].shape[0] - step + 1, step):
        with torch.enable_grad():
            f, logits = reader(tuple(x[s:s + step] for x in inputs))
            maps.append(class_activation_maps(f, logits).detach() if semantic else None)
        feats.append(f.detach())
    return torch.cat(feats), (torch.cat(maps) if semantic else None)


class DiswotScorer:
    def __init__(self, teacher_at_init: nn.Module, inputs: tuple[torch.Tensor, ...], example: tuple[torch.Tensor, ...],
                 classification: bool, chunk: int | None = None):
        reader = feature_reader(teacher_at_init, example, classification)
        if reader is None:
            raise CompressError("search: the teacher has no conv or linear layer with a feature map before it; "
                                "DisWOT has nothing to compare")
        self.inputs, self.example, self.chunk = inputs, example, chunk
        self.semantic = reader.has_classifier
        feats, maps = _read(reader, inputs, chunk, self.semantic)
        self.relations = sample_relations(feats)
        self.classes = class_similarity(maps) if self.semantic else None

    def __call__(self, candidate: nn.Module, shapes: dict | None = None) -> Similarities:
        """`shapes`: the candidate graph's node shapes where known (saves a run)."""
        reader = feature_reader(candidate, self.example, self.semantic, shapes)
        if reader is None:
            raise CompressError("search: a candidate has no feature map before its last layer")
        semantic = self.semantic and reader.has_classifier
        feats, maps = _read(reader, self.inputs, self.chunk, semantic)
        relation = float(relation_distance(sample_relations(feats), self.relations))
        sem = float(((class_similarity(maps) - self.classes) ** 2).mean()) if semantic else None
        return Similarities(sem, relation)
