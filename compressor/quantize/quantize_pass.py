"""The `quantize` pass: calibrate (PTQ), analyse sensitivity, then quantization-aware distillation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import native
from ..artifacts import MODULE, Artifact
from ..capture import to_graph_module
from ..errors import CompressError, VerificationError
from ..evaluators import get_evaluator
from ..model_io import StaticBatchAdapter
from ..passes import Pass, PassResult, RunContext, register
from .calibrate import AUTO, batched_outputs, calibrate
from .fakequant import fake_quants
from .graph import fold_batchnorm, insert_fake_quants
from .observers import OBSERVERS
from .qad import QadSettings, add_feature_tap, distill
from .scheme import QuantScheme
from .sensitivity import analyse, output_error, set_layers


@dataclass
class QuantizeConfig:
    observer: str = ""  # "" = the target profile's default; "auto" = the best on the validation slice
    epochs: int = 2
    lr: float = 1e-5  # fine-tuning a converged model: 1e-4 (Adam) measurably undid the calibration
    batch: int = 64
    temperature: float = 4.0
    kd_weight: float = 1.0
    label_weight: float = 0.0
    feature_weight: float = 0.0
    patience: int = 1
    val_fraction: float = 0.1
    keep_float: int = 0  # keep the N most sensitive layers in the target's higher precision
    # keep more of the most sensitive layers (beyond keep_float) until the quantized model's metric
    # on the validation slice is within this of the teacher's; None = the target profile's
    # quantization.accuracy_budget (0 where its engine runs no float Conv/Linear), 0 = off
    accuracy_budget: float | None = None
    sensitivity_samples: int = 128
    collapse_drop: float = 0.05  # fail, without an engine, when the metric drops more than this
    seed: int = 0

    def __post_init__(self):
        if self.observer and self.observer not in (*OBSERVERS, AUTO):
            raise ValueError(f"observer must be one of {', '.join(OBSERVERS)} or {AUTO}, got '{self.observer}'")
        if self.epochs < 0 or self.batch < 1 or self.lr <= 0 or self.temperature <= 0:
            raise ValueError("epochs must be >= 0, batch >= 1, lr and temperature > 0")
        if not 0 < self.val_fraction < 1 or self.keep_float < 0 or self.sensitivity_samples < 1:
            raise ValueError("val_fraction must be in (0, 1), keep_float >= 0, sensitivity_samples >= 1")
        if self.accuracy_budget is not None and not 0 <= self.accuracy_budget < 1:
            raise ValueError("accuracy_budget must be in [0, 1): a metric drop such as 0.005 (half a point)")


@register
class QuantizePass(Pass):
    name = "quantize"
    takes = (MODULE,)
    returns = MODULE
    version = "1"
    needs_calibration = True
    Config = QuantizeConfig

    def run(self, artifact: Artifact, ctx: RunContext, workdir: Path) -> PassResult:
        cfg, data, spec = self.config, ctx.data, artifact.spec
        if data.num_calib < cfg.batch:
            raise CompressError(f"calibration recipe '{data.recipe}' gives {data.num_calib} calibration samples, "
                                f"fewer than one batch ({cfg.batch}); add samples or set quantize.batch lower")
        scheme = QuantScheme.from_target(ctx.target)
        observer = cfg.observer or scheme.observer
        metric_name, evaluate = get_evaluator(None, spec.task)

        student, static = to_graph_module(artifact.module, spec)
        folded = fold_batchnorm(student)
        placed = insert_fake_quants(student, scheme)
        if not placed.layers:
            raise CompressError("the model has no op this target can quantize (Conv, Linear, MatMul, Add)")
        teacher = ctx.reference.module

        n_val = max(1, int(data.num_calib * cfg.val_fraction))
        gen = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(data.num_calib, generator=gen)
        train = tuple(x[order[n_val:]] for x in data.calib)
        val = tuple(x[order[:n_val]] for x in data.calib)
        labels = data.calib_labels[order[n_val:]] if data.calib_labels is not None else None
        teacher_train = batched_outputs(teacher, train, cfg.batch)
        teacher_val = batched_outputs(teacher, val, cfg.batch)
        teacher_hold = batched_outputs(teacher, data.holdout, cfg.batch)
        hold_labels = data.holdout_labels.numpy() if data.holdout_labels is not None else None

        def held_out_metric(model) -> float:
            return evaluate(batched_outputs(model, data.holdout, cfg.batch).numpy(), teacher_hold.numpy(), hold_labels)["metric"]

        ctx.progress.log(f"  {len(placed.layers)} layers quantized ({scheme.name}), {folded} BatchNorm folded, "
                         f"{len(placed.float_ops)} ops stay float; observer {observer}")
        def validation_score(model) -> tuple[float, float]:
            # The task metric first; the distance to the teacher breaks ties (agreement saturates).
            out = batched_outputs(model, val, cfg.batch)
            return evaluate(out.numpy(), teacher_val.numpy(), None)["metric"], -output_error(out, teacher_val)

        observer, ranges, trials = calibrate(student, train, observer, cfg.batch, ctx.progress, validation_score)
        if trials:
            ctx.progress.log("  observer " + ", ".join(f"{k} {v[0]:.4f}" for k, v in trials.items()) + f": {observer}")
        sens_inputs = tuple(x[: cfg.sensitivity_samples] for x in train)
        table = analyse(student, placed.layers, sens_inputs, teacher_train[: cfg.sensitivity_samples], evaluate,
                        cfg.batch, ctx.progress)
        budget = scheme.accuracy_budget if cfg.accuracy_budget is None else cfg.accuracy_budget
        kept = _keep_float(student, placed.layers, table, cfg, budget, validation_score,
                           evaluate(teacher_val.numpy(), teacher_val.numpy(), None)["metric"], ctx)
        teacher_metric = evaluate(teacher_hold.numpy(), teacher_hold.numpy(), hold_labels)["metric"]
        ptq_metric = held_out_metric(student)
        ctx.progress.log(f"  {metric_name}: teacher {teacher_metric:.4f}, PTQ {ptq_metric:.4f}")

        tap = teacher_features = None
        if cfg.feature_weight > 0:
            teacher_graph, _ = to_graph_module(teacher, spec)
            teacher_tap = add_feature_tap(teacher_graph)
            tap = add_feature_tap(student)
            if teacher_tap is not None and tap is not None:
                feats = []
                with torch.no_grad():
                    for s in range(0, train[0].shape[0], cfg.batch):
                        teacher_graph(*(x[s:s + cfg.batch] for x in train))
                        feats.append(teacher_tap.value)
                teacher_features = torch.cat(feats)
        settings = QadSettings(cfg.epochs, cfg.lr, cfg.batch, cfg.temperature, cfg.kd_weight, cfg.label_weight,
                               cfg.feature_weight, cfg.patience, cfg.seed)
        history = distill(student, teacher_train, train, labels, validation_score, spec.task, settings,
                          ctx.progress, teacher_features, tap) if cfg.epochs else []
        qad_metric = held_out_metric(student)
        ctx.progress.log(f"  {metric_name}: QAD {qad_metric:.4f}")

        metrics = {
            "scheme": scheme.name, "observer": observer, "native_kernels": native.backend(),
            "bn_folded": folded, "quantized_layers": len(placed.layers), "float_ops": placed.float_ops,
            "kept_float": kept, "accuracy_budget": budget, "keep_float_dtype": scheme.keep_float_dtype, "metric_name": metric_name,
            "teacher_metric": teacher_metric, "ptq_metric": ptq_metric, "qad_metric": qad_metric,
            "qad_history": history, "sensitivity": table, "calibration_samples": train[0].shape[0],
            "validation_samples": n_val, "activation_ranges": ranges,
            "observer_trials": {k: {"val_metric": v[0], "val_output_error": -v[1]} for k, v in trials.items()},
        }
        if teacher_metric - qad_metric > cfg.collapse_drop:
            error = VerificationError(
                f"quantized {metric_name} collapsed: teacher {teacher_metric:.4f}, QAD {qad_metric:.4f} "
                f"(drop > {cfg.collapse_drop}); see the sensitivity table in the report, try --keep-float N")
            error.metrics = metrics
            raise error
        for _, fq in fake_quants(student):
            fq.observer = None
        module = StaticBatchAdapter(student, static) if static else student
        meta = {"precision": "int8", "scheme": scheme.name, "float_ops": placed.float_ops, "kept_float": kept}
        return PassResult(Artifact(MODULE, spec, artifact.fingerprint, module=module, meta=meta), metrics)


def _keep_float(student, layers, table: list[dict], cfg: QuantizeConfig, budget: float, score, teacher_val_metric: float,
                ctx: RunContext) -> list[str]:
    """The `keep_float` most sensitive layers, then, under an accuracy budget, as many more (most
    sensitive first) as it takes for the validation metric to be within the budget."""
    everything = {layer.node for layer in layers}
    count = min(cfg.keep_float, len(table))
    while True:
        kept = [row["layer"] for row in table[:count]]
        set_layers(student, layers, everything - set(kept))
        if not budget or count == len(table):
            return kept
        drop = teacher_val_metric - score(student)[0]
        if drop <= budget:
            ctx.progress.log(f"  accuracy budget {budget}: validation drop {drop:.4f} "
                             f"with {count} layer(s) kept in higher precision")
            return kept
        count += 1
