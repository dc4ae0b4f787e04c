"""The sections every target profile has: top-level keys, [device], [precision], [quantization],
[pipeline], [budgets]. A backend's own section and its [device] keys are in backend_sections.py."""
from __future__ import annotations

from dataclasses import dataclass

from .fields import FieldError, one_of

DTYPES = ("int8", "uint8", "int16", "uint16")


@dataclass(frozen=True)
class Header:
    """The profile's top-level keys."""

    name: str
    summary: str
    backend: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class TensorQuant:
    """How one kind of tensor (activations or weights) is quantized on a target."""

    dtype: str = one_of(*DTYPES)
    symmetric: bool
    granularity: str = one_of("per_tensor", "per_channel")
    axis: int = 0
    bits: int = 0  # 0: the dtype's full width; fewer for a "reduced range" (see x86-cpu.toml)

    def __post_init__(self):
        if self.bits and not 2 <= self.bits <= self.width:
            raise FieldError("bits", f"must be between 2 and {self.width}, got {self.bits}")

    @property
    def width(self) -> int:
        """Bits of the dtype (not of a reduced range)."""
        return 16 if self.dtype.endswith("16") else 8

    @property
    def qrange(self) -> tuple[int, int]:
        bits = self.bits or self.width
        if self.dtype.startswith("u"):
            return 0, 2**bits - 1
        # Symmetric signed ranges drop -128 so that +-max are representable alike (TensorRT, QNN).
        lo = -(2 ** (bits - 1)) + (1 if self.symmetric else 0)
        return lo, 2 ** (bits - 1) - 1


@dataclass(frozen=True)
class Device:
    """[device]: what every device says; a backend's device adds its own keys (backend_sections.py)."""

    arch: str


# the integer width a target computes in; quantization.*.dtype must have it (uint8 counts as int8)
COMPUTE_BITS = {"int8": 8, "int16": 16}


@dataclass(frozen=True)
class Precision:
    """[precision]: the number formats the engine computes in."""

    compute: str = one_of(*COMPUTE_BITS)  # the quantized layers
    # what the layers kept out of quantization run in (quantize's keep_float / accuracy_budget)
    fallback: str = one_of("fp32", "fp16", "bf16", "int16")


@dataclass(frozen=True)
class Quantization:
    """[quantization]: the scheme quantize calibrates and export writes (see quantize/scheme.py)."""

    scheme: str  # the scheme's name in the report
    activations: TensorQuant
    weights: TensorQuant
    observer: str  # an observer of quantize/observers.py, or "auto"
    insertion: str  # a rule of quantize/scheme.py's RULES
    bias: str = one_of("float", "int32", default="float")
    # the default quantize.accuracy_budget: 0 where the engine cannot run a kept layer (the C engine)
    accuracy_budget: float = 0.0

    def __post_init__(self):
        if not 0 <= self.accuracy_budget < 1:
            raise FieldError("accuracy_budget", f"must be a number in [0, 1), got {self.accuracy_budget:g}")


@dataclass(frozen=True)
class Pipeline:
    """[pipeline]: the passes a run makes unless the user names others."""

    passes: tuple[str, ...]

    def __post_init__(self):
        if not self.passes:
            raise FieldError("passes", "must be a non-empty list of pass names")


@dataclass(frozen=True)
class Budgets:
    """[budgets]: what verify holds the engine to."""

    max_metric_drop: float = 0.01  # absolute drop of the task metric vs the teacher
    parity_atol: float = 1e-3  # FP32 engine vs PyTorch: max abs difference of outputs
    latency_runs: int = 100
    # embeddings: the least rank-1 retrieval agreement with the teacher on the held-out samples;
    # 0 = reported, not gated (a target where no encoder engine has been measured)
    min_retrieval_agreement: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.min_retrieval_agreement <= 1.0:
            raise FieldError("min_retrieval_agreement", "must be a fraction in [0, 1]")


COMMON_SECTIONS = {"device": Device, "precision": Precision, "quantization": Quantization,
                   "pipeline": Pipeline, "budgets": Budgets}


def check_compute(precision: Precision, quantization: Quantization) -> None:
    """precision.compute names the integer width both quantized tensor kinds use."""
    for kind in ("activations", "weights"):
        tq = getattr(quantization, kind)
        if tq.width != COMPUTE_BITS[precision.compute]:
            raise FieldError("precision.compute", f"is '{precision.compute}', but quantization.{kind}.dtype "
                             f"is '{tq.dtype}' ({tq.width}-bit)")
