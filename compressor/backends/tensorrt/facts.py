"""What a given TensorRT release accepts, as far as the lint needs to know.

Sources (read, not copied):
- onnx-tensorrt `docs/operators.md` on the branches release/8.6-GA, release/10.0-GA and
  10.1-GA (the ONNX parser that ships inside TensorRT): the opset range, the operators
  marked "N", the attribute restrictions, and the Q/DQ rows ("DequantizeLinear: INT8, FP8,
  INT4; x_zero_point must be zero"; 8.6: INT8 only).
- onnx-tensorrt `onnxOpImporters.cpp` (QuantDequantLinearHelper, 10.1-GA): UINT8 Q/DQ
  rejected; a zero point of another type is silently replaced by INT8; the scale must be a
  positive constant; per-channel scales only for weights (the parser assumes KCRS and checks
  that the number of scales equals the size of `axis`).
- onnx-tensorrt Changelog: 9.0 added native INT64 ("the parser no longer casts INT64 to
  INT32"); before that INT64 weights were cast down to INT32.
- TensorRT developer guide, "Working with Quantized Types": INT8 symmetric quantization;
  FP8 needs compute capability 8.9 or newer (Ada, Hopper), so not on Orin (sm_87).
- TensorRT 11 `trtexec` help (NVIDIA/TensorRT samples/common/sampleOptions.cpp): networks
  are strongly typed by default and the --int8/--fp16 precision flags are gone.

JetPack 6.1 and 6.2 ship TensorRT 10.3. No copy of the 10.3 parser docs is at hand; 10.3 is
given the 10.1 entry (the nearest release read), which is the conservative choice: later
releases only add support.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...errors import CompressError
from ...targets import TargetProfile

# Operators the parser marks unsupported ("N"), release/10.0-GA and 10.1-GA (same list).
_UNSUPPORTED_10 = frozenset("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Col2Im
CenterCropPad Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear HammingWindow
HannWindow ImageDecoder MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial
NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul
RegexFullMatch STFT SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert
SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer
StringSplit TfIdfVectorizer Unique
""".split())

# release/8.6-GA (JetPack 5.x ships TensorRT 8.5 / 8.6).
_UNSUPPORTED_8 = frozenset("""
Bernoulli BitShift BlackmanWindow Compress ConcatFromSequence ConvInteger DFT Det
DynamicQuantizeLinear HammingWindow HannWindow Hardmax MatMulInteger MaxRoiPool MaxUnpool
MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement
OptionalHasElement QLinearConv QLinearMatMul STFT SequenceAt SequenceConstruct SequenceEmpty
SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
StringNormalizer TfIdfVectorizer Unique
""".split())

# Inputs that the parser needs as initializers ("`axes` must be an initializer"), by operator.
_CONST_INPUTS_10 = {
    "Pad": {3: "axes"}, "Slice": {3: "axes"}, "CumSum": {1: "axis"},
    **{op: {1: "axes"} for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                                  "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")},
}


@dataclass(frozen=True)
class AttrRule:
    """An attribute value the parser refuses: `bad(value)` is true for a refused value."""

    op: str
    attr: str
    default: object
    allowed: str  # what the docs allow, for the message
    bad: object = field(compare=False)  # Callable[[value], bool]


_RESIZE_COORD = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}

_ATTR_RULES_10 = (
    AttrRule("Resize", "antialias", 0, "antialias = 0 (antialiasing is not supported)", lambda v: v != 0),
    AttrRule("Resize", "mode", "nearest", "mode nearest or linear", lambda v: v not in ("nearest", "linear")),
    AttrRule("Resize", "coordinate_transformation_mode", "half_pixel", ", ".join(sorted(_RESIZE_COORD)),
             lambda v: v not in _RESIZE_COORD),
    AttrRule("Resize", "keep_aspect_ratio_policy", "stretch", "keep_aspect_ratio_policy = stretch",
             lambda v: v != "stretch"),
    AttrRule("TopK", "sorted", 1, "sorted = 1", lambda v: v != 1),
    AttrRule("ScatterND", "reduction", "none", "no reduction", lambda v: v != "none"),
    AttrRule("LSTM", "input_forget", 0, "input_forget = 0", lambda v: v != 0),
    AttrRule("LSTM", "layout", 0, "layout = 0", lambda v: v != 0),
    AttrRule("Constant", "sparse_value", None, "dense values only", lambda v: v is not None),
    AttrRule("Constant", "value_string", None, "no string constants", lambda v: v is not None),
    AttrRule("Constant", "value_strings", None, "no string constants", lambda v: v is not None),
)


