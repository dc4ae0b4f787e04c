"""TensorRT compatibility lint for a QDQ ONNX graph: each rule finds violations with node names and fixes.

Severity: "error" means TensorRT refuses the graph, computes something other than the ONNX
semantics (so onnxruntime parity no longer predicts the engine), or silently runs in fp16/fp32 an op
that the target's scheme (and the report's "int8") says is int8; "warning" means it builds and runs
in int8 as the file says, only less accurately or with a larger file than the scheme intends.

In explicit quantization TensorRT executes exactly the conversions the Q/DQ nodes state (developer
guide, "Explicit Quantization"; TensorRT Python API, IQuantizeLayer/IDequantizeLayer):
- missing-qdq (a weighted op with one input dequantized from int8 and the other float): the op
  runs in fp16/fp32. With int8-stored weights and a float activation that is the speed of float
  with the rounding error of int8, which nobody asked for (the guide's first placement rule is to
  quantize all inputs of weighted ops): error. A float-stored weight beside a quantized activation
  is how a layer kept in higher precision (keep_float, the accuracy budget) looks: warning.
- residual-add (Q/DQ on one input of an Add whose other input is not a Conv output it can fuse
  into): TensorRT dequantizes and adds in fp16, then re-quantizes for the next int8 layer, where
  the guide's placement rule says to quantize the residual input so the add runs in int8 (fused
  into the Conv, "conv + add" in its layer fusions). Our tensorrt scheme quantizes both inputs, so
  a one-sided Add in its output is a broken graph, not a choice. Error.
- weight-per-tensor: TensorRT accepts per-tensor weight scales (per-channel is supported, not
  required) and runs the op in int8 exactly as the file says; the cost is accuracy, which verify
  measures against the budget. Warning.

Placement rules follow TensorRT's Q/DQ placement recommendations (developer guide, "Explicit
Quantization"): quantize all inputs of weighted ops (Conv, ConvTranspose, Gemm/MatMul); do not
quantize their outputs by default; quantize the residual input of an Add. An Add whose other
input comes straight from a Conv is NVIDIA's recommended form (TensorRT fuses the Add into the
Conv); quantizing both Add inputs is also accepted (an int8 element-wise add).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from ...targets import TargetProfile
from .facts import FP8_MIN_SM, TrtFacts, compute_capability, facts_for
from .graph import DQ, Q, QDQ_OPS, WEIGHTED_OPS, GraphIndex, attr, dtype_name
from .shapes import missing_ranges


@dataclass
class Violation:
    rule: str
    node: str
    message: str
    fix: str
    auto_fixable: bool
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        tag = "fixable" if self.auto_fixable else "manual"
        return f"[{self.severity}] {self.rule} at {self.node}: {self.message} Fix ({tag}): {self.fix}"


@dataclass
class LintContext:
    index: GraphIndex
    profile: TargetProfile
    facts: TrtFacts


Rule = Callable[[LintContext], list[Violation]]
RULES: dict[str, Rule] = {}


def rule(name: str):
    def register(fn: Rule) -> Rule:
        RULES[name] = fn
        return fn
    return register


def lint(model: onnx.ModelProto, profile: TargetProfile, rules: list[str] | None = None) -> list[Violation]:
    """Every violation of TensorRT's rules (for the release the profile assumes) in `model`."""
    ctx = LintContext(GraphIndex(model), profile, facts_for(profile))
    found: list[Violation] = []
    for name, fn in RULES.items():
        if rules is None or name in rules:
            found.extend(fn(ctx))
    return found


def _qdq_nodes(ctx: LintContext):
    for node in ctx.index.nodes:
        if node.op_type in QDQ_OPS and (node.domain or "ai.onnx") in ("", "ai.onnx"):
            yield node


# -- quantization parameters ----------------------------------------------------------------


