"""Distillation losses. All are scale-free, so their weights mean the same across models."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import native


def logit_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch mean (the fused native kernel
    where it is built, PyTorch's composite otherwise)."""
    return native.kd_loss(student, teacher, temperature)


def normalised_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error relative to the teacher's energy: embeddings and features of any scale."""
    return ((student - teacher) ** 2).mean() / (teacher ** 2).mean().clamp_min(1e-12)


def prediction_loss(student: torch.Tensor, teacher: torch.Tensor, task: str, cfg,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
    """The loss on the model's output: logit KL for classifiers (plus label cross-entropy where
    labels exist and `cfg.label_weight` asks for it), normalised MSE for any other output."""
    if task != "classification":
        return cfg.kd_weight * normalised_mse(student, teacher)
    loss = cfg.kd_weight * logit_kl(student, teacher, cfg.temperature)
    if labels is not None and cfg.label_weight > 0:
        loss = loss + cfg.label_weight * F.cross_entropy(student, labels)
    return loss


def feature_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean normalised MSE over matched (student, teacher) intermediate features of equal shape
    (a pass that changes widths projects its student features first)."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"feature_loss needs matched, non-empty feature lists, got {len(student)} and {len(teacher)}")
    return torch.stack([normalised_mse(s, t) for s, t in zip(student, teacher)]).mean()


def sample_relations(features: torch.Tensor) -> torch.Tensor:
    """The batch's sample-relation matrix (N, N): Gram matrix of the flattened features centred over
    the batch, rows L2-normalised. Independent of the feature width, so a narrower student compares
    with its teacher directly. Centring matters: features after a ReLU are all positive, so
    uncentred every sample's row is nearly the same vector and two networks' relations differed
    by about 1e-4, whatever the networks."""
    flat = features.reshape(features.shape[0], -1).float()
    centred = flat - flat.mean(dim=0, keepdim=True)
    return F.normalize(centred @ centred.T, dim=1)


def relation_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Between two sample-relation matrices: per sample, the squared distance of its two relation
    rows (unit vectors, so in [0, 4]), averaged over the samples; the same scale at any batch size.
    MNIST networks at initialisation: 0.1 to 0.3; unrelated random features about 0.5."""
    return ((student - teacher) ** 2).sum(dim=1).mean()


def relation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Distance between the sample relations of student and teacher features (DisWOT's relation
    similarity, as a loss): 0 when both order the batch's samples alike, whatever their widths."""
    return relation_distance(sample_relations(student), sample_relations(teacher))


def standardised_mse(student: torch.Tensor, teacher: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per feature dimension (last axis) in units of the teacher's spread along
    that dimension, over the positions `tokens` keeps (a (batch, sequence) mask; None: all). A
    BERT hidden state has a few dimensions hundreds of times larger than the rest: plain normalised
    MSE is about those few; standardised, every dimension counts alike. Padding positions carry
    nothing the pooled output uses, so they are left out."""
    if tokens is not None:
        keep = tokens.bool()
        student, teacher = student[keep], teacher[keep]
    student, teacher = student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
    spread = teacher.std(dim=0, keepdim=True).clamp_min(1e-3) if teacher.shape[0] > 1 else teacher.abs().clamp_min(1e-3)
    return (((student - teacher) / spread) ** 2).mean()


def matched_layer_loss(student: list[torch.Tensor], teacher: list[torch.Tensor],
                       tokens: torch.Tensor | None = None) -> torch.Tensor:
    """CoFi's layerwise distillation: each teacher layer's output is matched to the student layer
    closest to it (standardised MSE over the positions `tokens` keeps), matches moving forward
    through the student only, so a pruned student whose early layers lost their sub-layers lets
    later layers take over their role. Layers of another width than the teacher's are not
    comparable and are left out."""
    comparable = [s for s in student if s.shape == teacher[0].shape]
    if not comparable or not teacher:
        raise ValueError("matched_layer_loss needs student layers of the teacher layers' shape")
    losses, first = [], 0
    for t in teacher:
        distances = torch.stack([standardised_mse(s, t, tokens) for s in comparable[first:]])
        best = int(distances.detach().argmin())
        losses.append(distances[best])
        first += best
    return torch.stack(losses).mean()


def self_attention_relation_loss(student: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                                 teacher: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                                 attention_mask: torch.Tensor, relation_heads: int) -> torch.Tensor:
    """MiniLM's self-attention distillation of one layer (AutoDistil's task-agnostic loss): KL of
    the teacher's attention distributions softmax(QK^T/sqrt(d)) to the student's, plus KL of the
    value relations softmax(VV^T/sqrt(d)). `student` and `teacher` are that layer's (Q, K, V)
    projections, (batch, tokens, width) each; both widths are split into `relation_heads` equal
    heads (MiniLMv2's relation heads), so a student with fewer or narrower heads compares directly.
    Padding tokens (mask 0) are neither attended to nor averaged over."""
    keep = attention_mask.to(student[0].dtype)
    key_bias = (1.0 - keep)[:, None, None, :] * -1e4  # (batch, 1, 1, keys)
    rows = keep[:, None, :].expand(-1, relation_heads, -1)  # (batch, heads, queries)

    def log_relation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n, t, width = a.shape
        if width % relation_heads:
            raise ValueError(f"width {width} does not split into {relation_heads} relation heads")
        a = a.reshape(n, t, relation_heads, -1).transpose(1, 2)
        b = b.reshape(n, t, relation_heads, -1).transpose(1, 2)
        scores = a @ b.transpose(-1, -2) / a.shape[-1] ** 0.5
        return torch.log_softmax(scores.float() + key_bias, dim=-1)

    total = torch.zeros((), device=student[0].device)
    for s_pair, t_pair in (((student[0], student[1]), (teacher[0], teacher[1])),
                           ((student[2], student[2]), (teacher[2], teacher[2]))):
        log_s, log_t = log_relation(*s_pair), log_relation(*t_pair).detach()
        kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (batch, heads, queries)
        total = total + (kl * rows).sum() / rows.sum().clamp_min(1.0)
    return total


def class_activation_maps(features: torch.Tensor, logits: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Grad-CAM-style maps (N, K, positions) of a feature map (N, C, ...) for every class of `logits`
    (N, K): per position, the gradient of the class score times the feature, summed over channels.
    With a pooled linear head the gradient is the classifier's weights (over the positions), so this
    is the class activation map; any other head gives its input-dependent Grad-CAM weights."""
    flat = features.reshape(features.shape[0], features.shape[1], -1)
    maps = []
    for k in range(logits.shape[1]):
        (grad,) = torch.autograd.grad(logits[:, k].sum(), features, retain_graph=True, create_graph=create_graph)
        maps.append((grad.reshape_as(flat) * flat).sum(dim=1))
    return torch.stack(maps, dim=1)


def class_similarity(maps: torch.Tensor) -> torch.Tensor:
    """The (K, K) similarity of the class activation maps (N, K, positions), per sample with rows
    L2-normalised, averaged over the batch: independent of the feature width and resolution's scale."""
    unit = F.normalize(maps, dim=2)
    return (unit @ unit.transpose(1, 2)).mean(dim=0)


def semantic_loss(student_features: torch.Tensor, student_logits: torch.Tensor, teacher_features: torch.Tensor,
                  teacher_logits: torch.Tensor) -> torch.Tensor:
    """Distance between the class-activation similarity matrices of student and teacher (DisWOT's
    semantic similarity, as a loss): 0 when both relate the classes' evidence alike. Differentiable
    in the student (its maps are built with create_graph); the teacher's are constants."""
    student = class_similarity(class_activation_maps(student_features, student_logits, create_graph=True))
    teacher = class_similarity(class_activation_maps(teacher_features, teacher_logits)).detach()
    return ((student - teacher) ** 2).mean()
