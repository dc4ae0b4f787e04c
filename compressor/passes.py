"""What a pass is: the `Pass` base class, its result, the run context it reads, and the registry.

Pass modules import this module (never the pass manager in `pipeline.py`), and the manager finds the
builtin pass modules by name through `builtin_passes`, so no import circle runs through them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .artifacts import MODULE, Artifact, sha256_json
from .calibration import CalibrationData
from .progress import Progress
from .targets import TargetProfile


@dataclass
class RunContext:
    """What every pass may read besides its input artifact."""

    target: TargetProfile
    data: CalibrationData
    reference: Artifact  # the user's model as loaded: the teacher and the accuracy baseline
    run_dir: Path
    progress: Progress
    history: list[tuple[str, Artifact]] = field(default_factory=list)  # (pass name, output) so far
    # where the running pass keeps training checkpoints: outside its partial folder, so a killed run
    # resumes mid-pass; named by the pass's cache key, removed when the pass finishes
    checkpoints: Path | None = None

    @property
    def fingerprint(self) -> str:
        return sha256_json({"target": self.target.data, "data": self.data.fingerprint})

    def last_module(self) -> Artifact:
        for _, artifact in reversed(self.history):
            if artifact.kind == MODULE:
                return artifact
        return self.reference


@dataclass
class PassResult:
    artifact: Artifact
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class EmptyConfig:
    pass


class Pass:
    """One step of the pipeline. Subclasses set the class attributes and implement `run`."""

    name: ClassVar[str]
    takes: ClassVar[tuple[str, ...]]
    returns: ClassVar[str]  # an artifact kind, or "same" for passes that check and pass through
    version: ClassVar[str] = "1"  # bump when the pass's output changes for the same input
    # needs representative inputs, not random ones: without --calib they are synthesised (compressor.datafree)
    needs_calibration: ClassVar[bool] = False
    needs_backend: ClassVar[bool] = False  # runs the target's engine builder: checked before any work
    # trains through compressor.distill's loop: in a distributed run every rank runs the passes up
    # to the last that trains (the others, rank 0 alone: compressor.distributed)
    trains: ClassVar[bool] = False
    Config: ClassVar[type] = EmptyConfig

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    def run(self, artifact: Artifact, ctx: RunContext, workdir: Path) -> PassResult:
        raise NotImplementedError


PASSES: dict[str, type[Pass]] = {}

# Passes of the design whose issues have not landed yet: named here so the error says so.
PLANNED: dict[str, str] = {}


def register(cls: type[Pass]) -> type[Pass]:
    PASSES[cls.name] = cls
    return cls
