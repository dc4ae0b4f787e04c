"""A target's quantization scheme: number formats, and where Q/DQ go in the graph.

Insertion rules, by the profile's `quantization.insertion`:
- tensorrt: Q/DQ on the activation inputs of Conv/Gemm/MatMul and on both inputs of a residual
  Add whose sum flows on into int8 ops (a CNN's; not a Transformer's, into LayerNorm: MiniLM PTQ
  cosine 0.899 with them); nothing on outputs. TensorRT fuses DQ -> op -> Q itself and runs the
  rest in fp16.
- onnxruntime: additionally the outputs of quantized ops (after a following ReLU/Clip, which
  fuses), pooling and Add, so onnxruntime turns DQ -> op -> Q into QLinearConv / QGemm / QLinearAdd.
  Linear/MatMul outputs and Adds are quantized only where their value flows into another int8 op:
  onnxruntime runs DQ -> MatMul as MatMulIntegerToFloat without an output Q, and an Add whose sum
  goes to a float op (a Transformer's residual into LayerNorm) gains no speed, only rounding error.
- every-op: like onnxruntime, plus the outputs of every other compute op the backend can run in
  integer (QNN HTP runs LayerNorm/Softmax/GELU quantized too).
- cengine: every-op, except that Linear/MatMul outputs and Adds are quantized only where the value
  flows into another int8 op (the C engine runs int8 GEMMs with float outputs): the C engine adds
  in float where the sum feeds LayerNorm (a Transformer's residual stream,
  whose outlier channels int8 cannot hold: MiniLM PTQ cosine 0.950 with int8 residuals, 0.982
  without).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CompressError
from ..targets import TargetProfile, TensorQuant

# Op kinds (see capture.OP_KINDS). "act" ops fuse into the op before them.
WEIGHT_ARG = {"conv": 1, "linear": 1, "embedding": 0}  # which argument of the aten op is the weight


@dataclass(frozen=True)
class InsertionRule:
    inputs_of: frozenset[str]  # ops whose activation inputs are quantized
    outputs_of: frozenset[str]  # ops whose outputs are quantized
    float_kinds: frozenset[str]  # compute ops left in float (listed in the report)
    # kinds whose output (and, for Add, the op itself) is quantized only when it feeds an int8 op
    chain_only: frozenset[str] = frozenset()
    # kinds whose weights are stored int8 while the op itself runs in float: an embedding table
    # (the export gathers int8 rows and dequantizes only those)
    weight_only: frozenset[str] = frozenset({"embedding"})


RULES: dict[str, InsertionRule] = {
    # tensorrt: a residual Add's inputs are quantized so TensorRT fuses the Add into the conv
    # before it; where the sum goes to a float op (LayerNorm) that gains nothing and costs accuracy
    "tensorrt": InsertionRule(frozenset({"conv", "linear", "matmul", "add"}), frozenset(),
                              frozenset({"norm", "softmax", "gelu", "embedding", "other"}),
                              frozenset({"add"}), weight_only=frozenset()),
    "onnxruntime": InsertionRule(frozenset({"conv", "linear", "matmul", "add"}),
                                 frozenset({"conv", "linear", "matmul", "add", "pool"}),
                                 frozenset({"norm", "softmax", "gelu", "other"}),
                                 frozenset({"linear", "matmul", "add"})),
    "every-op": InsertionRule(frozenset({"conv", "linear", "matmul", "add"}),
                              frozenset({"conv", "linear", "matmul", "add", "pool", "norm", "softmax", "gelu"}),
                              frozenset({"other"})),
    # cengine: int8 Linear/MatMul write float where a float op follows (residual into LayerNorm,
    # GELU, attention): their outputs, like Adds, are quantized only where an int8 op reads them
    "cengine": InsertionRule(frozenset({"conv", "linear", "matmul", "add"}),
                             frozenset({"conv", "linear", "matmul", "add", "pool", "norm", "softmax", "gelu"}),
                             frozenset({"other"}), frozenset({"linear", "matmul", "add"})),
}


@dataclass(frozen=True)
class QuantScheme:
    name: str
    activations: TensorQuant
    weights: TensorQuant
    rule: InsertionRule
    bias_int32: bool
    observer: str
    keep_float_dtype: str  # what "kept in higher precision" means on this target: [precision] fallback
    # the default quantize.accuracy_budget: 0 where the engine cannot run a kept layer (the C engine)
    accuracy_budget: float = 0.0

    @property
    def wide_activations(self) -> TensorQuant | None:
        """The activations' format in layers kept in an int16 fallback (QNN's a16w8): uint16,
        asymmetric, per tensor; None where kept layers run in float."""
        if self.keep_float_dtype != "int16":
            return None
        return TensorQuant(dtype="uint16", symmetric=False, granularity="per_tensor")

    @classmethod
    def from_target(cls, target: TargetProfile) -> QuantScheme:
        q = target.quantization
        if q.insertion not in RULES:
            raise CompressError(f"{target.path}: key 'quantization.insertion' must be one of {', '.join(RULES)}, "
                                f"got '{q.insertion}'")
        return cls(name=q.scheme, activations=q.activations, weights=q.weights, rule=RULES[q.insertion],
                   bias_int32=q.bias == "int32", observer=q.observer, keep_float_dtype=target.precision.fallback,
                   accuracy_budget=q.accuracy_budget)
