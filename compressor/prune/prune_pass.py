"""The `prune` pass: CoFi structured pruning to a budget, then a distillation fine-tune of the
physically smaller model. Its output is an ordinary module with fewer channels, heads, FFN
dimensions, blocks or layers, which the rest of the pipeline quantizes and lowers as usual.

    1. discover the model's structure (discover.py); none: the model passes on unchanged
    2. check the budget is reachable at all (every group at its minimum), before any training
    3. learn hard-concrete gates and the weights together under the Lagrangian (cofi.py)
    4. choose the kept units to meet the budget exactly, widths rounded to multiples of `round_to`
    5. shrink physically, then fine-tune the small model against the teacher (compressor.distill)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..artifacts import MODULE, Artifact
from ..distill import (DistillConfig, HookTaps, batched_outputs, fidelity_scorer, matched_layer_loss, prediction_loss,
                       train, training_split)
from ..distill.augment import AUGMENTATIONS, augmentation
from ..errors import CompressError
from ..evaluators import get_evaluator
from ..model_io import StaticBatchAdapter, first_output
from ..passes import Pass, PassResult, RunContext, register
from .budget import Budget, from_options
from .cofi import CofiSettings, check_reachable, choose_units, learn_gates
from .discover import discover
from .latency_model import onnx_latency
from .report import kept_chart, kept_table
from .structure import full_counts

# Learning rates of the weights by model family: (while the gates learn, in the fine-tune). The
# MNIST ResNet with Adam at 1e-3 while gates learnt: distillation loss 13 in the first epoch (the
# converged weights were wrecked before any gate closed); at 1e-4 the loss stays low. After the
# shrink, 1e-3 recovers fastest. A pretrained Transformer needs CoFi's small rates throughout.
FAMILY_LR = {"cnn": (1e-4, 1e-3), "transformer": (2e-5, 5e-5)}


@dataclass
class PruneConfig(DistillConfig):
    sparsity: float | None = None  # fraction of the prunable parameters to remove
    macs_budget: float | None = None  # fraction of the teacher's MACs to keep
    latency_budget: float | None = None  # fraction of the teacher's latency on the target's runner
    prune_epochs: int = 4  # gate learning; `epochs` is the fine-tune after the shrink
    epochs: int = 10
    lr: float | None = None  # the fine-tune's; None: FAMILY_LR
    prune_lr: float | None = None  # the weights' while the gates learn; None: FAMILY_LR
    augment: str = "auto"  # inputs the teacher labels on the fly: compressor.distill.augment
    # MNIST ResNet to 30% of its MACs, 4 + 10 epochs, held-out top-1 (teacher 98.3%): gate_lr /
    # lambda_lr 0.1 / 0.1: 97.1% (the gates reached 71% of the MACs, choose_units cut the rest by
    # their learnt order); 0.1 / 0.5 (6 epochs): 96.8%; 0.2 / 1.0: 96.2% (gates at the budget, but the
    # gated model's loss rose to 4). Single runs; about half a point apart from run to run.
    gate_lr: float = 0.1
    lambda_lr: float = 0.1
    warmup: float = 0.5  # fraction of the gate-learning steps over which the target tightens
    round_to: int = 8  # kept channel and FFN widths are multiples of this (wide groups only)
    layer_weight: float = 1.0  # CoFi's layerwise distillation, where the structure names its layers
    patience: int = 10  # the fine-tune keeps its best epoch anyway; stopping at 2 cost 2 points (94.7%)

    def __post_init__(self):
        super().__post_init__()
        if self.prune_epochs < 1 or self.gate_lr <= 0 or self.lambda_lr <= 0 or self.round_to < 1 or self.layer_weight < 0:
            raise ValueError("prune_epochs must be >= 1, gate_lr and lambda_lr > 0, round_to >= 1, layer_weight >= 0")
        if not 0 <= self.warmup <= 1:
            raise ValueError("warmup must be in [0, 1]")
        if self.prune_lr is not None and self.prune_lr <= 0:
            raise ValueError("prune_lr must be > 0")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got '{self.augment}'")
        self.budget()  # a budget outside (0, 1), or two of them, fails before any work

    def budget(self) -> Budget | None:
        return from_options(self.sparsity, self.macs_budget, self.latency_budget)


class TeacherOnBatches:
    """What the teacher says about each training batch: its outputs (computed once for all samples,
    or per batch on augmented inputs) and, for CoFi's layerwise loss where the structure names its
    layers, its layer outputs, to compare with the student's (matched_layer_loss)."""

    def __init__(self, teacher, inputs: tuple[torch.Tensor, ...], outputs: torch.Tensor, paths: list[str] | None,
                 layer_weight: float, augment):
        self.teacher, self.inputs, self.outputs, self.augment = teacher, inputs, outputs, augment
        self.paths, self.weight = (paths if layer_weight > 0 else None), layer_weight
        self.teacher_layers: list[torch.Tensor] = []
        self.student_taps: HookTaps | None = None

    def batch(self, idx: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        batch = tuple(x[idx] for x in self.inputs)
        if self.augment is not None:
            batch = self.augment(batch)
        if self.augment is None and not self.paths:
            return batch, self.outputs[idx]
        with torch.no_grad(), contextlib.ExitStack() as stack:
            taps = stack.enter_context(HookTaps(self.teacher, self.paths)) if self.paths else None
            out = first_output(self.teacher(*batch)).float()
            if taps is not None:
                self.teacher_layers = [v.detach() for v in taps.values]
        return batch, (out if self.augment is not None else self.outputs[idx])

    @contextlib.contextmanager
    def tap(self, student):
        if not self.paths:
            yield
            return
        with HookTaps(student, self.paths) as taps:
            self.student_taps = taps
            try:
                yield
            finally:
                self.student_taps = None

    def layer_loss(self) -> torch.Tensor | float:
        if not self.paths or self.student_taps is None:
            return 0.0
        student = self.student_taps.values
        if not any(s.shape == self.teacher_layers[0].shape for s in student):
            return 0.0  # a student of another hidden width: its layers are not comparable
        return self.weight * matched_layer_loss(student, self.teacher_layers)


@register
class PrunePass(Pass):
    name = "prune"
    takes = (MODULE,)
    returns = MODULE
    needs_calibration = True
    Config = PruneConfig

    def run(self, artifact: Artifact, ctx: RunContext, workdir: Path) -> PassResult:
        cfg, spec = self.config, artifact.spec
        budget = cfg.budget()
        if budget is None:
            raise CompressError("pass 'prune' needs a budget: --sparsity S, --macs-budget F or --latency-budget F "
                                "(or prune.sparsity / macs_budget / latency_budget in the pipeline TOML)")
        data = training_split(ctx.data, cfg, self.name)
        found = discover(artifact.module, spec, tuple(x[:1] for x in data.train))
        if found is None:
            ctx.progress.log("  no prunable structure found: the model passes on unchanged")
            return PassResult(artifact, {"pruned": False, "reason": "no prunable structure (channels, heads, FFN, "
                                                                   "blocks or layers) found in the model"})
        family, structure = found
        prune_lr = cfg.prune_lr if cfg.prune_lr is not None else FAMILY_LR[family][0]
        lr = cfg.lr if cfg.lr is not None else FAMILY_LR[family][1]
        full = {k: float(v) for k, v in structure.expected_cost(full_counts(structure)).items()}

        keep_fraction, latency_model = budget.keep_fraction, None
        if budget.kind == "latency":
            from .latency_model import fit_latency_model

            latency_model = fit_latency_model(structure, family, spec, ctx, tuple(x[:1] for x in data.val))
            keep_fraction = latency_model.macs_fraction_for(budget.value)
        check_reachable(structure, budget.cost, keep_fraction, {k: torch.tensor(v) for k, v in full.items()})
        ctx.progress.log(f"  {family}: {len(structure.groups)} prunable groups, budget {budget.describe()} "
                         f"(keep {keep_fraction:.1%} of {budget.cost})")

        teacher = ctx.reference.module
        metric_name, evaluate = get_evaluator(None, spec.task)
        teacher_train = batched_outputs(teacher, data.train, cfg.batch)
        teacher_val = batched_outputs(teacher, data.val, cfg.batch)
        score = fidelity_scorer(data.val, teacher_val, evaluate, cfg.batch)
        model = structure.model
        model.eval()  # dropout off, nothing left in BatchNorm to update: distillation from a converged teacher

        teacher_on = TeacherOnBatches(teacher, data.train, teacher_train, getattr(structure, "layer_paths", None),
                                      cfg.layer_weight, augmentation(cfg.augment, data.train, cfg.seed))

        def gated_loss(idx: torch.Tensor, gates: dict[str, torch.Tensor]) -> torch.Tensor:
            batch, target = teacher_on.batch(idx)
            with teacher_on.tap(model), structure.gated(gates):
                out = first_output(model(*batch))
                extra = teacher_on.layer_loss()
            return extra + prediction_loss(out, target, spec.task, cfg,
                                           data.labels[idx] if data.labels is not None else None)

        settings = CofiSettings(epochs=cfg.prune_epochs, batch=cfg.batch, lr=prune_lr, gate_lr=cfg.gate_lr,
                                lambda_lr=cfg.lambda_lr, warmup=cfg.warmup, round_to=cfg.round_to, seed=cfg.seed)
        checkpoints = ctx.checkpoints
        gates, gate_history = learn_gates(structure, gated_loss, data.samples, budget.cost, keep_fraction, settings,
                                          ctx.progress, checkpoints / "gates.pt" if checkpoints else None)
        keep, kept = choose_units(structure, gates.probabilities(), budget.cost, keep_fraction, cfg.round_to)
        counts = {name: torch.tensor(float(mask.sum())) for name, mask in keep.items()}
        after = {k: float(v) for k, v in structure.expected_cost(counts).items()}
        ctx.progress.log(f"  kept {after['params'] / full['params']:.1%} of the prunable parameters, "
                         f"{after['macs'] / full['macs']:.1%} of the MACs")

        student = structure.shrink(keep)
        student.eval()
        before_finetune = score(student)

        def loss(idx: torch.Tensor) -> torch.Tensor:
            batch, target = teacher_on.batch(idx)
            with teacher_on.tap(student):
                out = first_output(student(*batch))
                extra = teacher_on.layer_loss()
            return extra + prediction_loss(out, target, spec.task, cfg,
                                           data.labels[idx] if data.labels is not None else None)

        finetune = DistillConfig(epochs=cfg.epochs, lr=lr, batch=cfg.batch, temperature=cfg.temperature,
                                 kd_weight=cfg.kd_weight, label_weight=cfg.label_weight, patience=cfg.patience,
                                 val_fraction=cfg.val_fraction, seed=cfg.seed)
        history = train(student, data.samples, loss, score, finetune, ctx.progress, label="fine-tune",
                        checkpoint=checkpoints / "finetune.pt" if checkpoints else None) if cfg.epochs else []
        held = self._held_out(ctx, student, teacher, evaluate, cfg.batch)
        ctx.progress.log(f"  {metric_name} on held-out: teacher {held['teacher']:.4f}, pruned {held['pruned']:.4f}")
        latency, runtime = onnx_latency({"teacher": teacher, "pruned": student}, spec, tuple(x[:1] for x in data.val), ctx)
        ctx.progress.log(f"  FP32 latency, 1 thread ({runtime}): teacher {latency['teacher']:.3f} ms, "
                         f"pruned {latency['pruned']:.3f} ms ({latency['teacher'] / latency['pruned']:.2f}x faster)")
        rows = kept_table(structure, keep)
        kept_chart(rows, workdir / "kept.png", f"{family} pruned to {budget.describe()}: units kept per group")

        metrics = {
            "pruned": True, "family": family, "budget": {"kind": budget.kind, "value": budget.value,
                                                          "keep_fraction": keep_fraction, "cost": budget.cost},
            "params": {"before": full["params"], "after": after["params"]},
            "macs": {"before": full["macs"], "after": after["macs"]},
            "kept_fraction": kept, "metric_name": metric_name,
            "teacher_metric": held["teacher"], "pruned_metric": held["pruned"],
            "validation": {"before_finetune": before_finetune.as_dict(), "after_finetune": score(student).as_dict()},
            "structure": rows, "chart": "kept.png",
            "latency_fp32": {"runtime": runtime, "threads": 1, "teacher_ms": latency["teacher"],
                             "pruned_ms": latency["pruned"], "speedup": latency["teacher"] / latency["pruned"]},
            "gate_history": gate_history, "finetune_history": history,
            "training_samples": data.samples, "validation_samples": int(data.val[0].shape[0]),
        }
        if latency_model is not None:
            metrics["latency_model"] = latency_model.as_dict()
        static = getattr(structure, "static_batch", None)
        module = StaticBatchAdapter(student, static) if static else student
        meta = {**artifact.meta, "pruned": True}
        return PassResult(Artifact(MODULE, spec, artifact.fingerprint, module=module, meta=meta), metrics)

    @staticmethod
    def _held_out(ctx: RunContext, student, teacher, evaluate, batch: int) -> dict[str, float]:
        data = ctx.data
        labels = data.holdout_labels.numpy() if data.holdout_labels is not None else None
        reference = batched_outputs(teacher, data.holdout, batch).numpy()
        pruned = batched_outputs(student, data.holdout, batch).numpy()
        return {"teacher": evaluate(reference, reference, labels)["metric"],
                "pruned": evaluate(pruned, reference, labels)["metric"]}