@rule("asymmetric-zero-point")
def _asymmetric(ctx: LintContext) -> list[Violation]:
    out = []
    for node in _qdq_nodes(ctx):
        p = ctx.index.qparams(node)
        name = ctx.index.label(node)
        if not p.zero_point_const:
            out.append(Violation("asymmetric-zero-point", name,
                                 f"{node.op_type} takes its zero point from a computed tensor; TensorRT needs a constant 0.",
                                 "export the zero point as a constant 0 (symmetric quantization)", False))
            continue
        if p.zero_point is None or not np.any(p.zero_point):
            continue
        if p.elem_type == TensorProto.UINT8 and np.all(p.zero_point == 128):
            continue  # symmetric int8 in uint8 clothing: reported (and fixed) by qdq-dtype
        nz = p.zero_point[p.zero_point != 0]
        out.append(Violation(
            "asymmetric-zero-point", name,
            f"{node.op_type} has a non-zero zero point ({nz.flat[0]}{' ...' if nz.size > 1 else ''}); TensorRT only "
            "does symmetric quantization (zero point 0) and rejects it.",
            "re-quantize symmetrically (ActivationSymmetric/WeightSymmetric, zero point 0, int8)", False))
    return out


@rule("qdq-dtype")
def _qdq_dtype(ctx: LintContext) -> list[Violation]:
    from .fixes import uint8_convertible

    out = []
    sm = compute_capability(ctx.profile)
    convertible = {id(n) for group in uint8_convertible(ctx.index) for n in group}
    for node in _qdq_nodes(ctx):
        p = ctx.index.qparams(node)
        t = dtype_name(p.elem_type)
        name = ctx.index.label(node)
        if t == "INT8":
            continue
        has_zp = len(node.input) > 2 and bool(node.input[2])
        if t == "UINT8" and p.zero_point is not None and np.all(p.zero_point == 128):
            out.append(Violation("qdq-dtype", name,
                                 f"{node.op_type} is uint8 with zero point 128; TensorRT rejects uint8 Q/DQ.",
                                 "rewrite as int8 with zero point 0 (the same values, exactly)"
                                 + ("" if id(node) in convertible else "; here by hand: its pair is not all "
                                    "uint8/128 or it touches a graph input or output"), id(node) in convertible))
        elif t == "UINT8" and not has_zp:
            out.append(Violation("qdq-dtype", name,
                                 f"{node.op_type} has no zero point, so ONNX makes it uint8 (range 0..255) while "
                                 "TensorRT treats it as int8 (-128..127): the engine would differ from onnxruntime.",
                                 "give it an int8 zero point of 0", False))
        elif node.op_type == DQ and t in ("INT32", "INT16", "UINT16") and ctx.index.is_const(node.input[0]):
            out.append(Violation("qdq-dtype", name,
                                 f"DequantizeLinear of a constant {t.lower()} tensor (a quantized bias?); TensorRT "
                                 "dequantizes only INT8/FP8/INT4 and takes the bias in float.",
                                 "fold it into a float constant (exact)", True))
        elif t.startswith("FLOAT8") and "FLOAT8E4M3FN" in ctx.facts.qdq_types and sm is not None and sm < FP8_MIN_SM:
            out.append(Violation("qdq-dtype", name,
                                 f"{node.op_type} is FP8; FP8 needs compute capability 8.9+, the target is "
                                 f"sm_{sm[0]}{sm[1]}.", "quantize to int8 instead", False))
        elif t in ctx.facts.qdq_types and t != "INT8":
            out.append(Violation("qdq-dtype", name,
                                 f"{node.op_type} is {t}; TensorRT {ctx.facts.version} accepts it, but this target's "
                                 "scheme is int8 and onnxruntime parity was measured for int8.",
                                 "quantize to int8", False, "warning"))
        else:
            out.append(Violation("qdq-dtype", name,
                                 f"{node.op_type} is {t}; TensorRT {ctx.facts.version} explicit quantization accepts "
                                 f"only {', '.join(sorted(ctx.facts.qdq_types))}.",
                                 "quantize to int8 (symmetric, zero point 0)", False))
    return out


@rule("qdq-scale")
def _qdq_scale(ctx: LintContext) -> list[Violation]:
    out = []
    for node in _qdq_nodes(ctx):
        p = ctx.index.qparams(node)
        name = ctx.index.label(node)
        if p.scale is None:
            out.append(Violation("qdq-scale", name, f"{node.op_type}'s scale is not a constant; TensorRT needs "
                                 "constant scales.", "export the scale as an initializer", False))
        elif not (np.all(np.isfinite(p.scale)) and np.all(p.scale > 0)):
            out.append(Violation("qdq-scale", name, f"{node.op_type} has a scale that is zero, negative or not "
                                 "finite; TensorRT requires positive scales.",
                                 "recalibrate (a zero scale comes from an all-zero calibration range)", False))
    return out