@dataclass(frozen=True)
class TrtFacts:
    version: str  # the release these facts describe
    min_opset: int
    max_opset: int
    unsupported_ops: frozenset[str]
    qdq_types: frozenset[str]  # element types a DequantizeLinear input / QuantizeLinear output may have
    native_int64: bool  # False: INT64 weights are cast to INT32 (values must fit)
    const_inputs: dict[str, dict[int, str]]
    attr_rules: tuple[AttrRule, ...]
    precision_flags: bool  # trtexec --int8/--fp16 and BuilderFlag.INT8/FP16 exist
    source: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


_TABLE: dict[tuple[int, int], TrtFacts] = {
    (8, 5): TrtFacts("8.5", 7, 17, _UNSUPPORTED_8, frozenset({"INT8"}), False, {}, _ATTR_RULES_10[:4], True,
                     "onnx-tensorrt release/8.5-GA, 8.6-GA docs/operators.md"),
    (8, 6): TrtFacts("8.6", 7, 17, _UNSUPPORTED_8, frozenset({"INT8"}), False, {}, _ATTR_RULES_10[:4], True,
                     "onnx-tensorrt release/8.6-GA docs/operators.md"),
    (10, 0): TrtFacts("10.0", 9, 20, _UNSUPPORTED_10, frozenset({"INT8", "FLOAT8E4M3FN", "INT4"}), True,
                      _CONST_INPUTS_10, _ATTR_RULES_10, True, "onnx-tensorrt release/10.0-GA docs/operators.md"),
    (10, 1): TrtFacts("10.1", 9, 20, _UNSUPPORTED_10, frozenset({"INT8", "FLOAT8E4M3FN", "INT4"}), True,
                      _CONST_INPUTS_10, _ATTR_RULES_10, True, "onnx-tensorrt 10.1-GA docs/operators.md"),
    # TensorRT 11 (docs: opset 9..25, strongly typed by default). Unsupported-op list kept at 10.1's:
    # nothing read says which of those gained support.
    (11, 0): TrtFacts("11.0", 9, 25, _UNSUPPORTED_10, frozenset({"INT8", "FLOAT8E4M3FN", "INT4", "FLOAT4E2M1"}),
                      True, _CONST_INPUTS_10, _ATTR_RULES_10, False,
                      "TensorRT 11 ONNX opset guide; operator list as of onnx-tensorrt 10.1-GA"),
}


def parse_version(text: str) -> tuple[int, int]:
    m = re.match(r"^\s*(\d+)(?:\.(\d+))?", str(text))
    if not m:
        raise CompressError(f"cannot read the TensorRT version '{text}' in the target profile ([device] tensorrt)")
    return int(m.group(1)), int(m.group(2) or 0)


def facts_for_version(text: str) -> TrtFacts:
    """The entry for `text`, or for the newest release before it (support only grows)."""
    want = parse_version(text)
    known = sorted(k for k in _TABLE if k <= want)
    if not known:
        oldest = ".".join(map(str, min(_TABLE)))
        raise CompressError(f"TensorRT {text} is older than any release this tool knows (oldest: {oldest})")
    return _TABLE[known[-1]]


def trt_version(profile: TargetProfile) -> str:
    version = getattr(profile.device, "tensorrt", "")  # a Jetson device's (targets/backend_sections.py)
    if not version:
        raise CompressError(f"target profile '{profile.name}' does not say which TensorRT "
                            "release it assumes: add `tensorrt = \"10.3\"` under [device]")
    return version


def facts_for(profile: TargetProfile) -> TrtFacts:
    return facts_for_version(trt_version(profile))


def compute_capability(profile: TargetProfile) -> tuple[int, int] | None:
    """`sm_87` -> (8, 7); None when the profile does not say."""
    m = re.match(r"^sm_(\d)(\d+)$", profile.device.arch)
    return (int(m.group(1)), int(m.group(2))) if m else None


FP8_MIN_SM = (8, 9)  # FP8 tensor cores: Ada (sm_89) and Hopper (sm_90) onwards
