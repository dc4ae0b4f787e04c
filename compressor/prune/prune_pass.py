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
import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..artifacts import MODULE, Artifact
from ..distill import (DistillConfig, HookTaps, TrainingData, batched_outputs, fidelity_scorer, held_out_scorer,
                       matched_layer_loss, prediction_loss, prefer, train, training_split)
from ..distill.augment import AUGMENTATIONS, augmentation
from ..distill.padding import mask_index, padding_trimmer
from ..errors import CompressError
from ..evaluators import get_evaluator
from ..model_io import StaticBatchAdapter, first_output
from ..passes import Pass, PassResult, RunContext, register
from .budget import Budget, from_options
from .cofi import CofiSettings, check_reachable, choose_units, learn_gates
from .discover import discover
from .latency_model import onnx_latency
from .report import kept_chart, kept_table
from .structure import full_cost

# Learning rates of the weights by model family: (while the gates learn, in the fine-tune). The
# MNIST ResNet with Adam at 1e-3 while gates learnt: distillation loss 13 in the first epoch (the
# converged weights were wrecked before any gate closed); at 1e-4 the loss stays low. After the
# shrink, 3e-3 after a warmup (FAMILY_WARMUP). A pretrained Transformer needs CoFi's small rates throughout.
# A refit pruned MiniLM (transformer_refit.py) fine-tuned 30 steps from 0.70 held-out cosine: 0.753
# at 1e-4, 0.750 at 3e-4; the old 5e-5 was slower still.
FAMILY_LR = {"cnn": (1e-4, 3e-3), "transformer": (2e-5, 1e-4)}
# The fine-tune's learning-rate warmup (fraction of its steps) by family. The MNIST ResNet shrunk
# to 28% of its MACs, 10 fine-tune epochs (held-out top-1; validation KL to the teacher of the
# kept epoch): Adam at 1e-3 from the first step, 96.6% (KL 0.155); at 3e-3 after a 10% warmup,
# 97.6% (KL 0.051). At 1e-3 the inherited weights settled early (96.6% from epoch 6 on) where the
# same architecture from scratch went on to 97.5%; the larger rate lets them leave the pruned
# state, and the warmup keeps the first steps of a network that just lost 70% of its MACs sane.
FAMILY_WARMUP = {"cnn": 0.1, "transformer": 0.0}
# What ranks the units when the kept ones are chosen (cofi.choose_units): the learnt gates, or the
# structure's measured importance of each unit (its share of its sub-layer's output), where it has
# one. A pretrained Transformer's gates start clamped open, where the distillation gives them no
# gradient (and at the teacher's weights, none to any first-order sensitivity either), and fall
# alike under the Lagrangian: MiniLM after 46 gate steps had every gate at about 98%, so their
# order was noise and ours came no closer to the teacher than truncation to the first heads.
FAMILY_RANKING = {"cnn": "gates", "transformer": "importance"}
IMPORTANCE_SAMPLES = 256  # training samples that measure the units' importance


