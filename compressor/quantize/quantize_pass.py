"""The `quantize` pass: calibrate (PTQ), analyse sensitivity, then quantization-aware distillation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from .. import native
from ..artifacts import MODULE, Artifact
from ..capture import to_graph_module
from ..errors import CompressError, VerificationError
from ..evaluators import get_evaluator
from ..distill import DistillConfig, batched_outputs, fidelity_scorer, held_out_scorer, split_validation
from ..model_io import StaticBatchAdapter
from ..passes import Pass, PassResult, RunContext, register
from .calibrate import AUTO, calibrate
from .fakequant import fake_quants
from .graph import fold_batchnorm, insert_fake_quants
from .observers import OBSERVERS
from .qad import quantization_aware_distill
from .scheme import QuantScheme
from .sensitivity import analyse, set_layers


@dataclass
class QuantizeConfig(DistillConfig):
    """The distillation options (compressor.distill.DistillConfig), with QAD's defaults, and the
    quantization's own."""

    lr: float = 1e-5  # fine-tuning a converged model: 1e-4 (Adam) measurably undid the calibration
    observer: str = ""  # "" = the target profile's default; "auto" = the best on the validation slice
    keep_float: int = 0  # keep the N most sensitive layers in the target's higher precision
    # keep more of the most sensitive layers (beyond keep_float) until the quantized model's metric
    # on the validation slice is within this of the teacher's; None = the target profile's
    # quantization.accuracy_budget (0 where its engine runs no float Conv/Linear), 0 = off
    accuracy_budget: float | None = None
    sensitivity_samples: int = 128
    collapse_drop: float = 0.05  # fail, without an engine, when the metric drops more than this

    def __post_init__(self):
        super().__post_init__()
        if self.observer and self.observer not in (*OBSERVERS, AUTO):
            raise ValueError(f"observer must be one of {', '.join(OBSERVERS)} or {AUTO}, got '{self.observer}'")
        if self.keep_float < 0 or self.sensitivity_samples < 1:
            raise ValueError("keep_float must be >= 0, sensitivity_samples >= 1")
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

        split = split_validation(data.calib, data.calib_labels, cfg.val_fraction, cfg.seed)
        train, val, labels, n_val = split.train, split.val, split.labels, split.val[0].shape[0]
        teacher_train = batched_outputs(teacher, train, cfg.batch)
        teacher_val = batched_outputs(teacher, val, cfg.batch)
        teacher_metric, held_out_metric = held_out_scorer(data, teacher, evaluate, cfg.batch)

        ctx.progress.log(f"  {len(placed.layers)} layers quantized ({scheme.name}), {folded} BatchNorm folded, "
                         f"{len(placed.float_ops)} ops stay float; observer {observer}")
        validation_score = fidelity_scorer(val, teacher_val, evaluate, cfg.batch)

        observer, ranges, trials = calibrate(student, train, observer, cfg.batch, ctx.progress, validation_score)
        if trials:
            ctx.progress.log("  observer " + ", ".join(f"{k} {v.metric:.4f}" for k, v in trials.items()) + f": {observer}")
        sens_inputs = tuple(x[: cfg.sensitivity_samples] for x in train)
        table = analyse(student, placed.layers, sens_inputs, teacher_train[: cfg.sensitivity_samples], evaluate,
                        cfg.batch, ctx.progress)
        budget = scheme.accuracy_budget if cfg.accuracy_budget is None else cfg.accuracy_budget
        kept = _keep_float(student, placed.layers, table, cfg, budget, validation_score,
                           evaluate(teacher_val.numpy(), teacher_val.numpy(), None)["metric"], ctx)
        ptq_metric = held_out_metric(student)
        ctx.progress.log(f"  {metric_name}: teacher {teacher_metric:.4f}, PTQ {ptq_metric:.4f}")

        teacher_graph = to_graph_module(teacher, spec)[0] if cfg.feature_weight > 0 else None
        history = quantization_aware_distill(student, teacher_train, train, labels, validation_score, spec.task, cfg,
                                             ctx.progress, teacher_graph) if cfg.epochs else []
        qad_metric = held_out_metric(student)
        ctx.progress.log(f"  {metric_name}: QAD {qad_metric:.4f}")

        metrics = {
            "scheme": scheme.name, "observer": observer, "native_kernels": native.backend(),
            "bn_folded": folded, "quantized_layers": len(placed.layers), "float_ops": placed.float_ops,
            "kept_float": kept, "accuracy_budget": budget, "keep_float_dtype": scheme.keep_float_dtype, "metric_name": metric_name,
            "teacher_metric": teacher_metric, "ptq_metric": ptq_metric, "qad_metric": qad_metric,
            "qad_history": history, "sensitivity": table, "calibration_samples": train[0].shape[0],
            "validation_samples": n_val, "activation_ranges": ranges,
            "observer_trials": {k: v.as_dict() for k, v in trials.items()},
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
        drop = teacher_val_metric - score(student).metric
        if drop <= budget:
            ctx.progress.log(f"  accuracy budget {budget}: validation drop {drop:.4f} "
                             f"with {count} layer(s) kept in higher precision")
            return kept
        count += 1