@rule("qdq-granularity")
def _granularity(ctx: LintContext) -> list[Violation]:
    """Per-channel (or blocked) scales only on constant weights; TensorRT quantizes activations per tensor."""
    out = []
    for node in _qdq_nodes(ctx):
        p = ctx.index.qparams(node)
        if not p.per_channel:
            continue
        data = node.input[0]
        weight = ctx.index.is_const(data) or (
            node.op_type == DQ and (src := ctx.index.source(data)) is not None and src.op_type == Q
            and ctx.index.is_const(src.input[0]))
        name = ctx.index.label(node)
        if not weight:
            out.append(Violation("qdq-granularity", name,
                                 f"{node.op_type} quantizes an activation per channel ({p.scale.size} scales); "
                                 "TensorRT supports per-channel scales for weights only.",
                                 "quantize activations per tensor (one scale)", False))
        elif p.scale.ndim > 1 or p.block_size:
            out.append(Violation("qdq-granularity", name,
                                 f"{node.op_type} uses block quantization; TensorRT supports it for INT4 weights only.",
                                 "use per-channel int8 weights (axis = output channels)", False))
    return out


# -- weights ----------------------------------------------------------------------------------


def _weight_inputs(ctx: LintContext, node: onnx.NodeProto) -> list[tuple[int, int]]:
    """(input index, expected per-channel axis) of the weight inputs of a weighted op."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return [(1, 0 if node.op_type == "Conv" else 1)]
    if node.op_type == "Gemm":
        return [(1, 0 if attr(node, "transB", 0) else 1)]
    if node.op_type == "MatMul":
        out = []
        for i in (0, 1):
            src = ctx.index.source(node.input[i])
            base = src.input[0] if src is not None and src.op_type == DQ else node.input[i]
            bsrc = ctx.index.source(base)
            if ctx.index.is_const(base) or (bsrc is not None and bsrc.op_type == Q and ctx.index.is_const(bsrc.input[0])):
                out.append((i, -1 if i == 1 else -2))  # B [K, N]: channels last; A [M, K]: rows
        return out
    return []


def _weight_dq(ctx: LintContext, name: str) -> onnx.NodeProto | None:
    node = ctx.index.source(name)
    return node if node is not None and node.op_type == DQ else None


def _weight_dqs(ctx: LintContext):
    """(weighted op, its weight's DequantizeLinear, qparams, weight array or None, expected axis)."""
    for node in ctx.index.nodes:
        if node.op_type not in WEIGHTED_OPS:
            continue
        for i, axis in _weight_inputs(ctx, node):
            dq = _weight_dq(ctx, node.input[i])
            if dq is None:
                continue
            w = ctx.index.const_array(dq.input[0])
            if w is None:
                q = ctx.index.source(dq.input[0])
                w = ctx.index.const_array(q.input[0]) if q is not None and q.op_type == Q else None
            yield node, dq, ctx.index.qparams(dq), w, axis


@rule("weight-per-tensor")
def _weight_per_tensor(ctx: LintContext) -> list[Violation]:
    if ctx.profile.weights.granularity != "per_channel":
        return []
    out = []
    for node, dq, p, w, axis in _weight_dqs(ctx):
        channels = w.shape[axis] if w is not None and w.ndim else None
        if p.scale is not None and p.scale.size == 1 and channels != 1:
            out.append(Violation(
                "weight-per-tensor", ctx.index.label(dq),
                f"the weight of {node.op_type} '{ctx.index.label(node)}' has one scale for all "
                f"{channels or 'its'} output channels; TensorRT runs it in int8, but the target's scheme "
                "is per channel (more accurate).",
                f"quantize the weight per output channel (axis {axis if axis >= 0 else 'last'})", False, "warning"))
    return out


@rule("weight-axis")
def _weight_axis(ctx: LintContext) -> list[Violation]:
    out = []
    for node, dq, p, w, axis in _weight_dqs(ctx):
        if node.op_type == "ConvTranspose" or not p.per_channel or w is None or not w.ndim:
            continue
        want, got = axis % w.ndim, p.axis % w.ndim
        if got != want:
            out.append(Violation(
                "weight-axis", ctx.index.label(dq),
                f"the per-channel weight scales of {node.op_type} '{ctx.index.label(node)}' run along "
                f"axis {p.axis}, not the output-channel axis {want}.",
                f"quantize along axis {want} (set the DequantizeLinear axis attribute; opset 13+ defaults to 1)",
                False))
    return out


@rule("weight-float")
def _weight_float(ctx: LintContext) -> list[Violation]:
    out = []
    for node in ctx.index.nodes:
        if node.op_type == Q and ctx.index.is_const(node.input[0]):
            t = ctx.index.elem_type(node.input[0])
            if t in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE):
                out.append(Violation(
                    "weight-float", ctx.index.label(node),
                    f"the weight '{node.input[0]}' is stored as float and quantized by a QuantizeLinear; TensorRT "
                    "accepts this, but the file carries float weights (4x the int8 size for fp32).",
                    "fold the QuantizeLinear into an int8 initializer (exact)", True, "warning"))
    return out