@dataclass
class PruneConfig(DistillConfig):
    sparsity: float | None = None  # fraction of the prunable parameters to remove
    macs_budget: float | None = None  # fraction of the teacher's MACs to keep
    latency_budget: float | None = None  # fraction of the teacher's latency on the target's runner
    prune_epochs: int = 4  # gate learning; `epochs` is the fine-tune after the shrink
    epochs: int = 10
    lr: float | None = None  # the fine-tune's; None: FAMILY_LR
    lr_warmup: float | None = None  # the fine-tune's; None: FAMILY_WARMUP
    prune_lr: float | None = None  # the weights' while the gates learn; None: FAMILY_LR
    augment: str = "auto"  # inputs the teacher labels on the fly: compressor.distill.augment
    # MNIST ResNet to 30% of its MACs, 4 + 10 epochs, held-out top-1 (teacher 98.3%): gate_lr /
    # lambda_lr 0.1 / 0.1: 97.1% (the gates reached 71% of the MACs, choose_units cut the rest by
    # their learnt order); 0.1 / 0.5 (6 epochs): 96.8%; 0.2 / 1.0: 96.2% (gates at the budget, but the
    # gated model's loss rose to 4). Single runs; about half a point apart from run to run. Either
    # way the shrunk model starts far below the gated one (sampled gates are not the deterministic
    # masks): before its fine-tune, 10% held-out at 0.1 / 0.1 (4 epochs, 72% expected MACs), 17% at
    # 0.5 / 0.5 (4 epochs, 43%), 40% at 0.2 / 1.0 (6 epochs, warmup 0.4: 28%, the budget reached).
    gate_lr: float = 0.1
    lambda_lr: float = 0.1
    warmup: float = 0.5  # fraction of the gate-learning steps over which the target tightens
    round_to: int = 8  # kept channel and FFN widths are multiples of this (wide groups only)
    layer_weight: float = 1.0  # CoFi's layerwise distillation, where the structure names its layers
    # training samples whose activations refit the shrunk model's output projections by least
    # squares before the fine-tune, where the structure can (transformer_refit.py); 0: no refit
    refit_samples: int = 1024
    patience: int = 10  # the fine-tune keeps its best epoch anyway; stopping at 2 cost 2 points (94.7%)

    def __post_init__(self):
        super().__post_init__()
        if self.prune_epochs < 1 or self.gate_lr <= 0 or self.lambda_lr <= 0 or self.round_to < 1 or self.layer_weight < 0:
            raise ValueError("prune_epochs must be >= 1, gate_lr and lambda_lr > 0, round_to >= 1, layer_weight >= 0")
        if self.refit_samples < 0:
            raise ValueError("refit_samples must be >= 0 (0: no least-squares refit)")
        if not 0 <= self.warmup <= 1:
            raise ValueError("warmup must be in [0, 1]")
        if self.prune_lr is not None and self.prune_lr <= 0:
            raise ValueError("prune_lr must be > 0")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got '{self.augment}'")
        self.budget()  # a budget outside (0, 1), or two of them, fails before any work

    def budget(self) -> Budget | None:
        return from_options(self.sparsity, self.macs_budget, self.latency_budget)


class BatchDistillation:
    """The distillation loss of a student on a batch of training samples, in both phases (the gated
    model, then the shrunk one): the prediction loss to the teacher's outputs and, for structures
    that name their layers, CoFi's layerwise loss (matched_layer_loss). The teacher runs on each
    batch where the inputs are augmented or its layer outputs are needed; otherwise its outputs
    are computed once for all samples."""

    def __init__(self, teacher, data: TrainingData, spec, cfg: "PruneConfig", layer_paths: list[str] | None):
        self.teacher, self.data, self.task, self.cfg = teacher, data, spec.task, cfg
        self.trim = padding_trimmer(spec)
        self.mask_at = mask_index(spec)  # padding positions stay out of the layerwise loss
        self.paths = layer_paths if cfg.layer_weight > 0 else None
        self.augment = augmentation(cfg.augment, data.train, cfg.seed)
        per_batch = self.augment is not None or bool(self.paths)
        self.outputs = None if per_batch else batched_outputs(teacher, data.train, cfg.batch)

    def _teacher(self, idx: torch.Tensor):
        batch = tuple(x[idx] for x in self.data.train)
        if self.augment is not None:
            batch = self.augment(batch)
        batch = self.trim(batch)
        if self.outputs is not None:
            return batch, self.outputs[idx], []
        with torch.no_grad(), HookTaps(self.teacher, self.paths or []) as taps:
            out = first_output(self.teacher(*batch)).float()
        return batch, out, [v.detach() for v in taps.values]

    def loss(self, student, idx: torch.Tensor, gating=None) -> torch.Tensor:
        batch, target, teacher_layers = self._teacher(idx)
        with HookTaps(student, self.paths or []) as taps, gating or contextlib.nullcontext():
            out = first_output(student(*batch))
        labels = self.data.labels[idx] if self.data.labels is not None else None
        value = prediction_loss(out, target, self.task, self.cfg, labels)
        layers = taps.values
        # a student of another hidden width (a classifier's hidden pruned) has no comparable layers
        if teacher_layers and any(s.shape == teacher_layers[0].shape for s in layers):
            tokens = batch[self.mask_at] if self.mask_at is not None else None
            value = value + self.cfg.layer_weight * matched_layer_loss(layers, teacher_layers, tokens)
        return value


