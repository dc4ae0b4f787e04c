"""The `quantize` pass: calibrate (PTQ), analyse sensitivity, then quantization-aware distillation."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path


from .. import native
from ..distill import prefer
from ..artifacts import MODULE, Artifact
from ..capture import to_graph_module
from ..datafree.source import SYNTHETIC
from ..errors import CompressError, VerificationError
from ..evaluators import get_evaluator
from ..distill import DistillConfig, batched_outputs, fidelity_scorer, held_out_scorer, split_validation
from ..model_io import StaticBatchAdapter
from ..passes import Pass, PassResult, RunContext, register
from .bias_correction import apply_shifts, expected_shifts
from .budget import UNMET, float_cost, keep_float
from .calibrate import AUTO, calibrate
from .converts import insert_converts
from .equalize import equalize_weights
from .fakequant import OFF, WIDE, fake_quants
from .graph import fold_batchnorm, insert_fake_quants
from .observers import OBSERVERS
from .qad import quantization_aware_distill
from .scheme import QuantScheme
from .sensitivity import analyse

EQUALIZE = ("auto", "on", "off")  # quantize.equalize: cross-layer equalisation


@dataclass
class QuantizeConfig(DistillConfig):
    """The distillation options (compressor.distill.DistillConfig), with QAD's defaults, and the
    quantization's own."""

    lr: float = 1e-5  # fine-tuning a converged model: 1e-4 (Adam) measurably undid the calibration
    epochs: int = 3
    patience: int = 2  # one noisy epoch does not end it (MNIST ResNet, jetson: KL up at epoch 1, 22% below PTQ at 3)
    # The LSQ scales' learning rate relative to lr. Adam steps every parameter by about lr whatever
    # its gradient, and a weight's scale is ~1/127 of the weight: at the weights' lr the scales moved
    # ~100x more, relatively, and QAD ended further from the teacher than PTQ on both MNIST samples
    # (MobileNet, jetson: KL 0.00122 -> 0.00155 after 2 epochs; at 0.01: 0.00122 -> 0.00072 after 3)
    scale_lr_factor: float = 0.01
    observer: str = ""  # "" = the target profile's default; "auto" = the best on the validation slice
    keep_float: int = 0  # keep the N most sensitive layers in the target's higher precision
    # keep more of the most sensitive layers (beyond keep_float) until the quantized model's top-1
    # agreement with the teacher on the validation slice is within this of 1; None = the target
    # profile's quantization.accuracy_budget (0 where its engine runs no float Conv/Linear), 0 = off
    accuracy_budget: float | None = None
    unmet_budget: str = "fail"  # a budget only all-float meets: "fail" (exit 3) or "keep-float" (a float engine)
    bias_correction: bool = True  # fold the weight-quantization shift into biases, kept where it helps
    # cross-layer weight equalisation (DFQ) of Conv/Linear pairs before calibration, kept where the
    # validation fidelity prefers it: "auto" = when the data is synthetic (no --calib), "on", "off"
    equalize: str = "auto"
    sensitivity_samples: int = 128
    collapse_drop: float = 0.05  # fail, without an engine, when the metric drops more than this

    def __post_init__(self):
        super().__post_init__()
        if self.observer and self.observer not in (*OBSERVERS, AUTO):
            raise ValueError(f"observer must be one of {', '.join(OBSERVERS)} or {AUTO}, got '{self.observer}'")
        if self.equalize not in EQUALIZE:
            raise ValueError(f"equalize must be one of {', '.join(EQUALIZE)}, got '{self.equalize}'")
        if self.unmet_budget not in UNMET:
            raise ValueError(f"unmet_budget must be one of {', '.join(UNMET)}, got '{self.unmet_budget}'")
        if self.scale_lr_factor < 0:
            raise ValueError("scale_lr_factor must be >= 0 (0 freezes the LSQ scales)")
        if self.keep_float < 0 or self.sensitivity_samples < 1:
            raise ValueError("keep_float must be >= 0, sensitivity_samples >= 1")
        if self.accuracy_budget is not None and not 0 <= self.accuracy_budget < 1:
            raise ValueError("accuracy_budget must be in [0, 1): a metric drop such as 0.005 (half a point)")