# -- placement --------------------------------------------------------------------------------


@rule("missing-qdq")
def _missing_qdq(ctx: LintContext) -> list[Violation]:
    """A weighted op with some inputs dequantized and others float cannot run in int8."""
    out = []
    for node in ctx.index.nodes:
        if node.op_type not in WEIGHTED_OPS:
            continue
        idx = (0, 1)
        quantized = {i: ctx.index.is_dequantized(node.input[i]) for i in idx if i < len(node.input)}
        if not any(quantized.values()) or all(quantized.values()):
            continue
        weights = {i for i, _ in _weight_inputs(ctx, node)}
        for i, q in quantized.items():
            if q:
                continue
            kind = "weight" if i in weights or (node.op_type != "MatMul" and i == 1) else "activation"
            fix = ("quantize the weight (per channel, int8 initializer) and feed it through DequantizeLinear"
                   if kind == "weight" else "insert QuantizeLinear/DequantizeLinear (per tensor, int8) on this input")
            # int8 weights with a float activation: nobody asked for float, yet it runs in float (error);
            # a float weight beside a quantized activation is a layer kept in higher precision (warning)
            out.append(Violation(
                "missing-qdq", ctx.index.label(node),
                f"{node.op_type} input {i} ({kind} '{node.input[i]}') is float while input {1 - i} is dequantized "
                "from int8: TensorRT cannot fuse the Q/DQ into an int8 kernel and runs this op in fp16/fp32"
                + (" (right for a layer kept in higher precision)." if kind == "weight" else "."),
                fix, False, "warning" if kind == "weight" else "error"))
    return out


_FUSED_INTO_CONV = ("Conv", "ConvTranspose")


def _comes_from_conv(ctx: LintContext, name: str) -> bool:
    node = ctx.index.source(name)
    if node is not None and node.op_type == "BatchNormalization":
        node = ctx.index.source(node.input[0])
    return node is not None and node.op_type in _FUSED_INTO_CONV


@rule("residual-add")
def _residual_add(ctx: LintContext) -> list[Violation]:
    out = []
    for node in ctx.index.nodes:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        a, b = node.input
        if ctx.index.is_constant_subgraph(a) or ctx.index.is_constant_subgraph(b):
            continue  # a bias add, not a residual
        qa, qb = ctx.index.is_dequantized(a), ctx.index.is_dequantized(b)
        if qa == qb:
            continue
        other = b if qa else a
        if _comes_from_conv(ctx, other):
            continue  # TensorRT fuses the Add into that Conv, taking the residual in int8
        out.append(Violation(
            "residual-add", ctx.index.label(node),
            f"Add has Q/DQ on input '{a if qa else b}' but not on '{other}': TensorRT cannot run it as an int8 "
            "add (nor fuse it into a Conv), so it dequantizes and adds in float.",
            f"insert QuantizeLinear/DequantizeLinear (int8, per tensor) on '{other}'", False, "error"))
    return out


_ACTIVATIONS = ("Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
                "Softplus", "PRelu")