def sample_batches(data: TrainingData, spec, batch: int, samples: int) -> list[tuple[torch.Tensor, ...]]:
    """The first `samples` training samples in batches, each batch's trailing padding cut."""
    trim, samples = padding_trimmer(spec), min(samples, data.samples)
    return [trim(tuple(x[s:min(s + batch, samples)] for x in data.train)) for s in range(0, samples, batch)]


def refit_projections(structure, student, teacher, data: TrainingData, spec, cfg: "PruneConfig", score) -> dict | None:
    """The structure's least-squares refit of the shrunk `student` (where it has one and the inputs
    carry an attention mask) on the first `cfg.refit_samples` training samples, padding trimmed per
    batch. Kept only where it brings the student closer to the teacher on the validation slice."""
    refit, mask_at = getattr(structure, "refit", None), mask_index(spec)
    samples = min(cfg.refit_samples, data.samples)
    if refit is None or mask_at is None or samples == 0:
        return None
    batches = sample_batches(data, spec, cfg.batch, samples)
    before, saved = score(student), copy.deepcopy(student.state_dict())
    projections = refit(student, teacher, batches, mask_at)
    after = score(student)
    kept, why = prefer(after, before)
    if not kept:
        student.load_state_dict(saved)
    return {"projections": projections, "samples": samples, "before": before.as_dict(), "after": after.as_dict(),
            "kept": kept, "why": why}


