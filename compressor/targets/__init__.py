"""Device profiles: one TOML per target under `targets/`, found by name, alias or path.

Each table of a profile is parsed once, here, into a typed frozen section (sections.py for the
common ones, backend_sections.py for a backend's [device] keys and its own table); every other
module reads those, never the TOML.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CompressError
from ..resources import data_dir
from ..tomlfile import read_toml
from .backend_sections import register_sections, sections_for
from .fields import FieldError, parse_section
from .sections import (COMMON_SECTIONS, Budgets, Device, Header, Pipeline, Precision, Quantization, TensorQuant,
                       check_compute)

__all__ = ["TargetProfile", "TensorQuant", "parse_profile", "bundled_profiles", "load_target", "register_sections"]

# keys that moved, so that an old profile is told where to
_MOVED = {"quantization.keep_float_dtype": "precision.fallback"}


@dataclass(frozen=True)
class TargetProfile:
    name: str
    path: Path
    summary: str
    backend: str
    aliases: tuple[str, ...]
    device: Device  # the backend's Device subclass (backend_sections.py)
    precision: Precision
    quantization: Quantization
    pipeline: Pipeline
    budgets: Budgets
    settings: Any = None  # the backend's own section ([tensorrt], ...), typed; None where it has none
    # the parsed TOML, kept only as the run's cache key (pipeline.RunContext.fingerprint): read the sections
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def section(self, name: str) -> Any:
        """A section by its TOML name: "device", "precision", ..., or the backend's own ("tensorrt")."""
        if name in COMMON_SECTIONS:
            return getattr(self, name)
        if name == self.backend and self.settings is not None:
            return self.settings
        raise CompressError(f"{self.path}: target '{self.name}' has no [{name}] section "
                            f"(backend {self.backend})")

    @property
    def passes(self) -> tuple[str, ...]:
        return self.pipeline.passes

    @property
    def activations(self) -> TensorQuant:
        return self.quantization.activations

    @property
    def weights(self) -> TensorQuant:
        return self.quantization.weights

    @property
    def observer(self) -> str:
        return self.quantization.observer

    @property
    def insertion(self) -> str:
        return self.quantization.insertion

    @property
    def max_metric_drop(self) -> float:
        return self.budgets.max_metric_drop

    @property
    def parity_atol(self) -> float:
        return self.budgets.parity_atol

    @property
    def latency_runs(self) -> int:
        return self.budgets.latency_runs


def parse_profile(path: Path) -> TargetProfile:
    data = read_toml(path)
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and k not in COMMON_SECTIONS}
    header = parse_section(Header, scalars, "", path)
    own = sections_for(header.backend)
    classes = {**COMMON_SECTIONS, "device": own.device}
    if own.settings is not None:
        classes[header.backend] = own.settings
    for key, value in data.items():
        if isinstance(value, dict) and key not in classes:
            raise CompressError(f"{path}: unknown section '[{key}]'; allowed sections for backend "
                                f"'{header.backend}': {', '.join(classes)}")
    for old, new in _MOVED.items():
        section, name = old.split(".")
        if isinstance(data.get(section), dict) and name in data[section]:
            raise CompressError(f"{path}: key '{old}' is now '{new}' (give it once, there)")
    # a missing table reads as empty: its required keys are reported missing, the others default
    sections = {name: parse_section(cls, data.get(name, {}), name, path) for name, cls in classes.items()}
    try:
        check_compute(sections["precision"], sections["quantization"])
    except FieldError as e:
        raise CompressError(f"{path}: key '{e.key}' {e.problem}") from None
    return TargetProfile(name=header.name, path=path, summary=header.summary, backend=header.backend,
                         aliases=header.aliases, device=sections["device"], precision=sections["precision"],
                         quantization=sections["quantization"], pipeline=sections["pipeline"],
                         budgets=sections["budgets"], settings=sections.get(header.backend), data=data)


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