@rule("qdq-on-weighted-output")
def _output_qdq(ctx: LintContext) -> list[Violation]:
    """Conv -> Q -> DQ -> Relu: quantizing a weighted op's output before its activation."""
    out = []
    for node in ctx.index.nodes:
        if node.op_type != Q:
            continue
        src = ctx.index.source(node.input[0])
        if src is None or src.op_type not in WEIGHTED_OPS:
            continue
        for dq in ctx.index.consumers.get(node.output[0], []):
            if dq.op_type != DQ:
                continue
            acts = [c for c in ctx.index.consumers.get(dq.output[0], []) if c.op_type in _ACTIVATIONS]
            if acts:
                out.append(Violation(
                    "qdq-on-weighted-output", ctx.index.label(node),
                    f"Q/DQ sits between {src.op_type} '{ctx.index.label(src)}' and {acts[0].op_type} "
                    f"'{ctx.index.label(acts[0])}': TensorRT recommends not quantizing the outputs of weighted ops; "
                    "this extra requantization can keep the activation out of the int8 kernel.",
                    f"quantize the input of the next weighted op instead (after the {acts[0].op_type}); removing the "
                    "pair changes rounding, so re-validate", False, "warning"))
                break
    return out


# -- operators, opset, types ------------------------------------------------------------------


@rule("unsupported-op")
def _unsupported(ctx: LintContext) -> list[Violation]:
    out = []
    f = ctx.facts
    version = f"TensorRT {f.version}"
    for imp in ctx.index.model.opset_import:
        if imp.domain in ("", "ai.onnx") and not f.min_opset <= imp.version <= f.max_opset:
            out.append(Violation(
                "unsupported-op", "<model>",
                f"the model uses ONNX opset {imp.version}; {version}'s parser supports opsets {f.min_opset}..{f.max_opset}.",
                f"export with opset_version={min(max(imp.version, f.min_opset), f.max_opset)}", False))
    for node in ctx.index.nodes:
        name = ctx.index.label(node)
        domain = node.domain or ""
        if domain not in ("", "ai.onnx"):
            out.append(Violation("unsupported-op", name,
                                 f"{domain}::{node.op_type} is not a standard ONNX operator; TensorRT needs a plugin for it.",
                                 "export without framework-specific ops (do not save onnxruntime-optimized graphs)", False))
            continue
        if node.op_type in f.unsupported_ops:
            out.append(Violation("unsupported-op", name, f"{node.op_type} is not supported by {version} ({f.source}).",
                                 "replace the operation in the model, or keep it out of the exported graph", False))
        for i, what in f.const_inputs.get(node.op_type, {}).items():
            if i < len(node.input) and node.input[i] and not ctx.index.is_const(node.input[i]):
                out.append(Violation("unsupported-op", name,
                                     f"{node.op_type} input '{what}' must be an initializer for {version}.",
                                     "constant-fold the graph so that it becomes one",
                                     ctx.index.is_constant_subgraph(node.input[i])))
        for r in f.attr_rules:
            if r.op == node.op_type:
                value = attr(node, r.attr, r.default)
                if isinstance(value, bytes):
                    value = value.decode()
                if r.bad(value):
                    out.append(Violation("unsupported-op", name,
                                         f"{node.op_type} {r.attr}={value!r} is not supported by {version} (allowed: {r.allowed}).",
                                         "change the operation in the model", False))
    if not f.native_int64:
        info = np.iinfo(np.int32)
        for t in ctx.index.graph.initializer:
            if t.data_type == TensorProto.INT64:
                arr = ctx.index.const_array(t.name)
                if arr is not None and arr.size and (arr.min() < info.min or arr.max() > info.max):
                    out.append(Violation("unsupported-op", t.name,
                                         f"INT64 initializer with values beyond int32; {version} casts INT64 weights "
                                         "to INT32.", "keep integer constants within int32 (e.g. clamp Slice ends)",
                                         False))
    return out


@rule("dynamic-shape")
def _dynamic(ctx: LintContext) -> list[Violation]:
    out = []
    for m in missing_ranges(ctx.index.model, ctx.profile):
        where = f"input '{m.input}'" + (f" axis {m.axis} ('{m.dim}')" if m.axis >= 0 else " (no shape)")
        out.append(Violation(
            "dynamic-shape", m.input,
            f"{where} is dynamic but the target profile gives no optimization-profile range for it; TensorRT "
            "needs min/opt/max shapes for every dynamic dimension.",
            f"add `dims = {{ {m.dim if m.dim != '?' else 'name'} = [min, opt, max] }}` under [tensorrt] in the "
            "profile, or export with that dimension fixed", False))
    return out
