"""Device profiles: one TOML per target under `targets/`, found by name, alias or path."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CompressError
from .resources import data_dir
from .tomlfile import get, read_toml

_DTYPES = ("int8", "uint8", "int16", "uint16")
_GRANULARITIES = ("per_tensor", "per_channel")


@dataclass(frozen=True)
class TensorQuant:
    """How one kind of tensor (activations or weights) is quantized on a target."""

    dtype: str
    symmetric: bool
    granularity: str
    axis: int = 0
    bits: int = 0  # 0: the dtype's full width; fewer for a "reduced range" (see x86-cpu.toml)

    @property
    def qrange(self) -> tuple[int, int]:
        bits = self.bits or (16 if self.dtype.endswith("16") else 8)
        if self.dtype.startswith("u"):
            return 0, 2**bits - 1
        # Symmetric signed ranges drop -128 so that +-max are representable alike (TensorRT, QNN).
        lo = -(2 ** (bits - 1)) + (1 if self.symmetric else 0)
        return lo, 2 ** (bits - 1) - 1


@dataclass(frozen=True)
class TargetProfile:
    name: str
    path: Path
    summary: str
    backend: str
    aliases: tuple[str, ...]
    passes: tuple[str, ...]
    activations: TensorQuant
    weights: TensorQuant
    observer: str
    insertion: str
    budgets: dict[str, Any]
    data: dict[str, Any] = field(repr=False, compare=False)  # the whole parsed TOML, for backends

    @property
    def max_metric_drop(self) -> float:
        return float(self.budgets.get("max_metric_drop", 0.01))

    @property
    def parity_atol(self) -> float:
        return float(self.budgets.get("parity_atol", 1e-3))

    @property
    def latency_runs(self) -> int:
        return int(self.budgets.get("latency_runs", 100))


def _tensor_quant(data: dict, key: str, where: Path) -> TensorQuant:
    dtype = get(data, f"quantization.{key}.dtype", str, where)
    if dtype not in _DTYPES:
        raise CompressError(f"{where}: key 'quantization.{key}.dtype' must be one of {', '.join(_DTYPES)}, got '{dtype}'")
    gran = get(data, f"quantization.{key}.granularity", str, where)
    if gran not in _GRANULARITIES:
        raise CompressError(f"{where}: key 'quantization.{key}.granularity' must be one of {', '.join(_GRANULARITIES)}, got '{gran}'")
    width = 16 if dtype.endswith("16") else 8
    bits = get(data, f"quantization.{key}.bits", int, where, default=0)
    if bits and not 2 <= bits <= width:
        raise CompressError(f"{where}: key 'quantization.{key}.bits' must be between 2 and {width}, got {bits}")
    return TensorQuant(
        bits=bits,
        dtype=dtype,
        symmetric=get(data, f"quantization.{key}.symmetric", bool, where),
        granularity=gran,
        axis=get(data, f"quantization.{key}.axis", int, where, default=0),
    )


def parse_profile(path: Path) -> TargetProfile:
    data = read_toml(path)
    passes = get(data, "pipeline.passes", list, path)
    if not passes or not all(isinstance(p, str) for p in passes):
        raise CompressError(f"{path}: key 'pipeline.passes' must be a non-empty list of pass names")
    return TargetProfile(
        name=get(data, "name", str, path),
        path=path,
        summary=get(data, "summary", str, path),
        backend=get(data, "backend", str, path),
        aliases=tuple(get(data, "aliases", list, path, default=[])),
        passes=tuple(passes),
        activations=_tensor_quant(data, "activations", path),
        weights=_tensor_quant(data, "weights", path),
        observer=get(data, "quantization.observer", str, path),
        insertion=get(data, "quantization.insertion", str, path),
        budgets=get(data, "budgets", dict, path, default={}),
        data=data,
    )


def bundled_profiles() -> list[TargetProfile]:
    return [parse_profile(p) for p in sorted(data_dir("targets").glob("*.toml"))]


def load_target(name_or_path: str) -> TargetProfile:
    """A profile by name or alias (`jetson`), or a path to a TOML file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.is_file():
        if not candidate.is_file():
            raise CompressError(f"{candidate}: target profile not found")
        return parse_profile(candidate)
    profiles = bundled_profiles()
    for profile in profiles:
        if name_or_path == profile.name or name_or_path in profile.aliases:
            return profile
    known = ", ".join(f"{p.name} ({', '.join(p.aliases)})" if p.aliases else p.name for p in profiles)
    raise CompressError(f"unknown target '{name_or_path}'; known targets: {known}")
