"""Task-agnostic supernet training: MiniLM's self-attention distillation of the teacher's last
layer into the last layer of sampled subnets (the sandwich rule: the sub-space's largest and
smallest subnet and a few random ones per step, their losses averaged), on the training text;
for an embedding encoder, plus the normalised MSE of the sentence embedding (cfg.output_weight).

compressor.distill's loop runs it: Adam with a cosine schedule, the best epoch kept by the
validation score (the mean fidelity of the sub-space's smallest, middle and largest subnets on
the validation text), progress, a history and an optional checkpoint to resume from.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from ...distill import Fidelity, TrainingData, normalised_mse, train
from ...progress import Progress
from .config import AutoDistilConfig, settings
from .select import FidelityScorer, relation_heads, subnet_loss, teacher_targets
from .space import SubSpace, candidates, sandwich
from .supernet import Supernet


def train_supernet(teacher, data: TrainingData, space: SubSpace, cfg: AutoDistilConfig | None = None,
                   progress: Progress | None = None, checkpoint: Path | None = None) -> tuple[Supernet, list[dict]]:
    """A supernet for `space`, started from the teacher's weights and trained for `cfg.epochs` on
    `data.train` (`data.val` picks the best epoch). Returns it with the per-epoch history."""
    cfg, progress = settings(cfg), progress or Progress(quiet=True)
    teacher = teacher.eval()
    supernet = Supernet(teacher)
    specs = candidates(space, supernet.dims)
    heads = relation_heads(supernet, specs, cfg.relation_heads)
    probes = sorted({specs[0], specs[len(specs) // 2], specs[-1]})
    scorer = FidelityScorer(teacher, supernet, data.val, heads, cfg.batch)
    rng = random.Random(cfg.seed)

    output_weight = cfg.output_weight if scorer.embedding else 0.0

    def one(spec, target) -> torch.Tensor:
        relation, out = subnet_loss(supernet, spec, target, heads)
        return relation + output_weight * normalised_mse(out, target.output) if output_weight else relation

    def loss(idx: torch.Tensor) -> torch.Tensor:
        target = teacher_targets(teacher, supernet, tuple(x[idx] for x in data.train))
        picks = sandwich(space, supernet.dims, rng, cfg.random_subnets)
        return torch.stack([one(spec, target) for spec in picks]).mean()

    def score(_module) -> Fidelity:
        rows = [scorer(spec) for spec in probes]
        relation = sum(r["relation_loss"] for r in rows) / len(rows)
        # the supernet keeps the epoch whose probe subnets are closest to the teacher's relations (the
        # divergence decides; samples=0: the score, a mean cosine, is not a proportion to veto with)
        return Fidelity(sum(r["score"] for r in rows) / len(rows), relation, relation)

    progress.log(f"  autodistil: supernet '{space.name}' ({len(specs)} subnets, {specs[0].describe()} to "
                 f"{specs[-1].describe()}), {heads} relation heads, {cfg.epochs} epochs on {data.samples} samples")
    history = train(supernet, data.samples, loss, score, cfg, progress, label=f"supernet {space.name}",
                    checkpoint=checkpoint) if cfg.epochs else []
    return supernet, history
