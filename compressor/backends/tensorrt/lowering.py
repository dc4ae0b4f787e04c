"""The whole TensorRT lowering in one call, for the `lower` pass: fix, lint, write the recipe, build if possible.

(Named lower_onnx so that `lower(artifact, ctx, workdir)`, the backend protocol, stays free for the pass.)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from ...artifacts import write_atomic
from ...errors import CompressError
from ...targets import TargetProfile
from .build import build_engine, tensorrt_available
from .fixes import autofix
from .lint import Violation, lint
from .scripts import device_instructions, write_build_scripts


@dataclass
class Lowered:
    onnx_path: Path  # the fixed QDQ ONNX the engine is built from
    changes: list[str]  # what autofix changed
    violations: list[Violation]  # what is left after autofix
    scripts: list[Path]
    engine: Path | None  # None when TensorRT is not installed here
    instructions: str = ""  # what to run on the device when engine is None

    @property
    def errors(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == "error"]

    def to_json(self) -> dict:
        return {"onnx": str(self.onnx_path), "changes": self.changes, "engine": str(self.engine) if self.engine else None,
                "scripts": [str(p) for p in self.scripts], "instructions": self.instructions,
                "violations": [vars(v) for v in self.violations]}


def lower_onnx(onnx_path: Path, out_dir: Path, profile: TargetProfile, input_shapes: dict[str, tuple] | None,
          strict: bool = True, filename: str = "model.onnx") -> Lowered:
    """Autofix `onnx_path` into `out_dir/filename`, lint it, write the build scripts, and build the engine
    where TensorRT imports. With `strict`, lint errors left after autofix raise a CompressError."""
    out_dir = Path(out_dir)
    model = onnx.load(str(onnx_path))
    fixed, changes = autofix(model, profile)
    violations = lint(fixed, profile)
    errors = [v for v in violations if v.severity == "error"]
    if strict and errors:
        listing = "\n  ".join(str(v) for v in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise CompressError(f"the QDQ model breaks TensorRT's rules ({len(errors)} errors):\n  {listing}{more}")
    target = out_dir / filename
    write_atomic(target, fixed.SerializeToString())
    scripts = write_build_scripts(target, out_dir, profile, input_shapes)
    if tensorrt_available():
        engine = build_engine(target, out_dir, profile, input_shapes)
        return Lowered(target, changes, violations, scripts, engine)
    return Lowered(target, changes, violations, scripts, None, device_instructions(out_dir, profile))
