"""The `distill` pass: knowledge-distillation fine-tune of the incoming student module towards the
run's teacher (the model as loaded), on the recipe's training samples (its calibration samples
unless it sets training_samples) less a validation slice.

The student is any module: a pruned network, a searched architecture, or the teacher itself
(self-distillation after an earlier pass changed it). It is trained in aten graph form, as the
quantize pass trains, so the same feature tap finds the input of the last weighted layer in
teacher and student. The feature loss is normalised MSE where the two features have one shape,
else the width-independent sample-relation loss (a narrower student cannot match values).
Image inputs are shifted on each batch and labelled by the teacher there (`augment`, as the prune
pass): a searched student trained on the fixed samples learns them, not the teacher.
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
from .augment import AUGMENTATIONS, augmentation, resolve
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
    augment: str = "auto"  # inputs the teacher labels on the fly: compressor.distill.augment

    def __post_init__(self):
        super().__post_init__()
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got '{self.augment}'")


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
        shift = augmentation(cfg.augment, data.train, cfg.seed)
        score = fidelity_scorer(data.val, batched_outputs(teacher, data.val, cfg.batch), evaluate, cfg.batch,
                                spec.task, cfg.temperature)

        tap = teacher_tap = teacher_shape = None
        teacher_run = teacher
        if cfg.feature_weight > 0:
            teacher_run = to_graph_module(teacher, spec)[0]
            teacher_tap = tap_last_weighted_input(teacher_run)
            tap = tap_last_weighted_input(student) if teacher_tap is not None else None
        if tap is not None:
            with torch.no_grad():
                teacher_run(*(x[:1] for x in data.train))
            teacher_shape = teacher_tap.value.shape[1:]
        same_shape = tap is not None and _tapped_shape(student, tap, data.train) == teacher_shape
        match = feature_loss if same_shape else (lambda s, t: relation_loss(s[0], t[0]))
        # the teacher's targets: once for all samples, or on each batch where the inputs are augmented
        fixed = None if shift is not None else (
            batched_outputs(teacher, data.train, cfg.batch),
            tapped_features(teacher_run, data.train, cfg.batch) if tap is not None else None)

        def targets(idx: torch.Tensor):
            batch = tuple(x[idx] for x in data.train)
            if fixed is not None:
                return batch, fixed[0][idx], fixed[1][idx] if tap is not None else None
            batch = shift(batch)
            with torch.no_grad():
                out = first_output(teacher_run(*batch)).float()
            return batch, out, teacher_tap.value if tap is not None else None

        def loss(idx: torch.Tensor) -> torch.Tensor:
            batch, target, feats = targets(idx)
            out = first_output(student(*batch))
            labels = data.labels[idx] if data.labels is not None else None
            value = prediction_loss(out, target, spec.task, cfg, labels)
            if tap is not None:
                value = value + cfg.feature_weight * match([tap.value], [feats])
            return value

        before = score(student)
        checkpoint = ctx.checkpoints / "distill.pt" if ctx.checkpoints else None
        history = train(student, data.samples, loss, score, cfg, ctx.progress, label="distill",
                        checkpoint=checkpoint) if cfg.epochs else []
        after = score(student)
        ctx.progress.log(f"  {metric_name} vs teacher on the validation slice: {before.metric:.4f} -> {after.metric:.4f}")
        metrics = {"metric_name": metric_name, "training_samples": data.samples, "validation_samples": data.val[0].shape[0],
                   "before": before.as_dict(), "after": after.as_dict(), "history": history,
                   "feature_loss": "none" if tap is None else "normalised_mse" if same_shape else "sample_relations",
                   "augmentation": resolve(cfg.augment, data.train), "labels": bool(
                       data.labels is not None and spec.task == "classification" and cfg.label_weight > 0)}
        module = StaticBatchAdapter(student, static) if static else student
        return PassResult(Artifact(MODULE, spec, artifact.fingerprint, module=module, meta=dict(artifact.meta)), metrics)
