"""What each backend adds to a profile: its [device] keys and its own section ([tensorrt], ...).

A registry keyed by the backend's name, which is also its section's name; a new backend (or a
test's toy backend) adds itself with one `register_sections` call. These classes are plain data
with no heavy imports: `compress targets` parses every profile, and must not load onnx or torch.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from .fields import FieldError, one_of
from .sections import Device


@dataclass(frozen=True)
class BackendSections:
    device: type = Device  # the [device] table's class (Device or a subclass)
    settings: type | None = None  # the backend's own [<backend>] table; None: the profile has none


SECTIONS: dict[str, BackendSections] = {}


def register_sections(backend: str, device: type = Device, settings: type | None = None) -> None:
    """Let profiles with `backend = "<backend>"` have `device`'s keys and a [<backend>] table of `settings`."""
    SECTIONS[backend] = BackendSections(device, settings)


def sections_for(backend: str) -> BackendSections:
    """A backend that registered nothing gets the common [device] and no section of its own."""
    return SECTIONS.get(backend, BackendSections())


# -- TensorRT (Jetson) -------------------------------------------------------------------------


@dataclass(frozen=True)
class JetsonDevice(Device):
    memory_gb: int  # bounds [tensorrt] workspace_mb
    jetpack: str  # written into the build recipe and the device instructions
    tensorrt: str  # the release the lint's facts and the trtexec flags are for
    dla_cores: int = 0

    @property
    def compute_capability(self) -> tuple[int, int] | None:
        """`sm_87` -> (8, 7); None when arch is not an sm_XY name."""
        m = re.match(r"^sm_(\d)(\d+)$", self.arch)
        return (int(m.group(1)), int(m.group(2))) if m else None


BUILDER_FLAGS = ("int8", "fp16", "bf16", "strongly_typed")


def _shape_range(key: str, value: tuple[int, ...]) -> None:
    if len(value) != 3:
        raise FieldError(key, f"must be [min, opt, max], got {list(value)}")
    lo, opt, hi = value
    if not 1 <= lo <= opt <= hi:
        raise FieldError(key, f"must satisfy 1 <= min <= opt <= max, got {list(value)}")


@dataclass(frozen=True)
class TensorRTSettings:
    """[tensorrt]: the engine build (builder flags, workspace, DLA) and the optimization-profile ranges
    of dynamic dimensions (see backends/tensorrt/shapes.py)."""

    builder_flags: tuple[str, ...] = ("int8", "fp16")
    workspace_mb: int = 1024
    use_dla: bool = False
    dla_core: int = 0
    batch: tuple[int, ...] = ()  # [min, opt, max]; () = no range
    sequence: tuple[int, ...] = ()
    dims: dict[str, tuple[int, ...]] = field(default_factory=dict)  # by the dimension's name in the graph

    def __post_init__(self):
        unknown = [f for f in self.builder_flags if f.lower() not in BUILDER_FLAGS]
        if unknown:
            raise FieldError("builder_flags", f"has unknown flags {unknown}; known: {list(BUILDER_FLAGS)}")
        if self.workspace_mb < 1:
            raise FieldError("workspace_mb", f"must be at least 1, got {self.workspace_mb}")
        for key in ("batch", "sequence"):
            if getattr(self, key):
                _shape_range(key, getattr(self, key))
        for name, value in self.dims.items():
            _shape_range(f"dims.{name}", value)


# -- onnxruntime (x86 CPU) ----------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxRuntimeSettings:
    """[onnxruntime]: the execution provider the engine runs with (the runner runs the CPU one)."""

    execution_provider: str = one_of("CPUExecutionProvider", default="CPUExecutionProvider")


# -- QNN (Snapdragon HTP) -----------------------------------------------------------------------

# onnxruntime's QNN execution provider option `htp_performance_mode`
HTP_PERFORMANCE_MODES = ("default", "burst", "balanced", "high_performance", "high_power_saver", "low_balanced",
                         "low_power_saver", "power_saver", "sustained_high_performance", "extreme_power_saver")


@dataclass(frozen=True)
class HexagonDevice(Device):
    """The Snapdragon chip the QNN EP compiles for: `arch` its HTP version, `soc_model` QNN's number
    for the SoC (the EP's `soc_model` option; Qualcomm's QNN SDK documentation lists them)."""

    soc_model: int
    chip: str = ""  # the marketing name, for people (e.g. "Snapdragon 8 Gen 2 (SM8550)")

    def __post_init__(self):
        if not re.match(r"^hexagon-v\d+$", self.arch):
            raise FieldError("arch", f"must name the HTP version as hexagon-vNN, got '{self.arch}'")
        if self.soc_model < 0:
            raise FieldError("soc_model", f"must be QNN's SoC number (0 = QNN's default), got {self.soc_model}")

    @property
    def htp_arch(self) -> int:
        """`hexagon-v73` -> 73, the QNN execution provider's `htp_arch` option."""
        return int(self.arch.rsplit("v", 1)[1])


@dataclass(frozen=True)
class QnnSettings:
    """[qnn]: onnxruntime QNN execution provider options (backends/qnn)."""

    htp_performance_mode: str = one_of(*HTP_PERFORMANCE_MODES, default="default")
    # Nodes the HTP rejects run on the CPU instead of failing the run (the report lists them).
    allow_cpu_fallback: bool = False


# -- C engine (RISC-V) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RiscvDevice(Device):
    """The RISC-V board and the cross toolchain the C engine is built and emulated with
    (backends/cengine/toolchain.py reads these; its defaults are the same values)."""

    vlen: int = 128  # RVV vector register bits: the rv64gcv build's zvl and qemu's vlen
    abi: str = one_of("lp64d", "lp64f", "lp64", default="lp64d")
    cross_compiler: str = "clang-16"  # the command; the Makefile adds --target, -march, -mabi
    emulator: str = "qemu-riscv64"  # the command; -cpu follows from the build and vlen

    def __post_init__(self):
        if self.vlen < 128 or self.vlen > 65536 or self.vlen & (self.vlen - 1):
            raise FieldError("vlen", f"must be a power of two from 128 (RVV 1.0) to 65536, got {self.vlen}")
        for key in ("cross_compiler", "emulator"):
            try:
                words = shlex.split(getattr(self, key))
            except ValueError as e:
                raise FieldError(key, f"is not a command line: {e}") from None
            if not words:
                raise FieldError(key, "must name a command")
        if "-cpu" in shlex.split(self.emulator):
            raise FieldError("emulator", "must not set -cpu: it follows from the build (v=true or false) and vlen")


register_sections("tensorrt", JetsonDevice, TensorRTSettings)
register_sections("onnxruntime", Device, OnnxRuntimeSettings)
register_sections("qnn", HexagonDevice, QnnSettings)
register_sections("cengine", RiscvDevice)