@register
class QuantizePass(Pass):
    name = "quantize"
    takes = (MODULE,)
    returns = MODULE
    version = "3"
    needs_calibration = True
    trains = True
    Config = QuantizeConfig

    def run(self, artifact: Artifact, ctx: RunContext, workdir: Path) -> PassResult:
        cfg, data, spec = self.config, ctx.data, artifact.spec
        if data.num_calib < cfg.batch:
            raise CompressError(f"calibration recipe '{data.recipe}' gives {data.num_calib} calibration samples, "
                                f"fewer than one batch ({cfg.batch}); add samples or set quantize.batch lower")
        scheme = QuantScheme.from_target(ctx.target)
        observer = cfg.observer or scheme.observer
        metric_name, evaluate = get_evaluator(None, spec.task)

        teacher = ctx.reference.module
        split = split_validation(data.calib, data.calib_labels, cfg.val_fraction, cfg.seed)
        train, val, labels, n_val = split.train, split.val, split.labels, split.val[0].shape[0]
        teacher_train = batched_outputs(teacher, train, cfg.batch)
        teacher_val = batched_outputs(teacher, val, cfg.batch)
        teacher_metric, held_out_metric = held_out_scorer(data, teacher, evaluate, cfg.batch)
        validation_score = fidelity_scorer(val, teacher_val, evaluate, cfg.batch, spec.task, cfg.temperature)

        student, static = to_graph_module(artifact.module, spec)
        # The pass answers for what quantizing loses: the accuracy budget and the collapse guard start
        # from the float model it was given. A pruned or searched student arrives with its own
        # distance to the teacher, which the prune/search report and the final verify account for.
        if artifact.module is teacher:  # quantize first: the teacher's own scores, already known
            float_val_metric = evaluate(teacher_val.numpy(), teacher_val.numpy(), None)["metric"]
            input_metric = teacher_metric
        else:
            float_val_metric, input_metric = validation_score(student).metric, held_out_metric(student)
        folded = fold_batchnorm(student)
        plain = copy.deepcopy(student) if self._equalizes(ctx) else None
        equalization = equalize_weights(student) if plain is not None else None
        placed = insert_fake_quants(student, scheme)
        if not placed.layers:
            raise CompressError("the model has no op this target can quantize (Conv, Linear, MatMul, Add)")
        ctx.progress.log(f"  {len(placed.layers)} layers quantized ({scheme.name}), {folded} BatchNorm folded, "
                         f"{len(placed.float_ops)} ops stay float; observer {observer}")

        observer, ranges, trials = calibrate(student, train, observer, cfg.batch, ctx.progress, validation_score)
        if trials:
            ctx.progress.log("  observer " + ", ".join(f"{k} {v.metric:.4f} ({v.divergence:.3g})"
                                                       for k, v in trials.items()) + f": {observer}")
        if equalization and equalization["pairs"]:  # measured: kept only where calibration does better with it
            placed_plain = insert_fake_quants(plain, scheme)
            ranges_plain = calibrate(plain, train, observer, cfg.batch, ctx.progress)[1]
            equalized, unequalized = validation_score(student), validation_score(plain)
            applied, why = prefer(equalized, unequalized)
            equalization.update(applied=applied, why=why, with_equalization=equalized.as_dict(),
                                without=unequalized.as_dict())
            ctx.progress.log(f"  cross-layer equalization of {equalization['pairs']} layer pairs: "
                             f"{'kept' if applied else 'not kept'} ({why})")
            if not applied:
                student, placed, ranges = plain, placed_plain, ranges_plain
        sens_inputs = tuple(x[: cfg.sensitivity_samples] for x in train)
        table = analyse(student, placed.layers, sens_inputs, teacher_train[: cfg.sensitivity_samples], evaluate,
                        cfg.batch, ctx.progress, spec.task, cfg.temperature)
        budget = scheme.accuracy_budget if cfg.accuracy_budget is None else cfg.accuracy_budget
        kept = keep_float(student, placed.layers, table, cfg.keep_float, budget, validation_score, float_val_metric,
                          ctx.progress, WIDE if scheme.wide_activations else OFF)
        converts = insert_converts(student, placed.layers, kept.layers) if scheme.wide_activations else []
        metrics = {
            "scheme": scheme.name, "observer": observer, "native_kernels": native.backend(),
            "bn_folded": folded, "quantized_layers": len(placed.layers), "float_ops": placed.float_ops,
            "kept_float": kept.layers, "width_converts": converts, "int8_layers": len(placed.layers) - len(kept.layers),
            "kept_float_cost": float_cost(student, placed.layers, kept.layers), "accuracy_budget": budget,
            "accuracy_budget_met": kept.budget_met, "budget_drop": kept.drop,
            "keep_float_dtype": scheme.keep_float_dtype, "metric_name": metric_name,
            "teacher_metric": teacher_metric, "input_metric": input_metric, "sensitivity": table, "calibration_samples": train[0].shape[0],
            "validation_samples": n_val, "activation_ranges": ranges,
            "observer_trials": {k: v.as_dict() for k, v in trials.items()},
        }
        if equalization is not None:
            metrics["equalization"] = equalization
        if not kept.budget_met and kept.drop is not None and cfg.unmet_budget == "fail":
            raise _failed(VerificationError(
                f"accuracy budget {budget} not met: a validation drop of {kept.drop:.4f} even with all but the "
                f"least sensitive layer in {scheme.keep_float_dtype}; see the sensitivity table in the report; "
                f"raise quantize.accuracy_budget, or set quantize.unmet_budget = \"keep-float\" for a float engine"),
                metrics)
        if cfg.bias_correction and metrics["int8_layers"]:
            metrics["bias_correction"] = _correct_biases(student, placed.layers, train, validation_score, cfg.batch)
        ptq_metric = held_out_metric(student)
        ctx.progress.log(f"  {metric_name}: teacher {teacher_metric:.4f}, PTQ {ptq_metric:.4f}")

        teacher_graph = to_graph_module(teacher, spec)[0] if cfg.feature_weight > 0 else None
        history = quantization_aware_distill(student, teacher_train, train, labels, validation_score, spec.task, cfg,
                                             ctx.progress, teacher_graph, ctx.checkpoints / "qad.pt" if ctx.checkpoints else None
                                             ) if cfg.epochs and metrics["int8_layers"] else []
        qad_metric = held_out_metric(student)
        ctx.progress.log(f"  {metric_name}: QAD {qad_metric:.4f}")
        metrics.update(ptq_metric=ptq_metric, qad_metric=qad_metric, qad_history=history)
        if input_metric - qad_metric > cfg.collapse_drop:
            given = "teacher" if artifact.module is teacher else "float input"
            raise _failed(VerificationError(
                f"quantized {metric_name} collapsed: {given} {input_metric:.4f}, QAD {qad_metric:.4f} "
                f"(drop > {cfg.collapse_drop}); see the sensitivity table in the report, try --keep-float N"), metrics)
        for _, fq in fake_quants(student):
            fq.observer = None
        module = StaticBatchAdapter(student, static) if static else student
        precision = "int8" if metrics["int8_layers"] else "fp32"  # every layer kept: nothing runs in int8
        meta = {"precision": precision, "scheme": scheme.name, "float_ops": placed.float_ops, "kept_float": kept.layers}
        return PassResult(Artifact(MODULE, spec, artifact.fingerprint, module=module, meta=meta), metrics)


    def _equalizes(self, ctx: RunContext) -> bool:
        synthetic = ctx.data.extras.get("data_source") == SYNTHETIC
        return self.config.equalize == "on" or (self.config.equalize == "auto" and synthetic)


def _failed(error: VerificationError, metrics: dict) -> VerificationError:
    error.metrics = metrics  # the report shows the sensitivity table of a failed pass
    return error


def _correct_biases(student, layers, train, score, batch: int) -> dict:
    """Fold each int8 layer's weight-quantization shift into its bias; kept only where the
    validation fidelity prefers it (compressor.distill's rule)."""
    before = score(student)
    shifts = expected_shifts(student, layers, train, batch)
    apply_shifts(student, shifts)
    after = score(student)
    applied, why = prefer(after, before)
    if not applied:
        apply_shifts(student, shifts, sign=1.0)
    return {"applied": applied, "why": why, "layers": len(shifts), "before": before.as_dict(), "after": after.as_dict()}
