"""The `distill` pass: knowledge-distillation fine-tune of the incoming student module towards the
run's teacher (the model as loaded), on the recipe's training samples (its calibration samples
unless it sets training_samples) less a validation slice.

The student is any module: a pruned network, a searched architecture, or the teacher itself
(self-distillation after an earlier pass changed it). It is trained in aten graph form, as the
quantize pass trains, so the same feature tap finds the input of the last weighted layer in
teacher and student. The feature loss is normalised MSE where the two features have one shape,
else the width-independent sample-relation loss (a narrower student cannot match values).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..artifacts import MODULE, Artifact
from ..capture import to_graph_module, without_inplace_ops
from ..evaluators import get_evaluator
from ..model_io import StaticBatchAdapter, first_output
from ..passes import Pass, PassResult, RunContext, register
from .config import DistillConfig
from .fidelity import batched_outputs, fidelity_scorer
from .losses import feature_loss, prediction_loss, relation_loss
from .loop import train
from .split import training_split
from .taps import tap_last_weighted_input, tapped_features


@dataclass
class DistillPassConfig(DistillConfig):
    epochs: int = 3
    lr: float = 1e-4


def _tapped_shape(student, tap, inputs: tuple[torch.Tensor, ...]) -> torch.Size:
    with torch.no_grad():
        student(*(x[:1] for x in inputs))
    return tap.value.shape[1:]


@register
class DistillPass(Pass):
    name = "distill"
    takes = (MODULE,)
    returns = MODULE
    needs_calibration = True
    trains = True
    Config = DistillPassConfig

    def run(self, artifact: Artifact, ctx: RunContext, workdir: Path) -> PassResult:
        cfg, spec = self.config, artifact.spec
        data = training_split(ctx.data, cfg, self.name)
        metric_name, evaluate = get_evaluator(None, spec.task)
        teacher = ctx.reference.module
        student, static = to_graph_module(artifact.module, spec)
        without_inplace_ops(student)
        teacher_train = batched_outputs(teacher, data.train, cfg.batch)
        score = fidelity_scorer(data.val, batched_outputs(teacher, data.val, cfg.batch), evaluate, cfg.batch,
                                spec.task, cfg.temperature)

        tap = feats = None
        if cfg.feature_weight > 0:
            feats = tapped_features(to_graph_module(teacher, spec)[0], data.train, cfg.batch)
            tap = tap_last_weighted_input(student) if feats is not None else None
        same_shape = feats is not None and tap is not None and _tapped_shape(student, tap, data.train) == feats.shape[1:]
        match = feature_loss if same_shape else (lambda s, t: relation_loss(s[0], t[0]))

        def loss(idx: torch.Tensor) -> torch.Tensor:
            out = first_output(student(*(x[idx] for x in data.train)))
            labels = data.labels[idx] if data.labels is not None else None
            value = prediction_loss(out, teacher_train[idx], spec.task, cfg, labels)
            if tap is not None:
                value = value + cfg.feature_weight * match([tap.value], [feats[idx]])
            return value

        before = score(student)
        checkpoint = ctx.checkpoints / "distill.pt" if ctx.checkpoints else None
        history = train(student, data.samples, loss, score, cfg, ctx.progress, label="distill",
                        checkpoint=checkpoint) if cfg.epochs else []
        after = score(student)
        ctx.progress.log(f"  {metric_name} vs teacher on the validation slice: {before.metric:.4f} -> {after.metric:.4f}")
        metrics = {"metric_name": metric_name, "training_samples": data.samples, "validation_samples": data.val[0].shape[0],
                   "before": before.as_dict(), "after": after.as_dict(), "history": history,
                   "feature_loss": "none" if tap is None else "normalised_mse" if same_shape else "sample_relations"}
        module = StaticBatchAdapter(student, static) if static else student
        return PassResult(Artifact(MODULE, spec, artifact.fingerprint, module=module, meta=dict(artifact.meta)), metrics)