@register
class PrunePass(Pass):
    name = "prune"
    takes = (MODULE,)
    returns = MODULE
    needs_calibration = True
    trains = True
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
        lr_warmup = cfg.lr_warmup if cfg.lr_warmup is not None else FAMILY_WARMUP[family]
        full = {k: float(v) for k, v in full_cost(structure).items()}

        keep_fraction, latency_model = budget.keep_fraction, None
        if budget.kind == "latency":
            from .latency_model import fit_latency_model

            latency_model = fit_latency_model(structure, family, spec, ctx, tuple(x[:1] for x in data.val))
            keep_fraction = latency_model.macs_fraction_for(budget.value)
        check_reachable(structure, budget.cost, keep_fraction)
        ctx.progress.log(f"  {family}: {len(structure.groups)} prunable groups, budget {budget.describe()} "
                         f"(keep {keep_fraction:.1%} of {budget.cost})")

        teacher = ctx.reference.module
        metric_name, evaluate = get_evaluator(None, spec.task)
        score = fidelity_scorer(data.val, batched_outputs(teacher, data.val, cfg.batch), evaluate, cfg.batch,
                                spec.task, cfg.temperature)
        model = structure.model
        model.eval()  # dropout off, nothing left in BatchNorm to update: distillation from a converged teacher
        distillation = BatchDistillation(teacher, data, spec, cfg, getattr(structure, "layer_paths", None))

        def gated_loss(idx: torch.Tensor, gates: dict[str, torch.Tensor]) -> torch.Tensor:
            return distillation.loss(model, idx, structure.gated(gates))

        settings = CofiSettings(epochs=cfg.prune_epochs, batch=cfg.batch, lr=prune_lr, gate_lr=cfg.gate_lr,
                                lambda_lr=cfg.lambda_lr, warmup=cfg.warmup, round_to=cfg.round_to, seed=cfg.seed)
        checkpoints = ctx.checkpoints
        gates, gate_history = learn_gates(structure, gated_loss, data.samples, budget.cost, keep_fraction, settings,
                                          ctx.progress, checkpoints / "gates.pt" if checkpoints else None,
                                          cfg.checkpoint_every)
        ranking = None
        if FAMILY_RANKING[family] == "importance" and mask_index(spec) is not None:
            ranking = structure.importance(sample_batches(data, spec, cfg.batch, IMPORTANCE_SAMPLES), mask_index(spec))
        ranked_by = "gates" if ranking is None else "importance"
        keep, kept = choose_units(structure, gates.probabilities(), budget.cost, keep_fraction, cfg.round_to, ranking)
        counts = {name: torch.tensor(float(mask.sum())) for name, mask in keep.items()}
        after = {k: float(v) for k, v in structure.expected_cost(counts).items()}
        ctx.progress.log(f"  kept {after['params'] / full['params']:.1%} of the prunable parameters, "
                         f"{after['macs'] / full['macs']:.1%} of the MACs")

        student = structure.shrink(keep)
        student.eval()
        refit = refit_projections(structure, student, teacher, data, spec, cfg, score)
        if refit:
            ctx.progress.log(f"  least-squares refit of {refit['projections']} output projections on "
                             f"{refit['samples']} samples: validation metric {refit['before']['val_metric']:.4f} -> "
                             f"{refit['after']['val_metric']:.4f} ({'kept' if refit['kept'] else 'not kept'})")
        before_finetune = score(student)

        history = train(student, data.samples, lambda idx: distillation.loss(student, idx), score,
                        dataclasses.replace(cfg, lr=lr, lr_warmup=lr_warmup), ctx.progress, label="fine-tune",
                        checkpoint=checkpoints / "finetune.pt" if checkpoints else None) if cfg.epochs else []
        teacher_metric, held_out_metric = held_out_scorer(ctx.data, teacher, evaluate, cfg.batch)
        pruned_metric = held_out_metric(student)
        ctx.progress.log(f"  {metric_name} on held-out: teacher {teacher_metric:.4f}, pruned {pruned_metric:.4f}")
        latency, runtime = onnx_latency({"teacher": teacher, "pruned": student}, spec, tuple(x[:1] for x in data.val), ctx)
        speedup = latency["teacher"] / latency["pruned"]
        ctx.progress.log(f"  FP32 latency, 1 thread ({runtime}): teacher {latency['teacher']:.3f} ms, pruned "
                         f"{latency['pruned']:.3f} ms ({speedup:.2f}x{' faster' if speedup > 1 else ': NOT faster'})")
        rows = kept_table(structure, keep)
        kept_chart(rows, workdir / "kept.png", f"{family} pruned to {budget.describe()}: units kept per group")

        metrics = {
            "pruned": True, "family": family, "budget": {"kind": budget.kind, "value": budget.value,
                                                          "keep_fraction": keep_fraction, "cost": budget.cost},
            "params": {"before": full["params"], "after": after["params"]},
            "macs": {"before": full["macs"], "after": after["macs"]},
            "kept_fraction": kept, "ranked_by": ranked_by, "metric_name": metric_name,
            "teacher_metric": teacher_metric, "pruned_metric": pruned_metric,
            "validation": {"before_finetune": before_finetune.as_dict(), "after_finetune": score(student).as_dict()},
            "refit": refit,
            "structure": rows, "chart": "kept.png",
            "latency_fp32": {"runtime": runtime, "threads": 1, "teacher_ms": latency["teacher"],
                             "pruned_ms": latency["pruned"], "speedup": speedup},
            "gate_history": gate_history, "finetune_history": history,
            "finetune": {"epochs": cfg.epochs, "lr": lr, "lr_warmup": lr_warmup},
            "training_samples": data.samples, "validation_samples": int(data.val[0].shape[0]),
        }
        if latency_model is not None:
            metrics["latency_model"] = latency_model.as_dict()
        static = getattr(structure, "static_batch", None)
        module = StaticBatchAdapter(student, static) if static else student
        meta = {**artifact.meta, "pruned": True}
        return PassResult(Artifact(MODULE, spec, artifact.fingerprint, module=module, meta=meta), metrics)
