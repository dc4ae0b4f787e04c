"""What flows between passes: a torch module with its input spec, or a file (ONNX, engine).

Each pass takes one artifact and returns one. A file artifact's identity is the hash of its
content; a module artifact's is the key of the pass that produced it (or the source file's hash
for the loaded model), so cache keys chain from the user's file through every pass.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

MODULE = "module"
ONNX = "onnx"
ENGINE = "engine"
KINDS = (MODULE, ONNX, ENGINE)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # a str is a dynamic dimension ("batch", "sequence")
    dtype: str = "float32"

    def concrete_shape(self, batch: int = 1, sequence: int = 16) -> tuple[int, ...]:
        sizes = {"batch": batch, "sequence": sequence}
        return tuple(d if isinstance(d, int) else sizes.get(d, 1) for d in self.shape)


@dataclass(frozen=True)
class InputSpec:
    inputs: tuple[TensorSpec, ...]
    task: str = "classification"  # classification | embedding | regression
    static_batch: int | None = None  # set when the model only accepts one batch size
    max_sequence: int | None = None  # the longest "sequence" the model accepts (position embeddings)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputSpec:
        inputs = tuple(TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in data["inputs"])
        return cls(inputs=inputs, task=data["task"], static_batch=data.get("static_batch"),
                   max_sequence=data.get("max_sequence"))


@dataclass
class Artifact:
    kind: str
    spec: InputSpec
    fingerprint: str
    module: torch.nn.Module | None = None
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. precision, the source module's pass

    def describe(self) -> str:
        return f"{self.kind} ({self.path.name})" if self.path else self.kind


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tensor(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write via a temporary file in the same folder, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_module(module: torch.nn.Module, path: Path) -> None:
    """Cache a pass's output module. Full pickle: the run directory is this tool's own output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(module, torch.jit.ScriptModule):
        torch.jit.save(module, str(tmp))
    else:
        torch.save(module, tmp)
    os.replace(tmp, path)


def load_module(path: Path) -> torch.nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:
        # Not TorchScript: a module this tool pickled into its own run directory.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation notice
            return torch.load(path, map_location="cpu", weights_only=False)
